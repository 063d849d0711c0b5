import { inspect } from 'node:util';
import { afterAll, beforeAll, beforeEach } from 'vitest';
import { type CreditEvent, CreditMeter, CreditsError, type ReplyProvider } from '../../src/index.js';
import { type FakeLlmServer, startFakeLlmServer } from './fake-llm-server.js';

/** Starts the fake LLM API once for a test file, resets it before each test and hands it to `use`. */
export function useFakeLlmServer(use: (server: FakeLlmServer) => void): void {
  let server: FakeLlmServer;
  beforeAll(async () => {
    server = await startFakeLlmServer();
    use(server);
  });
  afterAll(() => server.close());
  beforeEach(() => server.reset());
}

/**
 * A meter with the given providers and two workspaces on the free plan (100 credits): `shop`,
 * and `byo`, whose requests carry `byoKey` (for every provider registered, or any when none is).
 */
export async function shopMeter(providers: Record<string, ReplyProvider>, byoKey: string) {
  const names = Object.keys(providers);
  const meter = new CreditMeter({
    providers,
    byoKeys: ({ workspaceId, provider }) =>
      workspaceId === 'byo' && (names.length === 0 || names.includes(provider)) ? byoKey : undefined,
  });
  await meter.createWorkspace({ workspaceId: 'shop', plan: 'free' });
  await meter.createWorkspace({ workspaceId: 'byo', plan: 'free' });
  return { meter, events: recordEvents(meter) };
}

/** True when `secret` appears anywhere in `value`: fields, nested causes, hidden properties. */
export function leaks(value: unknown, secret: string): boolean {
  const seen = inspect(value, { depth: Number.POSITIVE_INFINITY, showHidden: true, getters: true });
  let json = '';
  try {
    json = JSON.stringify(value) ?? '';
  } catch {
    // circular: inspect covers it
  }
  return seen.includes(secret) || json.includes(secret);
}

/** Every event a meter emits, for leak checks. */
export function recordEvents(meter: CreditMeter): CreditEvent[] {
  const events: CreditEvent[] = [];
  for (const name of ['reply.charged', 'reply.blocked', 'balance.low', 'period.renewed'] as const) {
    meter.on(name, (event) => void events.push(event as CreditEvent));
  }
  return events;
}

/** Every ledger entry of a workspace. */
export async function allEntries(meter: CreditMeter, workspaceId: string) {
  return (await meter.ledger({ workspaceId, limit: 1000 })).entries;
}

/** Charges (reply rows) of a workspace. */
export async function charges(meter: CreditMeter, workspaceId: string) {
  return (await allEntries(meter, workspaceId)).filter((entry) => entry.replyId !== undefined);
}

/** The error a promise rejects with (fails the test when it resolves). */
export async function rejection(promise: Promise<unknown>): Promise<unknown> {
  try {
    await promise;
  } catch (error) {
    return error;
  }
  throw new Error('expected a rejection');
}

export function codeOf(error: unknown): string | undefined {
  return CreditsError.is(error) ? error.code : undefined;
}

/** Resolves once `condition()` holds (polling), so a test can act mid-request. */
export async function until(condition: () => boolean, timeoutMs = 5_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error('condition not reached in time');
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
}

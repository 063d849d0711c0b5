import type { ReplyContext, ReplyProvider, ReplyRequest } from '../src/index.js';
import { CreditMeter, type CreditMeterOptions, type CreditStorage, MemoryStorage } from '../src/index.js';

/** A clock the test moves by hand. */
export class TestClock {
  ms: number;
  constructor(start: string | number = '2026-01-15T12:00:00Z') {
    this.ms = typeof start === 'string' ? Date.parse(start) : start;
  }
  readonly now = (): Date => new Date(this.ms);
  set(iso: string): void {
    this.ms = Date.parse(iso);
  }
  advance(ms: number): void {
    this.ms += ms;
  }
}

/** A provider that answers instantly and records what it was asked. */
export class EchoProvider implements ReplyProvider {
  readonly calls: Array<{ request: ReplyRequest; hadKey: boolean; key: string | undefined }> = [];
  failWith: unknown = undefined;
  async generate(request: ReplyRequest, context: ReplyContext): Promise<{ output: unknown }> {
    this.calls.push({ request, hadKey: context.apiKey !== undefined, key: context.apiKey });
    if (this.failWith !== undefined) throw this.failWith;
    return { output: `reply from ${request.model}` };
  }
}

export interface Harness {
  meter: CreditMeter;
  storage: CreditStorage;
  clock: TestClock;
  providers: { openai: EchoProvider; anthropic: EchoProvider; bookbag: EchoProvider };
}

/** A cloud meter on a memory store with echo providers and a hand-moved clock. */
export function harness(options: Partial<CreditMeterOptions> & { start?: string } = {}): Harness {
  const clock = new TestClock(options.start);
  const providers = { openai: new EchoProvider(), anthropic: new EchoProvider(), bookbag: new EchoProvider() };
  const storage = options.storage ?? new MemoryStorage();
  const { start: _start, ...rest } = options;
  const meter = new CreditMeter({ storage, clock: clock.now, providers, ...rest });
  return { meter, storage, clock, providers };
}

export const turn = (n: number, model = 'gpt-4o-mini', agentId = 'agent-1', conversationId = 'conv-1') => ({
  workspaceId: 'ws',
  agentId,
  conversationId,
  model,
  input: `message ${n}`,
});

/** A reply's identity without its input: what `reserve()` takes (it refuses unknown keys). */
export const ask = (n: number, model = 'gpt-4o-mini', agentId = 'agent-1', conversationId = 'conv-1') => {
  const { input: _input, ...identity } = turn(n, model, agentId, conversationId);
  return identity;
};

/** Sum of the ledger of a workspace, in credits, read through every page. */
export async function ledgerSum(meter: CreditMeter, workspaceId: string): Promise<number> {
  let total = 0;
  let cursor: string | undefined;
  do {
    const page = await meter.ledger({ workspaceId, limit: 1000, ...(cursor !== undefined && { cursor }) });
    for (const entry of page.entries) total += Number(entry.credits) * 1e6;
    cursor = page.nextCursor;
  } while (cursor);
  return total / 1e6;
}

type StorageMethod = Exclude<keyof CreditStorage, never>;

/**
 * A store that delegates to `inner` except for the methods given (a fault injector). It has a
 * `lock` only when one is given: the inner store's would commit past an overridden `commit`.
 */
export function wrapStorage(inner: CreditStorage, overrides: Partial<CreditStorage>): CreditStorage {
  const methods: StorageMethod[] = ['migrate', 'close', 'load', 'commit', 'ledger', 'usage'];
  const wrapped: Record<string, unknown> = {};
  for (const method of methods) {
    const own = inner[method] as ((...args: unknown[]) => unknown) | undefined;
    const chosen = overrides[method] ?? own?.bind(inner);
    if (chosen) wrapped[method] = chosen;
  }
  if (overrides.lock) wrapped['lock'] = overrides.lock;
  return wrapped as unknown as CreditStorage;
}

/**
 * One call of each kind that takes a pooled connection: reads through the meter and the store,
 * four loads and four charges at once (so each needs a connection of its own). For the tests
 * that drop a pool's idle connections before each call.
 */
export function pooledCalls(meter: CreditMeter, storage: CreditStorage, workspaceId: string, charge: () => Promise<unknown>) {
  const four = (call: () => Promise<unknown>) => () => Promise.all(Array.from({ length: 4 }, call));
  return [
    () => meter.getWorkspace(workspaceId),
    () => meter.ledger({ workspaceId }),
    () => meter.usage({ workspaceId, from: new Date(0), to: new Date(Date.now() + 60_000), groupBy: 'agent' }),
    () => meter.listWorkspaces(),
    four(() => storage.load({ workspaceId, keys: [], now: Date.now() })),
    four(charge),
  ];
}

/**
 * A workspace's own key (BYO) must never reach anything the caller can see: the error a
 * failed reply throws (however deep the provider hid the key in its error), the stream's
 * error and result, events, the event-error hook, the console, the ledger.
 */
import { inspect } from 'node:util';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { CreditMeter, CreditsError, MemoryStorage, type ReplyProvider } from '../../src/index.js';

// Characters that URL-encoding changes, as base64-like keys have.
const KEY = 'sk-byo/Zx+9QmT2vL8wRp4Kj7Nc1Hd5Fg3Bs6Ye0Ua';
// Any 14 characters in a row of the key, in any of its forms, count as a leak.
const NEEDLES = [...new Set([KEY, encodeURIComponent(KEY), btoa(KEY).slice(0, 56)].flatMap(windows))];
function windows(text: string): string[] {
  const lower = text.toLowerCase();
  return Array.from({ length: lower.length - 13 }, (_, i) => lower.slice(i, i + 14));
}

// ─── errors hiding the key ──────────────────────────────────────────────────

const ERRORS: Array<[string, () => unknown]> = [
  [
    'deep in a nested object (response.request.options.headers)',
    () =>
      Object.assign(new Error('Request failed with status code 401'), {
        status: 401,
        response: { request: { options: { headers: { authorization: `Bearer ${KEY}` } } } },
      }),
  ],
  [
    'in a non-enumerable property',
    () => Object.defineProperty(new Error('unauthorized'), 'config', { value: { apiKey: KEY }, enumerable: false }),
  ],
  [
    'inside an AggregateError',
    () => new AggregateError([new Error(`key ${KEY} rejected`), new Error('retry failed')], 'all attempts failed'),
  ],
  [
    'at the end of a 5-deep cause chain',
    () => {
      let error = new Error(`invalid x-api-key ${KEY}`);
      for (let i = 0; i < 5; i++) error = new Error(`wrapped ${i}`, { cause: error });
      return error;
    },
  ],
  ['in a Headers object', () => Object.assign(new Error('forbidden'), { headers: new Headers({ authorization: `Bearer ${KEY}` }) })],
  ['in a Map', () => Object.assign(new Error('forbidden'), { meta: new Map<string, unknown>([['apiKey', KEY]]) })],
  ['under a Symbol key', () => Object.assign(new Error('forbidden'), { [Symbol('request')]: { apiKey: KEY } })],
  [
    'behind a getter that throws (with the key in its error)',
    () =>
      Object.defineProperty(new Error(), 'message', {
        get() {
          throw new Error(`cannot render message for ${KEY}`);
        },
      }),
  ],
  ['in a non-string message', () => Object.assign(new Error(), { message: { detail: `bad key ${KEY}`, toString: () => KEY } })],
  ['as "Bearer <key>" in the message', () => new Error(`401 Unauthorized: Authorization: Bearer ${KEY} was rejected`)],
  ['URL-encoded in the message', () => new Error(`GET https://api.example.com/v1/chat?key=${encodeURIComponent(KEY)} failed`)],
  ['truncated in the message', () => new Error(`Incorrect API key provided: ${KEY.slice(0, 24)}****`)],
  [
    'in code, type, name and status',
    () => Object.assign(new Error('x'), { code: `bad_key_${KEY}`, type: KEY, name: `KeyError ${KEY}`, status: KEY }),
  ],
  ['as a thrown string', () => `provider said: key ${KEY} is invalid`],
  [
    'in a proxy whose every trap throws',
    () =>
      new Proxy(new Error('proxied'), {
        get() {
          throw new Error(KEY);
        },
        getPrototypeOf() {
          throw new Error(KEY);
        },
        ownKeys() {
          throw new Error(KEY);
        },
      }),
  ],
  [
    'a plain object with the request attached',
    () => ({ status: 500, error: { message: 'overloaded' }, request: { headers: { 'x-api-key': KEY } } }),
  ],
];

// ─── looking everywhere ───────────────────────────────────────────────────────

function containsKey(text: string): boolean {
  const lower = text.toLowerCase();
  return NEEDLES.some((needle) => lower.includes(needle));
}

/** Every string reachable from `value`: own properties of any kind, getters, symbols, Maps, Sets, Headers. */
function walk(value: unknown, found: string[], seen = new Set<unknown>()): void {
  if (typeof value === 'string') {
    if (containsKey(value)) found.push(value);
    return;
  }
  if (typeof value === 'symbol') {
    if (containsKey(value.description ?? '')) found.push(String(value.description));
    return;
  }
  if ((typeof value !== 'object' && typeof value !== 'function') || value === null || seen.has(value)) return;
  seen.add(value);
  try {
    if (value instanceof Map || value instanceof Headers) {
      for (const [k, v] of (value as Map<unknown, unknown>).entries()) {
        walk(k, found, seen);
        walk(v, found, seen);
      }
    }
    if (value instanceof Set) for (const v of value) walk(v, found, seen);
    for (const key of Reflect.ownKeys(value)) {
      walk(key, found, seen);
      const descriptor = Reflect.getOwnPropertyDescriptor(value, key);
      if (!descriptor) continue;
      if ('value' in descriptor) walk(descriptor.value, found, seen);
      else if (descriptor.get) {
        try {
          walk(descriptor.get.call(value), found, seen);
        } catch (error) {
          walk(error, found, seen);
        }
      }
    }
  } catch (error) {
    walk(error, found, seen);
  }
}

/** What leaks from `value`, by every way a host might look at it. */
function leaks(value: unknown): string[] {
  const found: string[] = [];
  walk(value, found);
  const views: string[] = [];
  try {
    views.push(inspect(value, { depth: Number.POSITIVE_INFINITY, showHidden: true, getters: true }));
  } catch {
    // an inspect failure is not a leak
  }
  try {
    views.push(String(value));
  } catch {
    // idem
  }
  try {
    views.push(JSON.stringify(value) ?? '');
  } catch {
    // idem
  }
  if (value instanceof Error) views.push(value.stack ?? '');
  for (const view of views) if (containsKey(view)) found.push(view.slice(0, 300));
  return found;
}

// ─── the meter under test ─────────────────────────────────────────────────────

const consoleCalls: unknown[][] = [];
beforeEach(() => {
  consoleCalls.length = 0;
  for (const method of ['log', 'info', 'warn', 'error', 'debug', 'trace'] as const) {
    vi.spyOn(console, method).mockImplementation((...args: unknown[]) => {
      consoleCalls.push(args);
    });
  }
});
afterEach(() => {
  vi.restoreAllMocks();
});

const turn = { workspaceId: 'ws', agentId: 'agent', conversationId: 'conv', model: 'gpt-4o-mini' };

interface Setup {
  meter: CreditMeter;
  storage: MemoryStorage;
  provider: ReplyProvider & { fail: () => unknown; mode: 'generate' | 'stream' | 'stream-after-chunk' };
  events: unknown[];
  eventErrors: unknown[];
  breakStore(): void;
  healStore(): void;
}

async function setup(options: { onStorageFailure?: 'allow'; defaultEventErrors?: boolean } = {}): Promise<Setup> {
  const storage = new MemoryStorage();
  let broken = false;
  // Every store method fails while the store is broken (migrate and close keep working).
  const flaky = new Proxy(storage, {
    get(target, property, receiver) {
      const value = Reflect.get(target, property, receiver) as unknown;
      if (typeof value !== 'function') return value;
      return (...args: unknown[]) => {
        if (broken && property !== 'migrate' && property !== 'close') return Promise.reject(new Error('ECONNREFUSED'));
        return (value as (...a: unknown[]) => unknown).apply(target, args);
      };
    },
  });
  const provider: Setup['provider'] = {
    fail: () => new Error('not set'),
    mode: 'generate',
    async generate(_request, context) {
      if (context.apiKey !== KEY) throw new Error('the test expects the BYO key to reach the provider');
      throw provider.fail();
    },
  };
  const streaming = {
    ...provider,
    generate: provider.generate,
    async *stream(_request: unknown, context: { apiKey?: string }) {
      if (context.apiKey !== KEY) throw new Error('the test expects the BYO key to reach the provider');
      if (provider.mode === 'stream-after-chunk') yield 'first chunk';
      throw provider.fail();
    },
  };
  const events: unknown[] = [];
  const eventErrors: unknown[] = [];
  const meter = new CreditMeter({
    storage: flaky,
    clock: () => new Date('2026-01-15T12:00:00Z'),
    providers: {
      openai: {
        generate: (request, context) => provider.generate(request, context),
        stream: (request, context) =>
          provider.mode === 'generate'
            ? (async function* () {
                yield (await provider.generate(request, context)).output;
              })()
            : streaming.stream(request, context),
      },
    },
    byoKeys: ({ provider: id }) => (id === 'openai' ? KEY : undefined),
    ...(options.onStorageFailure && { onStorageFailure: options.onStorageFailure }),
    ...(!options.defaultEventErrors && { onEventError: (...args: unknown[]) => void eventErrors.push(args) }),
  });
  for (const name of ['reply.charged', 'reply.blocked', 'balance.low', 'period.renewed'] as const) {
    meter.on(name, (event) => {
      events.push(event);
      throw new Error(`a handler for ${name} failed`);
    });
  }
  await meter.createWorkspace({ workspaceId: 'ws', plan: 'free' });
  return {
    meter,
    storage,
    provider,
    events,
    eventErrors,
    breakStore: () => {
      broken = true;
    },
    healStore: () => {
      broken = false;
    },
  };
}

async function everythingVisible(s: Setup, thrown: unknown[]): Promise<Record<string, string[]>> {
  s.healStore();
  const ledger = await s.meter.ledger({ workspaceId: 'ws', limit: 1000 });
  return {
    thrown: thrown.flatMap(leaks),
    events: leaks(s.events),
    eventErrors: leaks(s.eventErrors),
    console: leaks(consoleCalls),
    ledger: leaks(ledger),
    workspace: leaks(await s.meter.getWorkspace('ws')),
  };
}

function expectClean(visible: Record<string, string[]>): void {
  for (const [where, found] of Object.entries(visible)) expect(found, `the key leaked through ${where}`).toEqual([]);
}

function expectProviderError(error: unknown): void {
  expect(CreditsError.is(error), String(error)).toBe(true);
  expect((error as CreditsError).code).toBe('PROVIDER_ERROR');
}

async function drain(stream: AsyncIterable<unknown>): Promise<unknown> {
  try {
    for await (const _chunk of stream) {
      // read everything
    }
    return undefined;
  } catch (error) {
    return error;
  }
}

describe.each(ERRORS)('the BYO key %s', (_label, makeError) => {
  it('reply - never reaches the caller', async () => {
    const s = await setup();
    // A successful reply first, so events (and the event-error hook) fire too.
    s.provider.fail = () => undefined;
    const ok = s.provider.generate;
    s.provider.generate = async () => ({ output: 'fine' });
    await s.meter.reply({ ...turn, input: 'hi' });
    s.provider.generate = ok;
    s.provider.fail = makeError;
    const error = await s.meter.reply({ ...turn, input: 'hi' }).catch((e: unknown) => e);
    expectProviderError(error);
    expect(s.events.length).toBeGreaterThan(0);
    expect(s.eventErrors.length).toBeGreaterThan(0);
    expectClean(await everythingVisible(s, [error]));
  });

  it('reply with a per-call provider - never reaches the caller', async () => {
    const s = await setup();
    const provider: ReplyProvider = {
      async generate() {
        throw makeError();
      },
    };
    const error = await s.meter.reply({ ...turn, input: 'hi', provider }).catch((e: unknown) => e);
    expectProviderError(error);
    expectClean(await everythingVisible(s, [error]));
  });

  it.each(['generate', 'stream', 'stream-after-chunk'] as const)('replyStream (%s) - never reaches the caller', async (mode) => {
    const s = await setup();
    s.provider.fail = makeError;
    s.provider.mode = mode;
    const stream = await s.meter.replyStream({ ...turn, input: 'hi' });
    const error = await drain(stream);
    expectProviderError(error);
    const result = await stream.result.catch((e: unknown) => e);
    expectClean(await everythingVisible(s, [error, result, stream]));
  });

  it("onStorageFailure: 'allow' (the unmetered fallback) - never reaches the caller", async () => {
    const s = await setup({ onStorageFailure: 'allow' });
    s.provider.fail = makeError;
    s.breakStore();
    const error = await s.meter.reply({ ...turn, input: 'hi' }).catch((e: unknown) => e);
    expectProviderError(error);
    s.provider.mode = 'stream';
    const stream = await s.meter.replyStream({ ...turn, input: 'hi' });
    const streamError = await drain(stream);
    expectProviderError(streamError);
    const result = await stream.result.catch((e: unknown) => e);
    expectClean(await everythingVisible(s, [error, streamError, result]));
  });
});

describe('the BYO key elsewhere', () => {
  it('a failing key lookup quotes neither the key nor the resolver error', async () => {
    const meter = new CreditMeter({
      providers: { openai: { generate: async () => ({ output: 'x' }) } },
      byoKeys: () => {
        throw Object.assign(new Error(`vault refused ${KEY}`), { token: KEY });
      },
    });
    await meter.createWorkspace({ workspaceId: 'ws', plan: 'free' });
    const error = await meter.reply({ ...turn, input: 'hi' }).catch((e: unknown) => e);
    expectProviderError(error);
    expect(leaks(error)).toEqual([]);
    expect(leaks(consoleCalls)).toEqual([]);
  });

  it('the default event-error hook logs nothing with the key', async () => {
    const s = await setup({ defaultEventErrors: true });
    s.provider.generate = async () => ({ output: 'fine' });
    await s.meter.reply({ ...turn, input: 'hi' });
    expect(consoleCalls.length).toBeGreaterThan(0);
    s.provider.generate = async () => {
      throw new Error(`Bearer ${KEY}`);
    };
    const error = await s.meter.reply({ ...turn, input: 'hi' }).catch((e: unknown) => e);
    expectClean(await everythingVisible(s, [error]));
  });

  it('a scrubbed provider error keeps what a host needs: status, code, a redacted message', async () => {
    const s = await setup();
    s.provider.fail = () => Object.assign(new Error(`Incorrect API key provided: ${KEY}`), { status: 401, code: 'invalid_api_key' });
    const error = (await s.meter.reply({ ...turn, input: 'hi' }).catch((e: unknown) => e)) as Error & { cause: Record<string, unknown> };
    expectProviderError(error);
    expect(error.cause).toMatchObject({ status: 401, code: 'invalid_api_key', message: 'Incorrect API key provided: [redacted]' });
    expect(error.message).toContain('[redacted]');
  });
});

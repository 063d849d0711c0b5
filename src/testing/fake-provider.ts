import type { ReplyContext, ReplyProvider, ReplyRequest } from '../meter/provider.js';

/** One call a {@link FakeProvider} received. Holds no secret: only whether a key was given. */
export interface FakeProviderCall {
  /** `generate` or `stream`. */
  readonly method: 'generate' | 'stream';
  /** The request exactly as the meter built it. */
  readonly request: ReplyRequest;
  /** True when the call carried a workspace's own key (the byo route). The key itself is never recorded here. */
  readonly hasApiKey: boolean;
  /** True when the call carried an abort signal. */
  readonly hasSignal: boolean;
  /** How the call ended: still running, returned, failed, or aborted through its signal. */
  outcome: 'pending' | 'ok' | 'failed' | 'aborted';
  /** Chunks yielded so far (a `generate` call counts its output as one). */
  chunksDelivered: number;
}

/** How a {@link FakeProvider} behaves. Every field can be changed later with {@link FakeProvider.configure}. */
export interface FakeProviderOptions {
  /**
   * What `generate` returns as `output`: a value, or a function of the request.
   * @default `fake reply to <model>`
   */
  output?: unknown;
  /**
   * The chunks `stream` yields.
   * @default [output]
   */
  chunks?: readonly unknown[];
  /**
   * Waits this long (ms) before answering, and between streamed chunks. An abort ends the wait.
   * @default 0
   */
  delayMs?: number;
  /**
   * Makes calls fail with this error: every call, or only the next `failTimes` ones.
   * @default undefined (calls succeed)
   */
  error?: unknown;
  /**
   * How many calls fail with `error` before calls succeed again; omitted: all of them.
   * @default undefined
   */
  failTimes?: number;
  /**
   * For `stream`: yield this many chunks, then throw `error` (or a generic error). Mid-stream
   * failures are how a host tests that a reply which delivered output is still charged.
   * @default undefined (the stream ends normally)
   */
  failAfterChunks?: number;
  /**
   * Runs at the start of every call, before any delay; awaited. Useful to observe the store
   * while a reply is in flight.
   */
  onCall?: (call: FakeProviderCall) => void | Promise<void>;
}

type OutputFactory = (request: ReplyRequest) => unknown;

/**
 * A recording fake {@link ReplyProvider} for tests: it records every call, and can be told
 * to fail, to be slow, or to stream chunks. It never records a workspace's API key in
 * anything printable: `calls` only say whether a key was given, and the key itself can be
 * read back with {@link FakeProvider.apiKeyOf} for a test that must check which key was used.
 *
 * @example
 * ```ts
 * import { FakeProvider } from '@bookbag/credits/testing';
 *
 * const openai = new FakeProvider({ output: 'Hello!' });
 * const meter = new CreditMeter({ providers: { openai } });
 * await meter.reply({ workspaceId, agentId, conversationId, model: 'gpt-4o-mini', input: 'Hi' });
 * expect(openai.calls).toHaveLength(1);
 *
 * openai.configure({ error: new Error('rate limited'), failTimes: 1 });
 * await expect(meter.reply({ ... })).rejects.toMatchObject({ code: 'PROVIDER_ERROR' });
 * ```
 */
export class FakeProvider implements ReplyProvider {
  /** Every call received, oldest first. */
  readonly calls: FakeProviderCall[] = [];
  #options: FakeProviderOptions;
  #failuresLeft: number | undefined;
  // Keys live outside the call records, so logging or serializing `calls` can never show one.
  readonly #keys = new WeakMap<FakeProviderCall, string>();

  constructor(options: FakeProviderOptions = {}) {
    this.#options = { ...options };
    this.#failuresLeft = options.failTimes;
  }

  /** Changes how later calls behave (merged into the current options). */
  configure(options: FakeProviderOptions): this {
    this.#options = { ...this.#options, ...options };
    if ('failTimes' in options || 'error' in options) this.#failuresLeft = this.#options.failTimes;
    return this;
  }

  /** Makes later calls succeed again (clears `error`, `failTimes` and `failAfterChunks`). */
  succeed(): this {
    const { error: _error, failTimes: _failTimes, failAfterChunks: _failAfter, ...rest } = this.#options;
    this.#options = rest;
    this.#failuresLeft = undefined;
    return this;
  }

  /** Forgets the recorded calls. */
  reset(): this {
    this.calls.length = 0;
    return this;
  }

  /** The key the call was given, if any. Read it only to assert on it; never log it. */
  apiKeyOf(call: FakeProviderCall): string | undefined {
    return this.#keys.get(call);
  }

  /** Produces a whole reply (see {@link FakeProviderOptions}). */
  async generate(request: ReplyRequest, context: ReplyContext): Promise<{ output: unknown }> {
    const call = await this.#begin('generate', request, context);
    try {
      await sleep(this.#options.delayMs ?? 0, context.signal);
      this.#maybeFail(call);
      const output = this.#output(request);
      call.chunksDelivered = 1;
      call.outcome = 'ok';
      return { output };
    } catch (error) {
      call.outcome = context.signal?.aborted ? 'aborted' : 'failed';
      throw error;
    }
  }

  /** Produces a reply in chunks (see {@link FakeProviderOptions}). */
  async *stream(request: ReplyRequest, context: ReplyContext): AsyncGenerator<unknown> {
    const call = await this.#begin('stream', request, context);
    try {
      context.signal?.throwIfAborted();
      const chunks = this.#options.chunks ?? [this.#output(request)];
      const failAfter = this.#options.failAfterChunks;
      for (let index = 0; index <= chunks.length; index++) {
        if (failAfter !== undefined && index === failAfter) {
          throw this.#options.error ?? new Error(`fake provider failed after ${failAfter} chunks`);
        }
        if (index === chunks.length) break;
        await sleep(this.#options.delayMs ?? 0, context.signal);
        if (index === 0) this.#maybeFail(call);
        call.chunksDelivered++;
        yield chunks[index];
      }
      call.outcome = 'ok';
    } catch (error) {
      call.outcome = context.signal?.aborted ? 'aborted' : 'failed';
      throw error;
    } finally {
      if (call.outcome === 'pending') call.outcome = 'ok';
    }
  }

  async #begin(method: FakeProviderCall['method'], request: ReplyRequest, context: ReplyContext): Promise<FakeProviderCall> {
    const call: FakeProviderCall = {
      method,
      request,
      hasApiKey: context.apiKey !== undefined,
      hasSignal: context.signal !== undefined,
      outcome: 'pending',
      chunksDelivered: 0,
    };
    if (context.apiKey !== undefined) this.#keys.set(call, context.apiKey);
    this.calls.push(call);
    await this.#options.onCall?.(call);
    return call;
  }

  #maybeFail(call: FakeProviderCall): void {
    if (!('error' in this.#options) || this.#options.failAfterChunks !== undefined) return;
    if (this.#failuresLeft !== undefined) {
      if (this.#failuresLeft <= 0) return;
      this.#failuresLeft--;
    }
    call.outcome = 'failed';
    throw this.#options.error;
  }

  #output(request: ReplyRequest): unknown {
    const { output } = this.#options;
    if (typeof output === 'function') return (output as OutputFactory)(request);
    return output === undefined ? `fake reply to ${request.model}` : output;
  }
}

function sleep(ms: number, signal: AbortSignal | undefined): Promise<void> {
  signal?.throwIfAborted();
  if (ms <= 0) return Promise.resolve();
  return new Promise((resolve, reject) => {
    const onAbort = (): void => {
      clearTimeout(timer);
      reject(signal?.reason);
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}

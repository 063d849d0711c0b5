/**
 * `@bookbag/credits/ai-sdk`: a language model middleware (AI SDK 6, middleware spec `v3`) that
 * meters `generateText` and `streamText` through a `CreditMeter`.
 *
 * Typed structurally: this file imports nothing from `ai` or `@ai-sdk/provider` (optional
 * peers). The interfaces below describe the few fields of the AI SDK's types it reads; a
 * `LanguageModelV3` and its call options and results fit them.
 */
import { InvalidInputError, ReplyStateError } from '../core/errors.js';
import type { ReplyProvider } from '../meter/provider.js';
import type { ReplyInput, ReplyResult, ReplyStream } from '../meter/types.js';
import { isRecord } from './shared.js';

/**
 * Who is asking: what `providerOptions.credits` of each call carries.
 *
 * @example
 * ```ts
 * await generateText({
 *   model, prompt,
 *   providerOptions: { credits: { workspaceId: 'ws_1', agentId: 'support', conversationId: 'c_9', replyId: message.id } satisfies CreditsCallInfo },
 * });
 * ```
 */
export interface CreditsCallInfo {
  workspaceId: string;
  agentId: string;
  conversationId: string;
  /**
   * The idempotency key of the reply (your message id).
   * @default a new id per call
   */
  replyId?: string;
}

/**
 * The fields of the AI SDK's call options (`LanguageModelV3CallOptions`) the middleware reads.
 *
 * @example
 * ```ts
 * const params: CallOptionsLike = { prompt, abortSignal, providerOptions: { credits: { workspaceId, agentId, conversationId } } };
 * ```
 */
export interface CallOptionsLike {
  readonly prompt?: unknown;
  readonly abortSignal?: AbortSignal | undefined;
  readonly headers?: Record<string, string | undefined> | undefined;
  readonly providerOptions?: Readonly<Record<string, Readonly<Record<string, unknown>> | undefined>> | undefined;
}

/**
 * The fields of a generate result (`LanguageModelV3GenerateResult`) the middleware reads.
 *
 * @example
 * ```ts
 * const result: GenerateResultLike = await model.doGenerate(params);
 * ```
 */
export interface GenerateResultLike {
  readonly usage?: unknown;
  readonly response?: { readonly modelId?: string | undefined } | undefined;
  readonly providerMetadata?: Readonly<Record<string, unknown>> | undefined;
}

/**
 * The fields of a stream result (`LanguageModelV3StreamResult`) the middleware reads.
 *
 * @example
 * ```ts
 * const { stream }: StreamResultLike = await model.doStream(params);
 * ```
 */
export interface StreamResultLike {
  readonly stream: ReadableStream<unknown>;
}

/**
 * A language model (`LanguageModelV3`), as far as the middleware calls it.
 *
 * @example
 * ```ts
 * const model: LanguageModelLike = createOpenAI({ apiKey }).chat('gpt-4o');
 * ```
 */
export interface LanguageModelLike<
  P extends CallOptionsLike = CallOptionsLike,
  R extends GenerateResultLike = GenerateResultLike,
  S extends StreamResultLike = StreamResultLike,
> {
  /** e.g. `openai.chat`, `openai.responses`, `anthropic.messages`. */
  readonly provider: string;
  readonly modelId: string;
  /** Generates a whole answer. */
  doGenerate(options: P): PromiseLike<R>;
  /** Streams an answer as parts. */
  doStream(options: P): PromiseLike<S>;
}

/**
 * The meter calls the middleware makes (a `CreditMeter` has them).
 *
 * @example
 * ```ts
 * const meter: MeterLike = new CreditMeter({ storage, byoKeys });
 * ```
 */
export interface MeterLike {
  /** Runs a whole reply on the given provider, inside one hold. */
  reply(input: ReplyInput & { provider: ReplyProvider }): Promise<ReplyResult>;
  /** Streams a reply from the given provider, settled once when the stream ends. */
  replyStream(input: ReplyInput & { provider: ReplyProvider }): Promise<ReplyStream>;
}

/**
 * Options of {@link creditsMiddleware}.
 *
 * @example
 * ```ts
 * creditsMiddleware({ meter, model: ({ modelId }) => modelId.replace(/-\d{4}-\d{2}-\d{2}$/, ''), maxRetries: 3 });
 * ```
 */
export interface CreditsMiddlewareOptions {
  /** The meter that holds, charges and releases, and resolves the route and the BYO key. */
  meter: MeterLike;
  /**
   * The price-table id of the wrapped model. Fixed per wrapped model on purpose: a call can
   * never choose what it is priced as, so the model that runs is the one that was paid for.
   * @default the wrapped model's `modelId`
   */
  model?: string | ((model: { readonly provider: string; readonly modelId: string }) => string);
  /**
   * Makes the model that runs a bring-your-own-key reply, e.g.
   * `(apiKey, model) => createOpenAI({ apiKey }).chat(model.modelId)`. It must have the same
   * `modelId` as the wrapped model. Recommended: it works for every provider and sends the
   * workspace's key and nothing of the platform's (organization, project, other headers).
   *
   * Without it, the key goes in the call's headers, replacing the platform's: `Authorization:
   * Bearer <key>` for OpenAI models (`provider` starting with `openai`), `x-api-key` for
   * Anthropic ones. A BYO reply on any other provider then fails (nothing charged) rather than
   * run free on the platform's key.
   * @default undefined (the header override)
   */
  byoModel?: (
    apiKey: string,
    model: { readonly provider: string; readonly modelId: string },
  ) => LanguageModelLike<never, GenerateResultLike, StreamResultLike>;
  /**
   * Retries of a retryable failure (a 429, a 5xx, a dropped connection: `isRetryable` on the
   * AI SDK's `APICallError`), all inside the reply's one hold. The AI SDK's own retries never
   * run on a metered call: a failure reaches it as a `PROVIDER_ERROR`, which it does not retry.
   * @default 2
   */
  maxRetries?: number;
  /**
   * The first retry's delay in milliseconds, doubling after each; a `retry-after(-ms)`
   * response header under a minute wins.
   * @default 2000
   */
  initialRetryDelayMs?: number;
}

/**
 * What the middleware adds to a result's `providerMetadata.credits`.
 *
 * @example
 * ```ts
 * const { providerMetadata } = await generateText({ model, prompt, providerOptions });
 * const charge = providerMetadata?.credits as CreditsMetadata | undefined; // { replyId, credits: '5', route: 'credits', replayed: false }
 * ```
 */
export interface CreditsMetadata {
  readonly replyId: string;
  /** Credits charged, as a decimal string. */
  readonly credits: string;
  readonly route: string;
  /** True when the charge happened in an earlier call (a retried `replyId`). */
  readonly replayed: boolean;
  [key: string]: string | boolean;
}

/**
 * The middleware: pass it to `wrapLanguageModel({ model, middleware })`.
 *
 * @example
 * ```ts
 * const middleware: CreditsMiddleware = creditsMiddleware({ meter });
 * const model = wrapLanguageModel({ model: anthropic('claude-haiku-4-5'), middleware });
 * ```
 */
export interface CreditsMiddleware {
  readonly specificationVersion: 'v3';
  /** Runs a `generateText` step as one metered reply. */
  wrapGenerate<P extends CallOptionsLike, R extends GenerateResultLike, S extends StreamResultLike>(
    options: WrapOptions<P, R, S>,
  ): Promise<R>;
  /** Runs a `streamText` step as one metered reply. */
  wrapStream<P extends CallOptionsLike, R extends GenerateResultLike, S extends StreamResultLike>(
    options: WrapOptions<P, R, S>,
  ): Promise<S>;
}

/**
 * What `wrapLanguageModel` hands a middleware's `wrapGenerate` and `wrapStream`.
 *
 * @example
 * ```ts
 * const result = await middleware.wrapGenerate({ doGenerate, doStream, params, model } satisfies WrapOptions<typeof params, R, S>);
 * ```
 */
export interface WrapOptions<P extends CallOptionsLike, R extends GenerateResultLike, S extends StreamResultLike> {
  /** The wrapped model's own call, with the original params (the middleware calls `model` itself). */
  doGenerate: () => PromiseLike<R>;
  /** The wrapped model's own streaming call, with the original params. */
  doStream: () => PromiseLike<S>;
  /** The call options. */
  params: P;
  /** The wrapped model. */
  model: LanguageModelLike<P, R, S>;
}

const ENTRY = 'ai-sdk';

/**
 * Meters AI SDK calls: each `generateText` / `streamText` step on the wrapped model is one reply
 * run through `meter.reply` / `meter.replyStream`, so it is held before the model is called
 * (`INSUFFICIENT_CREDITS` throws before any request), charged once when it finished (a stream:
 * when it ends, or when the caller stops after any output), and released on an error or an
 * abort before any output. The meter resolves the route and the workspace's own key once; the
 * middleware runs the wrapped model with that key (see `byoModel`).
 *
 * Who is asking comes with each call as `providerOptions.credits`:
 * `{ workspaceId, agentId, conversationId, replyId? }` (required; a call without it is
 * `INVALID_INPUT`). The charge is reported back in `providerMetadata.credits`
 * (`{ replyId, credits, route, replayed }`) of the result, and of a stream's `finish` part.
 *
 * A multi-step call (tools, `stopWhen`) makes one model call per step, so one reply per step:
 * give each step its own `replyId`, or none. A retried `replyId` that was charged already
 * throws `REPLY_SETTLED` (the meter keeps no reply content to return).
 *
 * @example
 * ```ts
 * import { createOpenAI } from '@ai-sdk/openai';
 * import { generateText, wrapLanguageModel } from 'ai';
 * import { creditsMiddleware } from '@bookbag/credits/ai-sdk';
 *
 * const openai = createOpenAI({ apiKey: process.env.OPENAI_API_KEY });
 * const model = wrapLanguageModel({
 *   model: openai('gpt-4o'),
 *   middleware: creditsMiddleware({ meter, byoModel: (apiKey, m) => createOpenAI({ apiKey })(m.modelId) }),
 * });
 * const { text, providerMetadata } = await generateText({
 *   model,
 *   prompt: 'When does my order ship?',
 *   providerOptions: { credits: { workspaceId: 'ws_1', agentId: 'support', conversationId: 'c_9', replyId: message.id } },
 * });
 * // providerMetadata.credits: { replyId, credits: '5', route: 'credits', replayed: false }
 * ```
 */
export function creditsMiddleware(options: CreditsMiddlewareOptions): CreditsMiddleware {
  const { meter, byoModel } = options;
  const maxRetries = options.maxRetries ?? 2;
  const initialDelay = options.initialRetryDelayMs ?? 2000;
  if (!Number.isInteger(maxRetries) || maxRetries < 0) throw new RangeError(`[credits] [${ENTRY}] maxRetries must be an integer ≥ 0`);
  if (!(initialDelay >= 0)) throw new RangeError(`[credits] [${ENTRY}] initialRetryDelayMs must be ≥ 0`);
  const priceId = (model: { provider: string; modelId: string }) =>
    typeof options.model === 'function' ? options.model(model) : (options.model ?? model.modelId);

  /** The model to run and the params to run it with, for this call's key and signal. */
  function target<P extends CallOptionsLike, R extends GenerateResultLike, S extends StreamResultLike>(
    model: LanguageModelLike<P, R, S>,
    params: P,
    apiKey: string | undefined,
    signal: AbortSignal | undefined,
  ): { run: LanguageModelLike<P, R, S>; params: P } {
    const next: Record<string, unknown> = { ...(params as CallOptionsLike), providerOptions: withoutCredits(params.providerOptions) };
    if (signal) next.abortSignal = signal;
    if (apiKey === undefined) return { run: model, params: next as P };
    if (byoModel) {
      const run = byoModel(apiKey, { provider: model.provider, modelId: model.modelId }) as unknown as LanguageModelLike<P, R, S>;
      if (run.modelId !== model.modelId) {
        throw new Error(
          `[credits] [${ENTRY}] byoModel returned model "${run.modelId}" for "${model.modelId}": a reply must run the model it was priced as`,
        );
      }
      return { run, params: next as P };
    }
    const provider = model.provider.toLowerCase();
    // Exact header names: the AI SDK merges call headers over the provider's by key, then lowercases.
    const auth = provider.startsWith('openai')
      ? { Authorization: `Bearer ${apiKey}` }
      : provider.startsWith('anthropic')
        ? { 'x-api-key': apiKey, Authorization: undefined }
        : undefined;
    if (!auth) {
      throw new Error(
        `[credits] [${ENTRY}] this workspace brought its own key, but the middleware cannot set it for provider "${model.provider}": pass byoModel`,
      );
    }
    next.headers = { ...params.headers, ...auth };
    return { run: model, params: next as P };
  }

  async function withRetries<T>(attempt: () => PromiseLike<T>, signal: AbortSignal | undefined): Promise<T> {
    for (let tries = 0; ; tries++) {
      try {
        return await attempt();
      } catch (error) {
        if (tries >= maxRetries || !isRetryable(error) || signal?.aborted) throw error;
        await sleep(retryDelay(error, initialDelay * 2 ** tries), signal);
      }
    }
  }

  return {
    specificationVersion: 'v3',

    async wrapGenerate<P extends CallOptionsLike, R extends GenerateResultLike, S extends StreamResultLike>({
      params,
      model,
    }: WrapOptions<P, R, S>): Promise<R> {
      const who = callerOf(params);
      const result = await meter.reply({
        ...who,
        model: priceId(model),
        input: params.prompt,
        ...(params.abortSignal && { signal: params.abortSignal }),
        provider: {
          async generate(_request, { apiKey, signal }) {
            const { run, params: call } = target(model, params, apiKey, signal);
            const answer = await withRetries(() => run.doGenerate(call), signal);
            const modelId = answer.response?.modelId;
            const usage = tokenUsage(answer.usage);
            return { output: answer, ...(modelId && { model: modelId }), ...(usage && { usage }) };
          },
        },
      });
      if (result.output === undefined) {
        throw new ReplyStateError(
          'REPLY_SETTLED',
          result.replyId,
          `Reply ${result.replyId} was charged already; the meter keeps no reply content, so read the answer from your own store`,
        );
      }
      const answer = result.output as R;
      return { ...answer, providerMetadata: { ...answer.providerMetadata, credits: metadataOf(result) } } as R;
    },

    async wrapStream<P extends CallOptionsLike, R extends GenerateResultLike, S extends StreamResultLike>({
      params,
      model,
    }: WrapOptions<P, R, S>): Promise<S> {
      const who = callerOf(params);
      const signal = params.abortSignal;
      let opened!: (result: S) => void;
      const openedResult = new Promise<S>((resolve) => {
        opened = resolve;
      });
      // Parts that are not output (stream-start, metadata, text-start, …) wait here and go out
      // with the first output, so a stream that ends before any output charges nothing.
      let pending: unknown[] = [];
      // Aborted when the reader cancels, so the HTTP request closes even mid-read.
      const local = new AbortController();
      const stream = await meter.replyStream({
        ...who,
        model: priceId(model),
        input: params.prompt,
        ...(signal && { signal }),
        provider: {
          generate() {
            return Promise.reject(new Error(`[credits] [${ENTRY}] a streamed call has no whole-reply form`));
          },
          async *stream(_request, { apiKey, signal: callSignal }) {
            const { run, params: call } = target(model, params, apiKey, linked(callSignal, local.signal));
            const result = await withRetries(() => run.doStream(call), callSignal);
            opened(result);
            const reader = result.stream.getReader();
            let started = false;
            try {
              for (;;) {
                const { done, value } = await reader.read();
                if (done) return;
                if (started) {
                  yield [value];
                  continue;
                }
                // An error part before any output fails the reply: released, nothing charged.
                if (isRecord(value) && value.type === 'error') throw value.error;
                pending.push(value);
                if (isOutput(value)) {
                  started = true;
                  const batch = pending;
                  pending = [];
                  yield batch;
                }
              }
            } finally {
              // The caller stopped early or the stream failed: close the HTTP request.
              await reader.cancel().catch(() => undefined);
            }
          },
        },
      });

      const chunks = stream[Symbol.asyncIterator]();
      const first = chunks.next();
      // The stream result comes once the model answered (or the hold was replayed/failed).
      const head = await Promise.race([openedResult, first.then(() => undefined)]);
      let finish: Record<string, unknown> | undefined;
      let firstPending: Promise<IteratorResult<unknown>> | undefined = first;

      const body = new ReadableStream<unknown>({
        async pull(controller) {
          try {
            const step = await (firstPending ?? chunks.next());
            firstPending = undefined;
            if (!step.done) {
              for (const part of step.value as unknown[]) {
                // The finish part waits for the charge, so it can carry it.
                if (isRecord(part) && part.type === 'finish') finish = part;
                else controller.enqueue(part);
              }
              return;
            }
            // The stream ended: charged (output delivered) or released (none).
            for (const part of pending) {
              if (isRecord(part) && part.type === 'finish') finish = part;
              else controller.enqueue(part);
            }
            pending = [];
            const settled = await stream.result.then(
              (settlement) => ({
                replyId: settlement.replyId,
                credits: settlement.credits.toString(),
                route: settlement.route,
                replayed: settlement.replayed,
              }),
              () => undefined,
            );
            if (finish) {
              const metadata = isRecord(finish.providerMetadata) ? finish.providerMetadata : {};
              controller.enqueue(settled ? { ...finish, providerMetadata: { ...metadata, credits: settled } } : finish);
            }
            controller.close();
          } catch (error) {
            controller.error(error);
          }
        },
        async cancel() {
          local.abort();
          await stream.cancel();
        },
      });

      if (head === undefined) {
        // The meter's stream ended or failed before the model answered: a replay or a failure.
        const step = await first;
        if (step.done) {
          await stream.result.then(
            (settlement) => {
              throw new ReplyStateError(
                'REPLY_SETTLED',
                settlement.replyId,
                `Reply ${settlement.replyId} was charged already; the meter keeps no reply content, so read the answer from your own store`,
              );
            },
            (error: unknown) => {
              throw error;
            },
          );
        }
        // Output already arrived with the first step (the model answered): fall through.
        return { ...(await openedResult), stream: body } as S;
      }
      return { ...head, stream: body } as S;
    },
  };
}

function callerOf(params: CallOptionsLike): CreditsCallInfo {
  const credits = params.providerOptions?.credits;
  if (!isRecord(credits)) {
    throw new InvalidInputError([
      { path: 'providerOptions.credits', message: 'required: { workspaceId, agentId, conversationId, replyId? } says who is asking' },
    ]);
  }
  const { workspaceId, agentId, conversationId, replyId } = credits as Record<string, unknown>;
  // The meter validates each id and names the field at fault.
  return {
    workspaceId: workspaceId as string,
    agentId: agentId as string,
    conversationId: conversationId as string,
    ...(replyId !== undefined && { replyId: replyId as string }),
  };
}

function withoutCredits(providerOptions: CallOptionsLike['providerOptions']): CallOptionsLike['providerOptions'] {
  if (!providerOptions || !('credits' in providerOptions)) return providerOptions;
  const { credits: _credits, ...rest } = providerOptions;
  return rest;
}

function metadataOf(result: ReplyResult): CreditsMetadata {
  return { replyId: result.replyId, credits: result.credits.toString(), route: result.route, replayed: result.replayed };
}

/** Parts that are the answer itself; the rest frame it. */
const FRAME_PARTS = new Set([
  'stream-start',
  'response-metadata',
  'raw',
  'text-start',
  'text-end',
  'reasoning-start',
  'reasoning-end',
  'tool-input-start',
  'tool-input-end',
  'finish',
  'error',
]);

function isOutput(part: unknown): boolean {
  if (!isRecord(part) || typeof part.type !== 'string') return false;
  if (FRAME_PARTS.has(part.type)) return false;
  if ((part.type === 'text-delta' || part.type === 'reasoning-delta' || part.type === 'tool-input-delta') && part.delta === '')
    return false;
  return true;
}

function tokenUsage(usage: unknown): { inputTokens?: number; outputTokens?: number } | undefined {
  if (!isRecord(usage)) return undefined;
  const count = (value: unknown): number | undefined => {
    const total = isRecord(value) ? value.total : value;
    return typeof total === 'number' && Number.isSafeInteger(total) && total >= 0 ? total : undefined;
  };
  const inputTokens = count(usage.inputTokens);
  const outputTokens = count(usage.outputTokens);
  if (inputTokens === undefined && outputTokens === undefined) return undefined;
  return { ...(inputTokens !== undefined && { inputTokens }), ...(outputTokens !== undefined && { outputTokens }) };
}

function isRetryable(error: unknown): boolean {
  return isRecord(error) && error.isRetryable === true;
}

function retryDelay(error: unknown, backoff: number): number {
  const headers = isRecord(error) && isRecord(error.responseHeaders) ? error.responseHeaders : undefined;
  if (!headers) return backoff;
  let ms: number | undefined;
  if (typeof headers['retry-after-ms'] === 'string') ms = Number.parseFloat(headers['retry-after-ms']);
  if ((ms === undefined || Number.isNaN(ms)) && typeof headers['retry-after'] === 'string') {
    const seconds = Number.parseFloat(headers['retry-after']);
    ms = Number.isNaN(seconds) ? Date.parse(headers['retry-after']) - Date.now() : seconds * 1000;
  }
  return ms !== undefined && !Number.isNaN(ms) && ms >= 0 && ms < 60_000 ? ms : backoff;
}

/** One signal that aborts when either does. */
function linked(outer: AbortSignal | undefined, inner: AbortSignal): AbortSignal {
  if (!outer) return inner;
  const controller = new AbortController();
  const abort = (signal: AbortSignal) => () => controller.abort(signal.reason);
  if (outer.aborted) controller.abort(outer.reason);
  outer.addEventListener('abort', abort(outer), { once: true });
  inner.addEventListener('abort', abort(inner), { once: true });
  return controller.signal;
}

function sleep(ms: number, signal: AbortSignal | undefined): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(signal.reason);
    const timer = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    const onAbort = () => {
      clearTimeout(timer);
      reject(signal?.reason);
    };
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}

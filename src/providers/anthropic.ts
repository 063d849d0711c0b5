/**
 * `@bookbag/credits/anthropic`: a ready `ReplyProvider` around the official
 * `@anthropic-ai/sdk` client.
 *
 * Typed structurally: this file never imports `@anthropic-ai/sdk` (an optional peer), it calls
 * only `messages.create`, as described by {@link AnthropicClientLike}.
 */
import type { ReplyContext, ReplyProvider, ReplyRequest } from '../meter/provider.js';
import {
  type ClientOption,
  clientPicker,
  isAsyncIterable,
  isRecord,
  type ProviderResult,
  requestOptions,
  splitInput,
  usageOf,
} from './shared.js';

export type { ClientOption, ProviderResult } from './shared.js';

/**
 * Per-request options passed to the SDK (`signal` aborts the HTTP request).
 *
 * @example
 * ```ts
 * await client.messages.create({ model, max_tokens, messages }, { signal } satisfies AnthropicRequestOptionsLike);
 * ```
 */
export interface AnthropicRequestOptionsLike {
  signal?: AbortSignal;
}

/**
 * The part of an `Anthropic` client this provider calls. Any object with this method works
 * (an `Anthropic` instance, a wrapper of your own, a test double).
 *
 * @example
 * ```ts
 * const client: AnthropicClientLike = new Anthropic({ apiKey: process.env.ANTHROPIC_API_KEY });
 * ```
 */
export interface AnthropicClientLike {
  readonly messages: {
    /** The Messages API: resolves to a message, or to an async iterable of events with `stream: true`. */
    create(body: { model: string; max_tokens: number; messages: unknown }, options?: AnthropicRequestOptionsLike): PromiseLike<unknown>;
  };
}

/**
 * Options of {@link anthropicProvider}.
 *
 * @example
 * ```ts
 * const options: AnthropicProviderOptions = { client: (apiKey) => new Anthropic({ apiKey: apiKey ?? platformKey }), maxTokens: 2048 };
 * ```
 */
export interface AnthropicProviderOptions {
  /**
   * The client: an `Anthropic` instance, or `(apiKey) => new Anthropic({ apiKey })` to run
   * bring-your-own-key replies on the workspace's own key (called with `undefined` for the
   * platform's client). With an instance, a reply routed `byo` fails (nothing charged) rather
   * than run free on the platform's key.
   */
  client: ClientOption<AnthropicClientLike>;
  /**
   * `max_tokens` of each request (the Messages API requires one), unless `input` sets
   * `max_tokens` itself.
   * @default 1024
   */
  maxTokens?: number;
  /**
   * `text`: `output` is the answer's text (its text blocks joined). `response`: `output` is
   * the SDK's whole message (tool use, thinking blocks). Streaming always yields text deltas.
   * @default 'text'
   */
  output?: 'text' | 'response';
  /**
   * Clients kept for BYO keys (least recently used dropped first), with a client factory.
   * @default 100
   */
  maxClients?: number;
}

/**
 * The provider {@link anthropicProvider} returns: `generate` also reports the model and usage.
 *
 * @example
 * ```ts
 * const claude: AnthropicReplyProvider = anthropicProvider({ client });
 * const { output, usage } = await claude.generate(request, {});
 * ```
 */
export interface AnthropicReplyProvider extends ReplyProvider {
  generate(request: ReplyRequest, context: ReplyContext): Promise<ProviderResult>;
  /** Yields the answer's text deltas (strings). */
  stream(request: ReplyRequest, context: ReplyContext): AsyncIterable<string>;
}

const ENTRY = 'anthropic';

/**
 * A `ReplyProvider` for Claude models (the Messages API), to register as `providers.anthropic`.
 *
 * `request.input` is the messages array, or an object `{ messages, system?, ...params }` whose
 * other fields (`system`, `temperature`, `tools`, `max_tokens`, …) go into the request body as
 * they are. `model` and `stream` are set by the provider and refused in `input`. The `signal` of
 * the reply aborts the HTTP request. SDK errors are rethrown as they are; the meter reports them
 * as `PROVIDER_ERROR` (with any key scrubbed) and charges nothing.
 *
 * @example
 * ```ts
 * import Anthropic from '@anthropic-ai/sdk';
 * import { CreditMeter } from '@bookbag/credits';
 * import { anthropicProvider } from '@bookbag/credits/anthropic';
 *
 * const meter = new CreditMeter({
 *   providers: { anthropic: anthropicProvider({ client: (apiKey) => new Anthropic({ apiKey: apiKey ?? process.env.ANTHROPIC_API_KEY }) }) },
 *   byoKeys: ({ workspaceId, provider }) => secrets.get(workspaceId, provider),
 * });
 * const { output } = await meter.reply({
 *   workspaceId: 'ws_1', agentId: 'support', conversationId: 'c_9', model: 'claude-haiku-4-5',
 *   input: { system: 'Be brief.', messages: [{ role: 'user', content: 'Hi' }] },
 * });
 * ```
 */
export function anthropicProvider(options: AnthropicProviderOptions): AnthropicReplyProvider {
  const maxTokens = options.maxTokens ?? 1024;
  if (!Number.isInteger(maxTokens) || maxTokens < 1) throw new RangeError(`[credits] [${ENTRY}] maxTokens must be a positive integer`);
  const whole = options.output === 'response';
  const clientFor = clientPicker(options.client, options.maxClients ?? 100, ENTRY);

  const bodyOf = (request: ReplyRequest, stream: boolean) => {
    const { value, extra } = splitInput(request.input, 'messages', ENTRY);
    return { max_tokens: maxTokens, ...extra, model: request.model, messages: value, ...(stream && { stream: true }) };
  };

  return {
    async generate(request, { apiKey, signal }) {
      const message = await clientFor(apiKey).messages.create(bodyOf(request, false), requestOptions(signal));
      if (!isRecord(message)) return { output: whole ? message : '' };
      const model = typeof message.model === 'string' ? message.model : undefined;
      const usage = isRecord(message.usage) ? usageOf(message.usage.input_tokens, message.usage.output_tokens) : undefined;
      return {
        output: whole ? message : messageText(message),
        ...(model !== undefined && { model }),
        ...(usage !== undefined && { usage }),
      };
    },

    async *stream(request, { apiKey, signal }) {
      const source = await clientFor(apiKey).messages.create(bodyOf(request, true), requestOptions(signal));
      if (!isAsyncIterable(source)) throw new TypeError(`[credits] [${ENTRY}] the client did not return a stream`);
      // Leaving this loop early (the caller stopped reading) makes the SDK abort the request.
      for await (const event of source) {
        if (!isRecord(event)) continue;
        if (event.type === 'error') throw new Error(`[credits] [${ENTRY}] the stream reported an error`);
        if (event.type !== 'content_block_delta' || !isRecord(event.delta)) continue;
        if (event.delta.type === 'text_delta' && typeof event.delta.text === 'string' && event.delta.text) yield event.delta.text;
      }
      // The SDK ends an aborted stream quietly; the caller must still learn it was cut short.
      signal?.throwIfAborted();
    },
  };
}

function messageText(message: Record<string, unknown>): string {
  if (!Array.isArray(message.content)) return '';
  let text = '';
  for (const block of message.content) {
    if (isRecord(block) && block.type === 'text' && typeof block.text === 'string') text += block.text;
  }
  return text;
}

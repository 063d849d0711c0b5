/**
 * `@bookbag/credits/openai`: a ready `ReplyProvider` around the official `openai` client.
 *
 * Typed structurally: this file never imports `openai` (an optional peer), it calls only the
 * two methods in {@link OpenAIClientLike}, which an `OpenAI` instance has.
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
 * await client.chat.completions.create({ model, messages }, { signal } satisfies OpenAIRequestOptionsLike);
 * ```
 */
export interface OpenAIRequestOptionsLike {
  signal?: AbortSignal;
}

/**
 * The part of an `OpenAI` client this provider calls. Any object with these methods works
 * (an `OpenAI` or `AzureOpenAI` instance, a wrapper of your own, a test double).
 *
 * @example
 * ```ts
 * const client: OpenAIClientLike = new AzureOpenAI({ endpoint, apiVersion, deployment });
 * ```
 */
export interface OpenAIClientLike {
  readonly chat: {
    readonly completions: {
      /** Chat Completions: resolves to a completion, or to an async iterable of chunks with `stream: true`. */
      create(body: { model: string; messages: unknown }, options?: OpenAIRequestOptionsLike): PromiseLike<unknown>;
    };
  };
  readonly responses?: {
    /** The Responses API: resolves to a response, or to an async iterable of events with `stream: true`. */
    create(body: { model?: string; input?: unknown }, options?: OpenAIRequestOptionsLike): PromiseLike<unknown>;
  };
}

/**
 * Options of {@link openaiProvider}.
 *
 * @example
 * ```ts
 * const options: OpenAIProviderOptions = { client: (apiKey) => new OpenAI({ apiKey: apiKey ?? platformKey }), api: 'responses' };
 * ```
 */
export interface OpenAIProviderOptions {
  /**
   * The client: an `OpenAI` instance, or `(apiKey) => new OpenAI({ apiKey })` to run
   * bring-your-own-key replies on the workspace's own key (called with `undefined` for the
   * platform's client). With an instance, a reply routed `byo` fails (nothing charged) rather
   * than run free on the platform's key.
   */
  client: ClientOption<OpenAIClientLike>;
  /**
   * `chat`: Chat Completions (`request.input` is the messages array, or
   * `{ messages, ...params }`). `responses`: the Responses API (`request.input` is the
   * input string or items, or `{ input, ...params }`).
   * @default 'chat'
   */
  api?: 'chat' | 'responses';
  /**
   * `text`: `output` is the answer's text. `response`: `output` is the SDK's whole response
   * object (tool calls, refusals, logprobs). Streaming always yields text deltas.
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
 * The provider {@link openaiProvider} returns: `generate` also reports the model and usage.
 *
 * @example
 * ```ts
 * const openai: OpenAIReplyProvider = openaiProvider({ client });
 * for await (const text of openai.stream(request, { signal })) process.stdout.write(text);
 * ```
 */
export interface OpenAIReplyProvider extends ReplyProvider {
  generate(request: ReplyRequest, context: ReplyContext): Promise<ProviderResult>;
  /** Yields the answer's text deltas (strings). */
  stream(request: ReplyRequest, context: ReplyContext): AsyncIterable<string>;
}

const ENTRY = 'openai';

/**
 * A `ReplyProvider` for OpenAI models, to register as `providers.openai`.
 *
 * `request.input` for Chat Completions (the default) is the messages array, or an object
 * `{ messages, ...params }` whose other fields (`temperature`, `tools`, `max_completion_tokens`,
 * …) go into the request body as they are. With `api: 'responses'` it is the Responses `input`
 * (a string or items), or `{ input, ...params }` (`instructions`, `temperature`, …). `model`
 * and `stream` are set by the provider and refused in `input`. The `signal` of the reply aborts
 * the HTTP request. SDK errors are rethrown as they are; the meter reports them as
 * `PROVIDER_ERROR` (with any key scrubbed) and charges nothing. Set `maxRetries` on the
 * client as you like: the SDK's retries happen inside one hold.
 *
 * @example
 * ```ts
 * import OpenAI from 'openai';
 * import { CreditMeter } from '@bookbag/credits';
 * import { openaiProvider } from '@bookbag/credits/openai';
 *
 * const meter = new CreditMeter({
 *   providers: { openai: openaiProvider({ client: (apiKey) => new OpenAI({ apiKey: apiKey ?? process.env.OPENAI_API_KEY }) }) },
 *   byoKeys: ({ workspaceId, provider }) => secrets.get(workspaceId, provider),
 * });
 * const { output, credits } = await meter.reply({
 *   workspaceId: 'ws_1', agentId: 'support', conversationId: 'c_9', model: 'gpt-4o',
 *   input: { messages: [{ role: 'user', content: 'Hi' }], temperature: 0.2 },
 * });
 * ```
 */
export function openaiProvider(options: OpenAIProviderOptions): OpenAIReplyProvider {
  const api = options.api ?? 'chat';
  if (api !== 'chat' && api !== 'responses') throw new TypeError(`[credits] [${ENTRY}] api must be 'chat' or 'responses'`);
  const whole = options.output === 'response';
  const clientFor = clientPicker(options.client, options.maxClients ?? 100, ENTRY);

  const responsesOf = (client: OpenAIClientLike) => {
    if (!client.responses)
      throw new TypeError(`[credits] [${ENTRY}] api: 'responses' needs a client with responses.create (openai v4.87 or later)`);
    return client.responses;
  };

  const chatBody = (request: ReplyRequest, stream: boolean) => {
    const { value, extra } = splitInput(request.input, 'messages', ENTRY);
    return { ...extra, model: request.model, messages: value, ...(stream && { stream: true }) };
  };
  const responsesBody = (request: ReplyRequest, stream: boolean) => {
    const { value, extra } = splitInput(request.input, 'input', ENTRY, true);
    return { ...extra, model: request.model, input: value, ...(stream && { stream: true }) };
  };

  return {
    async generate(request, { apiKey, signal }) {
      const client = clientFor(apiKey);
      if (api === 'chat') {
        const completion = await client.chat.completions.create(chatBody(request, false), requestOptions(signal));
        return resultOf(whole ? completion : chatText(completion), completion, 'prompt_tokens', 'completion_tokens');
      }
      const response = await responsesOf(client).create(responsesBody(request, false), requestOptions(signal));
      return resultOf(whole ? response : responseText(response), response, 'input_tokens', 'output_tokens');
    },

    async *stream(request, { apiKey, signal }) {
      const client = clientFor(apiKey);
      const source =
        api === 'chat'
          ? await client.chat.completions.create(chatBody(request, true), requestOptions(signal))
          : await responsesOf(client).create(responsesBody(request, true), requestOptions(signal));
      if (!isAsyncIterable(source)) throw new TypeError(`[credits] [${ENTRY}] the client did not return a stream`);
      // Leaving this loop early (the caller stopped reading) makes the SDK abort the request.
      for await (const event of source) {
        const text = api === 'chat' ? chatDelta(event) : responseDelta(event);
        if (text) yield text;
      }
      // The SDK ends an aborted stream quietly; the caller must still learn it was cut short.
      signal?.throwIfAborted();
    },
  };
}

function resultOf(output: unknown, response: unknown, inputField: string, outputField: string): ProviderResult {
  if (!isRecord(response)) return { output };
  const model = typeof response.model === 'string' ? response.model : undefined;
  const usage = isRecord(response.usage) ? usageOf(response.usage[inputField], response.usage[outputField]) : undefined;
  return { output, ...(model !== undefined && { model }), ...(usage !== undefined && { usage }) };
}

function chatText(completion: unknown): string {
  if (!isRecord(completion) || !Array.isArray(completion.choices)) return '';
  const message = isRecord(completion.choices[0]) ? completion.choices[0].message : undefined;
  return isRecord(message) && typeof message.content === 'string' ? message.content : '';
}

function responseText(response: unknown): string {
  if (!isRecord(response)) return '';
  if (typeof response.output_text === 'string') return response.output_text;
  if (!Array.isArray(response.output)) return '';
  let text = '';
  for (const item of response.output) {
    if (!isRecord(item) || item.type !== 'message' || !Array.isArray(item.content)) continue;
    for (const part of item.content) {
      if (isRecord(part) && part.type === 'output_text' && typeof part.text === 'string') text += part.text;
    }
  }
  return text;
}

function chatDelta(chunk: unknown): string | undefined {
  if (!isRecord(chunk) || !Array.isArray(chunk.choices)) return undefined;
  const delta = isRecord(chunk.choices[0]) ? chunk.choices[0].delta : undefined;
  return isRecord(delta) && typeof delta.content === 'string' ? delta.content : undefined;
}

function responseDelta(event: unknown): string | undefined {
  if (!isRecord(event)) return undefined;
  if (event.type === 'error') throw new Error(`[credits] [${ENTRY}] the stream reported an error: ${String(event.message ?? 'unknown')}`);
  if (event.type === 'response.failed') throw new Error(`[credits] [${ENTRY}] the response failed`);
  return event.type === 'response.output_text.delta' && typeof event.delta === 'string' ? event.delta : undefined;
}

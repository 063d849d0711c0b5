/**
 * A local stand-in for the OpenAI and Anthropic HTTP APIs, for tests and runnable examples.
 *
 * A node:http server on 127.0.0.1 (an ephemeral port) that speaks enough of three wire formats
 * for the official SDKs and the AI SDK providers to work against it, as JSON or as SSE streams:
 *
 * - OpenAI Chat Completions: `POST …/chat/completions`
 * - OpenAI Responses: `POST …/responses`
 * - Anthropic Messages: `POST …/messages`
 *
 * What a request gets is scripted: a behaviour queued with `script()` (first in, first out),
 * else the `x-fake-behavior` request header (a behaviour kind), else a normal answer. Every
 * request is recorded with the credentials it carried, so tests can check which key reached
 * the API and nothing else.
 *
 * Point clients at it: `new OpenAI({ baseURL: server.openaiBaseURL, apiKey })`,
 * `new Anthropic({ baseURL: server.anthropicBaseURL, apiKey })`,
 * `createOpenAI({ baseURL: server.openaiBaseURL, apiKey })`,
 * `createAnthropic({ baseURL: server.anthropicBaseURL + '/v1', apiKey })`.
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';

/** What the fake API does with one request. */
export type FakeBehavior =
  /** Answers normally; `model` makes the response report another model (a fallback). */
  | { kind: 'ok'; text?: string; model?: string; chunkDelayMs?: number; delayMs?: number }
  /** Answers with this HTTP status and an API-shaped error body. */
  | { kind: 'error'; status: number; message?: string }
  /** Never answers; the socket stays open until the client aborts (or the server closes). */
  | { kind: 'hang' }
  /** Streams the first chunk, then hangs until the client aborts. */
  | { kind: 'hang-after-first-chunk'; text?: string };

/** One request the fake API received. */
export interface RecordedRequest {
  readonly api: 'chat' | 'responses' | 'messages';
  readonly path: string;
  readonly model: string | undefined;
  readonly stream: boolean;
  /** The `Authorization` header, as sent. */
  readonly authorization: string | undefined;
  /** The `x-api-key` header, as sent. */
  readonly apiKey: string | undefined;
  /** The key the request carried: `x-api-key`, else the `Authorization: Bearer` token. */
  readonly credential: string | undefined;
  readonly body: Record<string, unknown>;
}

export interface FakeLlmServer {
  /** `http://127.0.0.1:<port>`. */
  readonly url: string;
  /** For the OpenAI SDK and `@ai-sdk/openai`: `<url>/v1`. */
  readonly openaiBaseURL: string;
  /** For the Anthropic SDK (which appends `/v1/messages`): `<url>`. `@ai-sdk/anthropic` wants `<url>/v1`. */
  readonly anthropicBaseURL: string;
  /** Every request received, oldest first. */
  readonly requests: RecordedRequest[];
  /** Queues behaviours for the next requests, in order. */
  script(...behaviors: FakeBehavior[]): void;
  /** Forgets recorded requests and queued behaviours. */
  reset(): void;
  /** Stops the server, cutting any hanging connection. */
  close(): Promise<void>;
}

const DEFAULT_TEXT = 'Your order ships tomorrow.';

/**
 * Starts the fake API on 127.0.0.1 at an ephemeral port.
 *
 * @example
 * ```ts
 * const server = await startFakeLlmServer();
 * const client = new OpenAI({ baseURL: server.openaiBaseURL, apiKey: 'sk-test', maxRetries: 0 });
 * server.script({ kind: 'error', status: 429 });
 * await server.close();
 * ```
 */
export async function startFakeLlmServer(): Promise<FakeLlmServer> {
  const queue: FakeBehavior[] = [];
  const requests: RecordedRequest[] = [];
  const server: Server = createServer((req, res) => {
    handle(req, res).catch(() => {
      if (!res.headersSent) res.writeHead(500);
      res.end();
    });
  });

  async function handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const path = (req.url ?? '/').split('?')[0] ?? '/';
    const api = path.endsWith('/chat/completions')
      ? 'chat'
      : path.endsWith('/responses')
        ? 'responses'
        : path.endsWith('/messages')
          ? 'messages'
          : undefined;
    const raw = await readBody(req);
    if (req.method !== 'POST' || api === undefined) {
      res.writeHead(404, { 'content-type': 'application/json' }).end(JSON.stringify({ error: { message: 'not found' } }));
      return;
    }
    let body: Record<string, unknown>;
    try {
      body = JSON.parse(raw) as Record<string, unknown>;
    } catch {
      res.writeHead(400, { 'content-type': 'application/json' }).end(JSON.stringify({ error: { message: 'invalid JSON' } }));
      return;
    }
    const model = typeof body.model === 'string' ? body.model : undefined;
    const stream = body.stream === true;
    requests.push({
      api,
      path,
      model,
      stream,
      authorization: header(req, 'authorization'),
      apiKey: header(req, 'x-api-key'),
      credential: header(req, 'x-api-key') ?? header(req, 'authorization')?.replace(/^Bearer /i, ''),
      body,
    });
    const behavior = queue.shift() ?? fromHeader(header(req, 'x-fake-behavior')) ?? { kind: 'ok' };
    await respond(api, behavior, model ?? 'unknown', stream, req, res);
  }

  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve());
  });
  const { port } = server.address() as AddressInfo;
  const url = `http://127.0.0.1:${port}`;
  return {
    url,
    openaiBaseURL: `${url}/v1`,
    anthropicBaseURL: url,
    requests,
    script: (...behaviors) => void queue.push(...behaviors),
    reset: () => {
      queue.length = 0;
      requests.length = 0;
    },
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

function header(req: IncomingMessage, name: string): string | undefined {
  const value = req.headers[name];
  return Array.isArray(value) ? value.join(', ') : value;
}

function fromHeader(value: string | undefined): FakeBehavior | undefined {
  if (value === undefined) return undefined;
  if (value === 'hang' || value === 'hang-after-first-chunk') return { kind: value };
  if (/^\d{3}$/.test(value)) return { kind: 'error', status: Number(value) };
  if (value.startsWith('model:')) return { kind: 'ok', model: value.slice(6) };
  return { kind: 'ok' };
}

function readBody(req: IncomingMessage): Promise<string> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    req.on('data', (chunk: Buffer) => chunks.push(chunk));
    req.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    req.on('error', reject);
  });
}

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

/** Resolves when the client goes away (abort) — how a hanging request ends. */
function clientGone(res: ServerResponse): Promise<void> {
  return new Promise((resolve) => {
    if (res.destroyed) resolve();
    else res.once('close', () => resolve());
  });
}

async function respond(
  api: 'chat' | 'responses' | 'messages',
  behavior: FakeBehavior,
  requestedModel: string,
  stream: boolean,
  _req: IncomingMessage,
  res: ServerResponse,
): Promise<void> {
  if (behavior.kind === 'error') {
    const message = behavior.message ?? (behavior.status === 429 ? 'Rate limit reached' : 'The server had an error');
    const payload =
      api === 'messages'
        ? { type: 'error', error: { type: behavior.status === 429 ? 'rate_limit_error' : 'api_error', message } }
        : { error: { message, type: behavior.status === 429 ? 'rate_limit_exceeded' : 'server_error', param: null, code: null } };
    // `retry-after: 0` keeps SDK retries (when a test enables them) instant.
    res.writeHead(behavior.status, { 'content-type': 'application/json', 'retry-after': '0', 'retry-after-ms': '0' });
    res.end(JSON.stringify(payload));
    return;
  }
  if (behavior.kind === 'hang') {
    await clientGone(res);
    return;
  }
  const text = behavior.text ?? DEFAULT_TEXT;
  const model = behavior.kind === 'ok' && behavior.model !== undefined ? behavior.model : requestedModel;
  if (behavior.kind === 'ok' && behavior.delayMs) await sleep(behavior.delayMs);
  const words = text.match(/\s*\S+/g) ?? [text];
  const usage = { input: 12, output: words.length };
  if (!stream) {
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify(jsonAnswer(api, model, text, usage)));
    return;
  }
  res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache', connection: 'keep-alive' });
  const events = sseAnswer(api, model, words, usage);
  const delay = behavior.kind === 'ok' ? (behavior.chunkDelayMs ?? 0) : 0;
  let deltasSent = 0;
  for (const event of events) {
    if (res.destroyed) return;
    if (event.delta) {
      if (behavior.kind === 'hang-after-first-chunk' && deltasSent === 1) {
        await clientGone(res);
        return;
      }
      if (delay > 0 && deltasSent > 0) await sleep(delay);
      deltasSent++;
    }
    res.write(event.text);
  }
  res.end();
}

function jsonAnswer(
  api: 'chat' | 'responses' | 'messages',
  model: string,
  text: string,
  usage: { input: number; output: number },
): unknown {
  const created = Math.floor(Date.now() / 1000);
  if (api === 'chat') {
    return {
      id: 'chatcmpl-fake',
      object: 'chat.completion',
      created,
      model,
      choices: [{ index: 0, message: { role: 'assistant', content: text, refusal: null }, finish_reason: 'stop', logprobs: null }],
      usage: { prompt_tokens: usage.input, completion_tokens: usage.output, total_tokens: usage.input + usage.output },
    };
  }
  if (api === 'responses') return responseObject(model, text, usage, 'completed', created);
  return {
    id: 'msg_fake',
    type: 'message',
    role: 'assistant',
    model,
    content: [{ type: 'text', text }],
    stop_reason: 'end_turn',
    stop_sequence: null,
    usage: { input_tokens: usage.input, output_tokens: usage.output },
  };
}

function responseObject(
  model: string,
  text: string | undefined,
  usage: { input: number; output: number } | undefined,
  status: string,
  created: number,
) {
  return {
    id: 'resp_fake',
    object: 'response',
    created_at: created,
    status,
    model,
    error: null,
    incomplete_details: null,
    output:
      text === undefined
        ? []
        : [
            {
              type: 'message',
              id: 'msg_fake',
              status: 'completed',
              role: 'assistant',
              content: [{ type: 'output_text', text, annotations: [] }],
            },
          ],
    usage: usage
      ? {
          input_tokens: usage.input,
          input_tokens_details: { cached_tokens: 0 },
          output_tokens: usage.output,
          output_tokens_details: { reasoning_tokens: 0 },
          total_tokens: usage.input + usage.output,
        }
      : null,
  };
}

interface SseEvent {
  readonly text: string;
  /** True for an event that carries answer text (where delays and hangs apply). */
  readonly delta: boolean;
}

function sseAnswer(
  api: 'chat' | 'responses' | 'messages',
  model: string,
  words: string[],
  usage: { input: number; output: number },
): SseEvent[] {
  const created = Math.floor(Date.now() / 1000);
  const data = (value: unknown, delta = false): SseEvent => ({ text: `data: ${JSON.stringify(value)}\n\n`, delta });
  const named = (name: string, value: unknown, delta = false): SseEvent => ({
    text: `event: ${name}\ndata: ${JSON.stringify(value)}\n\n`,
    delta,
  });
  if (api === 'chat') {
    const chunk = (delta: Record<string, unknown>, finish: string | null) => ({
      id: 'chatcmpl-fake',
      object: 'chat.completion.chunk',
      created,
      model,
      choices: [{ index: 0, delta, finish_reason: finish, logprobs: null }],
    });
    return [
      data(chunk({ role: 'assistant', content: '' }, null)),
      ...words.map((word) => data(chunk({ content: word }, null), true)),
      data(chunk({}, 'stop')),
      data({
        id: 'chatcmpl-fake',
        object: 'chat.completion.chunk',
        created,
        model,
        choices: [],
        usage: { prompt_tokens: usage.input, completion_tokens: usage.output, total_tokens: usage.input + usage.output },
      }),
      { text: 'data: [DONE]\n\n', delta: false },
    ];
  }
  if (api === 'responses') {
    let sequence = 0;
    const event = (type: string, fields: Record<string, unknown>, delta = false) =>
      named(type, { type, sequence_number: sequence++, ...fields }, delta);
    const item = { type: 'message', id: 'msg_fake', status: 'in_progress', role: 'assistant', content: [] };
    const text = words.join('');
    return [
      event('response.created', { response: responseObject(model, undefined, undefined, 'in_progress', created) }),
      event('response.output_item.added', { output_index: 0, item }),
      event('response.content_part.added', {
        item_id: 'msg_fake',
        output_index: 0,
        content_index: 0,
        part: { type: 'output_text', text: '', annotations: [] },
      }),
      ...words.map((word) =>
        event('response.output_text.delta', { item_id: 'msg_fake', output_index: 0, content_index: 0, delta: word, logprobs: [] }, true),
      ),
      event('response.output_text.done', { item_id: 'msg_fake', output_index: 0, content_index: 0, text, logprobs: [] }),
      event('response.output_item.done', {
        output_index: 0,
        item: { ...item, status: 'completed', content: [{ type: 'output_text', text, annotations: [] }] },
      }),
      event('response.completed', { response: responseObject(model, text, usage, 'completed', created) }),
    ];
  }
  return [
    named('message_start', {
      type: 'message_start',
      message: {
        id: 'msg_fake',
        type: 'message',
        role: 'assistant',
        model,
        content: [],
        stop_reason: null,
        stop_sequence: null,
        usage: { input_tokens: usage.input, output_tokens: 1 },
      },
    }),
    named('content_block_start', { type: 'content_block_start', index: 0, content_block: { type: 'text', text: '' } }),
    ...words.map((word) =>
      named('content_block_delta', { type: 'content_block_delta', index: 0, delta: { type: 'text_delta', text: word } }, true),
    ),
    named('content_block_stop', { type: 'content_block_stop', index: 0 }),
    named('message_delta', {
      type: 'message_delta',
      delta: { stop_reason: 'end_turn', stop_sequence: null },
      usage: { output_tokens: usage.output },
    }),
    named('message_stop', { type: 'message_stop' }),
  ];
}

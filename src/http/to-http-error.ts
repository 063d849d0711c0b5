import { Decimal } from 'decimal.js';
import { CreditsError } from '../core/errors.js';

/**
 * A JSON value, as found in an HTTP error body.
 *
 * @example
 * ```ts
 * const issues: HttpJsonValue = [{ path: 'credits', message: 'must be ≥ 0' }];
 * ```
 */
export type HttpJsonValue = string | number | boolean | null | readonly HttpJsonValue[] | { readonly [key: string]: HttpJsonValue };

/**
 * The body of an error response: the stable `code`, a message safe to show, and the error's
 * public fields (amounts as decimal strings, dates as ISO strings). Never a key, a cause, a
 * stack or a driver message.
 *
 * @example
 * ```ts
 * const body: HttpErrorBody = toHttpError(error).body;
 * if (body.code === 'INSUFFICIENT_CREDITS') showUpgrade(body.required, body.renewsAt);
 * ```
 */
export interface HttpErrorBody {
  /** The error's stable code (`INSUFFICIENT_CREDITS`, …), or `INTERNAL_ERROR` for any other error. */
  readonly code: string;
  readonly message: string;
  readonly [field: string]: HttpJsonValue;
}

/**
 * What {@link toHttpError} returns: write it as the response.
 *
 * @example
 * ```ts
 * const { status, headers, body }: HttpErrorResponse = toHttpError(error);
 * return new Response(JSON.stringify(body), { status, headers });
 * ```
 */
export interface HttpErrorResponse {
  /** The HTTP status code. */
  readonly status: number;
  /** Response headers, as a plain object (`content-type`, `cache-control`, `Retry-After` on 402). */
  readonly headers: Readonly<Record<string, string>>;
  /** Serialize with `JSON.stringify`. */
  readonly body: HttpErrorBody;
}

/**
 * Options of {@link toHttpError}.
 *
 * @example
 * ```ts
 * toHttpError(error, { now: clock() }).headers['Retry-After']; // seconds until the renewal
 * ```
 */
export interface ToHttpErrorOptions {
  /**
   * The time `Retry-After` counts from.
   * @default new Date()
   */
  now?: Date | number;
}

/**
 * How each code maps to a status, and which public fields its body carries (an allow-list:
 * a field added to an error later never reaches a response unless it is listed here).
 *
 * Decisions: `UNKNOWN_MODEL` and `UNKNOWN_PLAN` are 400, not 404: the id comes from the
 * request body, and 404 is kept for the resource a URL names (a workspace, a reply).
 * `PROVIDER_NOT_FOUND` is 500: no provider is registered for a model the price table offers,
 * a server misconfiguration the client cannot fix. `HOLD_EXPIRED` and the other reply states
 * are 409: retry with a new `replyId`.
 */
const RULES: Readonly<Record<string, { status: number; fields: readonly string[] }>> = {
  INSUFFICIENT_CREDITS: { status: 402, fields: ['workspaceId', 'model', 'replyId', 'required', 'available', 'renewsAt'] },
  AGENT_LIMIT_REACHED: {
    status: 402,
    fields: ['workspaceId', 'agentId', 'model', 'replyId', 'required', 'available', 'limit', 'renewsAt'],
  },
  UNKNOWN_MODEL: { status: 400, fields: ['model'] },
  UNKNOWN_PLAN: { status: 400, fields: ['plan'] },
  INVALID_INPUT: { status: 400, fields: ['field', 'issues'] },
  WORKSPACE_NOT_FOUND: { status: 404, fields: ['workspaceId'] },
  REPLY_NOT_FOUND: { status: 404, fields: ['replyId'] },
  WORKSPACE_EXISTS: { status: 409, fields: ['workspaceId'] },
  IDEMPOTENCY_CONFLICT: { status: 409, fields: ['key', 'field'] },
  REPLY_IN_PROGRESS: { status: 409, fields: ['replyId'] },
  REPLY_RELEASED: { status: 409, fields: ['replyId'] },
  REPLY_SETTLED: { status: 409, fields: ['replyId'] },
  HOLD_EXPIRED: { status: 409, fields: ['replyId'] },
  PROVIDER_NOT_FOUND: { status: 500, fields: ['provider'] },
  PROVIDER_ERROR: { status: 502, fields: ['replyId', 'provider'] },
  STORAGE_ERROR: { status: 503, fields: ['operation', 'adapter'] },
};

/**
 * Messages written here instead of the error's own: a provider's message may echo the
 * platform's key or the upstream response, a store's message may carry a connection string.
 */
const SAFE_MESSAGES: Readonly<Record<string, (error: Record<string, unknown>) => string>> = {
  PROVIDER_ERROR: (e) => `The model provider${typeof e.provider === 'string' ? ` "${e.provider}"` : ''} failed; nothing was charged`,
  STORAGE_ERROR: () => 'The credit store is unavailable; nothing was charged',
  PROVIDER_NOT_FOUND: () => 'This model is not available on this server',
};

const INTERNAL: HttpErrorResponse = Object.freeze({
  status: 500,
  headers: Object.freeze({ 'content-type': 'application/json; charset=utf-8', 'cache-control': 'no-store' }),
  body: Object.freeze({ code: 'INTERNAL_ERROR', message: 'Internal server error' }),
});

/**
 * Turns an error thrown by the meter into an HTTP response: a status, plain-object headers and a
 * JSON body `{ code, message, ...public fields }`.
 *
 * | code | status |
 * | --- | --- |
 * | `INSUFFICIENT_CREDITS` | 402, `Retry-After` = whole seconds until `renewsAt` (≥ 0) |
 * | `INVALID_INPUT`, `UNKNOWN_MODEL`, `UNKNOWN_PLAN` | 400 (`field` and `issues` for invalid input) |
 * | `WORKSPACE_NOT_FOUND`, `REPLY_NOT_FOUND` | 404 |
 * | `WORKSPACE_EXISTS`, `IDEMPOTENCY_CONFLICT`, `REPLY_IN_PROGRESS`, `REPLY_RELEASED`, `REPLY_SETTLED`, `HOLD_EXPIRED` | 409 |
 * | `PROVIDER_NOT_FOUND` | 500 |
 * | `PROVIDER_ERROR` | 502 (`providerStatus`: the upstream HTTP status, when known) |
 * | `STORAGE_ERROR` | 503 |
 * | anything else | 500 `INTERNAL_ERROR`, a generic message (never the original) |
 *
 * Amounts are decimal strings (`"5"`, `"0.5"`), dates ISO strings. A body never holds a key, a
 * `cause`, a stack, or the message of a provider or store error.
 *
 * @example
 * ```ts
 * try {
 *   const reply = await meter.reply({ workspaceId, agentId, conversationId, model, input });
 *   res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(reply.output));
 * } catch (error) {
 *   const { status, headers, body } = toHttpError(error);
 *   res.writeHead(status, headers).end(JSON.stringify(body));
 * }
 * ```
 */
export function toHttpError(error: unknown, options: ToHttpErrorOptions = {}): HttpErrorResponse {
  if (!CreditsError.is(error)) return INTERNAL;
  const source = error as unknown as Record<string, unknown>;
  const code = String(error.code);
  const rule = RULES[code];
  if (!rule) return { ...INTERNAL, body: { code, message: 'Internal server error' } };

  const body: Record<string, HttpJsonValue> = { code, message: SAFE_MESSAGES[code]?.(source) ?? safeText(error.message) };
  for (const field of rule.fields) {
    const value = toJson(source[field]);
    if (value !== undefined) body[field] = value;
  }
  if (code === 'PROVIDER_ERROR') {
    const status = upstreamStatus(source);
    if (status !== undefined) body.providerStatus = status;
  }

  const headers: Record<string, string> = { 'content-type': 'application/json; charset=utf-8', 'cache-control': 'no-store' };
  if (rule.status === 402 && source.renewsAt instanceof Date && Number.isFinite(source.renewsAt.getTime())) {
    const now = options.now === undefined ? Date.now() : typeof options.now === 'number' ? options.now : options.now.getTime();
    headers['Retry-After'] = String(Math.max(0, Math.ceil((source.renewsAt.getTime() - now) / 1000)));
  }
  return { status: rule.status, headers, body: body as HttpErrorBody };
}

function upstreamStatus(error: Record<string, unknown>): number | undefined {
  const own = error.status;
  if (typeof own === 'number' && Number.isInteger(own)) return own;
  const cause = error.cause;
  if (typeof cause === 'object' && cause !== null) {
    const status = (cause as Record<string, unknown>).status;
    if (typeof status === 'number' && Number.isInteger(status)) return status;
  }
  return undefined;
}

function safeText(text: unknown): string {
  return typeof text === 'string' ? text.slice(0, 1000) : 'Error';
}

/** Public field values only: strings, numbers, booleans, amounts, dates, and plain lists of them. */
function toJson(value: unknown, depth = 0): HttpJsonValue | undefined {
  if (value === null) return null;
  if (typeof value === 'string') return value.slice(0, 1000);
  if (typeof value === 'number') return Number.isFinite(value) ? value : String(value);
  if (typeof value === 'boolean') return value;
  if (value instanceof Date) return Number.isFinite(value.getTime()) ? value.toISOString() : null;
  if (isDecimal(value)) return String(value);
  if (depth > 2 || typeof value !== 'object') return undefined;
  if (Array.isArray(value)) {
    const items: HttpJsonValue[] = [];
    for (const item of value.slice(0, 100)) {
      const json = toJson(item, depth + 1);
      if (json !== undefined) items.push(json);
    }
    return items;
  }
  if (Object.getPrototypeOf(value) !== Object.prototype && Object.getPrototypeOf(value) !== null) return undefined;
  const out: Record<string, HttpJsonValue> = {};
  for (const [key, item] of Object.entries(value)) {
    const json = toJson(item, depth + 1);
    if (json !== undefined) out[key] = json;
  }
  return out;
}

function isDecimal(value: unknown): boolean {
  if (Decimal.isDecimal(value)) return true;
  // A Decimal from another copy of decimal.js.
  return (
    typeof value === 'object' &&
    value !== null &&
    (value as { constructor?: { name?: string } }).constructor?.name === 'Decimal' &&
    typeof (value as { toFixed?: unknown }).toFixed === 'function'
  );
}

/**
 * Keeping BYO keys out of everything a caller can see.
 *
 * A provider error is a foreign object: SDK errors carry the request they failed on (headers
 * with `Authorization: Bearer <key>`, a config with `apiKey`), nested responses, cause chains,
 * `Headers`, `Map`s, symbol-keyed and non-enumerable fields, getters that throw. Searching such
 * an object for a key can always miss a place, so nothing here searches: a provider error is
 * *copied* into a fresh error holding only a few primitive fields, each redacted. The original
 * object, its cause chain and everything else it references are dropped.
 */

/** What replaces a key (or a part of one) in a scrubbed text. */
export const REDACTED = '[redacted]';

/** Longest `message` kept in a scrubbed error; longer text is cut (after redaction). */
export const MAX_SCRUBBED_MESSAGE = 4000;
// Only this much of a text is read: a provider may echo a whole response body.
const MAX_SCANNED = 16_000;
const MAX_FIELD = 200;
/**
 * A run of this many characters of a key (case-insensitively) is redacted wherever it
 * appears, so a truncated, split or re-cased key (`sk-abc…`) does not survive either. A key
 * shorter than this is redacted only whole.
 */
const FRAGMENT = 12;

/**
 * The fields a host needs from a provider error, copied and redacted. It is an `Error`
 * (so loggers and `instanceof Error` keep working) with no cause, no stack frames and
 * no other properties.
 */
export interface ScrubbedProviderError extends Error {
  /** The original `name` when it was a string, else `Error`. */
  readonly name: string;
  /** The original `message`, stringified, with every key replaced by `[redacted]`. */
  readonly message: string;
  /** The HTTP status (`status`, or `statusCode`), when it was a number or a string. */
  readonly status?: number | string;
  /** The provider's error code, when it was a number or a string. */
  readonly code?: number | string;
  /** The provider's error type (`invalid_request_error`, ...), when it was a string. */
  readonly type?: string;
}

/**
 * Copies what a host needs from a provider error (`name`, `message`, `status`, `code`,
 * `type`) into a fresh, frozen `Error`, with every secret in `secrets` (and its URL-encoded,
 * JSON-escaped and base64 forms, and any run of 12 of its characters) replaced by
 * `[redacted]`. Never returns or references the original object, and never throws: a
 * throwing getter, a revoked proxy or a non-string `message` yields a safe placeholder.
 *
 * @example
 * ```ts
 * const safe = scrubProviderError(error, [apiKey]);
 * // safe.message === 'Incorrect API key provided: [redacted]', safe.status === 401
 * ```
 */
export function scrubProviderError(error: unknown, secrets: readonly (string | undefined)[] = []): ScrubbedProviderError {
  const redact = redactor(secrets);
  const fields = readFields(error);
  const name = fields.name === undefined ? 'Error' : cut(redact(fields.name), MAX_FIELD);
  const message = cut(redact(fields.message), MAX_SCRUBBED_MESSAGE);
  const copy = new Error(message) as Error & Record<string, unknown>;
  // Not enumerable, like a native error's name (so it compares and serializes like one).
  Object.defineProperty(copy, 'name', { value: name, writable: true, configurable: true, enumerable: false });
  // The frames would be this library's, not the provider's: keep only the first line.
  copy.stack = `${name}: ${message}`;
  const status = primitive(fields.status, redact);
  const code = primitive(fields.code, redact);
  const type = primitive(fields.type, redact);
  if (status !== undefined) copy.status = status;
  if (code !== undefined) copy.code = code;
  if (type !== undefined) copy.type = typeof type === 'string' ? type : String(type);
  return Object.freeze(copy) as ScrubbedProviderError;
}

/**
 * Turns any thrown value into a fresh `Error` safe to hand to a host or a log: `name`,
 * `message`, `status`, `code` and `type` copied and redacted as in {@link scrubProviderError},
 * plus the original stack frames, redacted too (a host debugging its own handler needs
 * them). No cause, no other property. For paths that surface a foreign error without a
 * `ProviderError` around it (an event handler's error, an unmetered fallback).
 */
export function scrubError(error: unknown, secrets: readonly (string | undefined)[] = []): Error {
  const scrubbed = scrubProviderError(error, secrets);
  const copy = new Error(scrubbed.message) as Error & Record<string, unknown>;
  Object.defineProperty(copy, 'name', { value: scrubbed.name, writable: true, configurable: true, enumerable: false });
  for (const key of ['status', 'code', 'type'] as const) {
    if (scrubbed[key] !== undefined) copy[key] = scrubbed[key];
  }
  const stack = read(error, 'stack');
  copy.stack = typeof stack === 'string' ? cut(redactor(secrets)(stack), MAX_SCANNED) : `${scrubbed.name}: ${scrubbed.message}`;
  return copy;
}

/**
 * `text` with every secret (whole, URL-encoded, JSON-escaped, base64, or any run of 12 of
 * its characters, ignoring case) replaced by `[redacted]`. Empty and missing secrets are
 * ignored.
 */
export function redactText(text: string, secrets: readonly (string | undefined)[]): string {
  return redactor(secrets)(text);
}

/**
 * @deprecated Use {@link scrubProviderError}. Kept so existing callers keep compiling;
 * it now always returns a scrubbed copy, never `error` itself.
 */
export function redactSecret(error: unknown, secret: string | undefined): unknown {
  return scrubProviderError(error, [secret]);
}

// ─── reading a hostile object ────────────────────────────────────────────

interface RawFields {
  name: string | undefined;
  message: string;
  status: unknown;
  code: unknown;
  type: unknown;
}

function readFields(error: unknown): RawFields {
  if (typeof error !== 'object' && typeof error !== 'function') {
    return { name: undefined, message: error === undefined ? '' : safeString(error), status: undefined, code: undefined, type: undefined };
  }
  if (error === null) return { name: undefined, message: 'null', status: undefined, code: undefined, type: undefined };
  const name = read(error, 'name');
  const message = read(error, 'message', UNREADABLE);
  const status = read(error, 'status');
  return {
    name: typeof name === 'string' ? name : undefined,
    message: message === UNREADABLE ? '(the error message could not be read)' : message === undefined ? '' : safeString(message),
    status: status === undefined ? read(error, 'statusCode') : status,
    code: read(error, 'code'),
    type: read(error, 'type'),
  };
}

const UNREADABLE = Symbol('unreadable');

/** One property read that never throws (getters, proxies, revoked proxies). */
function read(target: unknown, key: string, onThrow: unknown = undefined): unknown {
  try {
    return Reflect.get(target as object, key);
  } catch {
    return onThrow;
  }
}

/** A text for any value, never calling a method that could throw or loop. */
function safeString(value: unknown): string {
  switch (typeof value) {
    case 'string':
      return value;
    case 'number':
    case 'boolean':
    case 'bigint':
    case 'undefined':
      return String(value);
    case 'symbol':
      return value.description ?? '';
    default:
      // An object message: its JSON, when it has one (the redactor runs on the result).
      try {
        const json = JSON.stringify(value);
        return typeof json === 'string' ? json : '(a non-string message)';
      } catch {
        return '(a non-string message)';
      }
  }
}

/** A status, code or type worth keeping: a finite number, or a short redacted text. */
function primitive(value: unknown, redact: (text: string) => string): number | string | undefined {
  if (typeof value === 'number') return Number.isFinite(value) ? value : undefined;
  if (typeof value === 'string' || typeof value === 'boolean' || typeof value === 'bigint') {
    return cut(redact(String(value)), MAX_FIELD);
  }
  return undefined;
}

function cut(text: string, max: number): string {
  return text.length <= max ? text : `${text.slice(0, max)}…`;
}

// ─── redaction ───────────────────────────────────────────────────────────

/** The forms a key takes in the wild: as is, in a URL, in JSON, in a Basic header. */
function formsOf(secret: string): string[] {
  const forms = new Set([secret]);
  try {
    forms.add(encodeURIComponent(secret));
    forms.add(encodeURI(secret));
  } catch {
    // A lone surrogate cannot be URL-encoded; the raw form still is redacted.
  }
  forms.add(JSON.stringify(secret).slice(1, -1));
  // Base64 (Basic auth, encoded configs) at each of the three byte alignments a key can
  // have inside a longer text; only the characters that depend on the key alone are kept.
  const bytes = new TextEncoder().encode(secret);
  for (let pad = 0; pad < 3; pad++) {
    let binary = '\0'.repeat(pad);
    for (const byte of bytes) binary += String.fromCharCode(byte);
    const base64 = btoa(binary);
    const end = Math.floor((pad + bytes.length) / 3) * 4;
    forms.add(base64.slice(pad === 0 ? 0 : 4, end));
  }
  return [...forms].filter((form) => form.length > 0);
}

function redactor(secrets: readonly (string | undefined)[]): (text: string) => string {
  const windows = new Map<number, Set<string>>();
  for (const secret of secrets) {
    if (typeof secret !== 'string' || secret.length === 0) continue;
    // Only MAX_SCANNED characters of a text are read, so a longer secret cannot appear whole.
    for (const form of formsOf(secret.slice(0, MAX_SCANNED))) {
      const width = Math.min(form.length, FRAGMENT);
      const set = windows.get(width) ?? new Set<string>();
      const lower = foldCase(form);
      for (let i = 0; i + width <= lower.length; i++) set.add(lower.slice(i, i + width));
      windows.set(width, set);
    }
  }
  if (windows.size === 0) return (text) => text;
  return (text) => {
    const scanned = text.length > MAX_SCANNED ? text.slice(0, MAX_SCANNED) : text;
    const haystack = foldCase(scanned);
    const hidden = new Uint8Array(scanned.length);
    let found = false;
    for (const [width, set] of windows) {
      for (let i = 0; i + width <= haystack.length; i++) {
        if (set.has(haystack.slice(i, i + width))) {
          hidden.fill(1, i, i + width);
          found = true;
        }
      }
    }
    if (!found) return scanned;
    let out = '';
    for (let i = 0; i < scanned.length; i++) {
      if (hidden[i] === 0) out += scanned[i];
      else if (i === 0 || hidden[i - 1] === 0) out += REDACTED;
    }
    return out;
  };
}

/** Lower case, one UTF-16 unit for one, so positions in the result are positions in `text`. */
function foldCase(text: string): string {
  let out = '';
  for (let i = 0; i < text.length; i++) {
    const unit = text[i] as string;
    const lower = unit.toLowerCase();
    out += lower.length === 1 ? lower : unit;
  }
  return out;
}

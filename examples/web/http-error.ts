/**
 * Maps a thrown error to an HTTP answer. Uses the library's `toHttpError` when the library
 * root exports one; until then, this small stand-in with the same shape: 402 with
 * `Retry-After` (whole seconds until the renewal, counted from `now`) for INSUFFICIENT_CREDITS.
 */
import * as library from '../../src/index.js';
import { CreditsError } from '../../src/index.js';

/** An error as an HTTP status, headers and JSON body. */
export interface HttpErrorAnswer {
  status: number;
  headers: Record<string, string>;
  body: { code: string; message: string; [key: string]: unknown };
}

const STATUS: Readonly<Record<string, number>> = {
  INSUFFICIENT_CREDITS: 402,
  INVALID_INPUT: 400,
  UNKNOWN_MODEL: 400,
  UNKNOWN_PLAN: 400,
  WORKSPACE_NOT_FOUND: 404,
  WORKSPACE_EXISTS: 409,
  IDEMPOTENCY_CONFLICT: 409,
  REPLY_NOT_FOUND: 404,
  REPLY_IN_PROGRESS: 409,
  REPLY_RELEASED: 409,
  REPLY_SETTLED: 409,
  HOLD_EXPIRED: 409,
  PROVIDER_ERROR: 502,
  PROVIDER_NOT_FOUND: 500,
  STORAGE_ERROR: 503,
};

function fallbackToHttpError(error: unknown, options: { now?: Date } = {}): HttpErrorAnswer {
  if (!CreditsError.is(error)) {
    return { status: 500, headers: {}, body: { code: 'INTERNAL_ERROR', message: 'Something went wrong' } };
  }
  const status = STATUS[error.code] ?? 500;
  if (error instanceof library.InsufficientCreditsError) {
    return {
      status,
      headers: error.renewsAt
        ? { 'Retry-After': String(Math.max(0, Math.ceil((error.renewsAt.getTime() - (options.now ?? new Date()).getTime()) / 1000))) }
        : {},
      body: {
        code: error.code,
        message: error.message,
        model: error.model,
        required: error.required.toString(),
        available: error.available.toString(),
        ...(error.renewsAt && { renewsAt: error.renewsAt.toISOString() }),
      },
    };
  }
  return { status, headers: {}, body: { code: error.code, message: status >= 500 ? 'The service failed' : error.message } };
}

const fromLibrary: unknown = Reflect.get(library, 'toHttpError');

/** True when the library's own `toHttpError` is in use. */
export const usesLibraryToHttpError = typeof fromLibrary === 'function';

/** `toHttpError` from the library, or the stand-in above; `now` is the demo's simulated clock. */
export const toHttpError: (error: unknown, options?: { now?: Date }) => HttpErrorAnswer = usesLibraryToHttpError
  ? (fromLibrary as (error: unknown, options?: { now?: Date }) => HttpErrorAnswer)
  : fallbackToHttpError;

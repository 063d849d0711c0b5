import { Decimal } from 'decimal.js';
import { z } from 'zod';
import { InvalidInputError, type InputIssue } from './errors.js';

/** Longest id accepted (workspace, agent, conversation, reply, grant, model, plan). */
export const MAX_ID_LENGTH = 255;

const CONTROL_CHARACTERS = /[\u0000-\u001f\u007f]/;
// Names that would reach Object.prototype if an id ever became an object key.
const RESERVED_IDS = new Set(['__proto__', 'constructor', 'prototype']);

/** True for a usable id: 1–255 characters, no control characters, not a prototype key. */
export function isValidId(value: unknown): value is string {
  return (
    typeof value === 'string' &&
    value.length > 0 &&
    value.length <= MAX_ID_LENGTH &&
    !CONTROL_CHARACTERS.test(value) &&
    !RESERVED_IDS.has(value)
  );
}

/** The zod schema of every id. */
export const idSchema = z.custom<string>(isValidId, {
  message: `must be a non-empty string of at most ${MAX_ID_LENGTH} characters without control characters`,
});

/** An amount as accepted at the API; the exact checks happen in `toMicros`. */
export const creditsInputSchema = z.union([z.number(), z.string(), z.custom<Decimal>((v) => Decimal.isDecimal(v))], {
  message: 'must be a number, a decimal string or a Decimal',
});

/** A point in time: a `Date` or an ISO-8601 string, always read as an instant. */
export const instantSchema = z.union([z.date(), z.iso.datetime({ offset: true })]).transform((v, ctx) => {
  const date = typeof v === 'string' ? new Date(v) : v;
  if (Number.isNaN(date.getTime())) {
    ctx.addIssue({ code: 'custom', message: 'must be a valid date' });
    return z.NEVER;
  }
  return date;
});

/** Validates `input` against `schema`, throwing `INVALID_INPUT` naming the field. */
export function parseInput<T extends z.ZodType>(schema: T, input: unknown, root = ''): z.output<T> {
  const result = schema.safeParse(input);
  if (result.success) return result.data;
  throw new InvalidInputError(result.error.issues.map((issue) => toIssue(issue, root)));
}

function toIssue(issue: z.core.$ZodIssue, root: string): InputIssue {
  const path = [root, ...issue.path.map(String)].filter((part) => part !== '').join('.');
  return { path: path === '' ? '(input)' : path, message: issue.message };
}

import type { Decimal } from 'decimal.js';
import { z } from 'zod';
import { isDecimalValue } from './credits.js';
import { type InputIssue, InvalidInputError } from './errors.js';

/** Longest id accepted (workspace, agent, conversation, reply, grant, model, plan), in UTF-16 units. */
export const MAX_ID_LENGTH = 255;

/**
 * Characters no id or reason may contain: C0 controls (NUL included), DEL, C1 controls, the
 * Unicode line and paragraph separators, and unpaired surrogates (not encodable as UTF-8, so a
 * store would reject or mangle them: PostgreSQL refuses the JSON that carries one). Ids and
 * reasons end up in logs, SQL rows, Redis keys and dashboards, where these characters split
 * lines, truncate strings or hide text.
 */
// biome-ignore lint/suspicious/noControlCharactersInRegex: finding control characters is the point
const FORBIDDEN_IN_TEXT = /[\u0000-\u001f\u007f-\u009f\u2028\u2029]|[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/;

// The characters of FORBIDDEN_IN_TEXT, any surrogate included: a plain class is several times
// cheaper than its lookarounds, and almost every id has none of them.
// biome-ignore lint/suspicious/noControlCharactersInRegex: finding control characters is the point
const MAYBE_FORBIDDEN = /[\u0000-\u001f\u007f-\u009f\u2028\u2029\uD800-\uDFFF]/;

/** Names that reach `Object.prototype` when used as an object key; refused as ids and as input keys. */
export const PROTOTYPE_KEYS: ReadonlySet<string> = new Set(['__proto__', 'constructor', 'prototype']);

/**
 * True for a usable id: 1–255 characters, no control characters, separators or unpaired
 * surrogates, and not a prototype key (`__proto__`, `constructor`, `prototype`).
 */
export function isValidId(value: unknown): value is string {
  return (
    typeof value === 'string' &&
    value.length > 0 &&
    value.length <= MAX_ID_LENGTH &&
    !(MAYBE_FORBIDDEN.test(value) && FORBIDDEN_IN_TEXT.test(value)) &&
    !PROTOTYPE_KEYS.has(value)
  );
}

const FORBIDDEN_MESSAGE = 'must not contain control characters, line separators or unpaired surrogates';

/** What is wrong with an id, for the error message. */
export function describeBadId(value: unknown): string {
  if (typeof value !== 'string') return 'must be a string';
  if (value.length === 0) return 'must not be empty';
  if (value.length > MAX_ID_LENGTH) return `must be at most ${MAX_ID_LENGTH} characters`;
  if (FORBIDDEN_IN_TEXT.test(value)) return FORBIDDEN_MESSAGE;
  if (PROTOTYPE_KEYS.has(value)) return `must not be "${value}"`;
  return 'must be a valid id';
}

/** Free text a person wrote, such as a refund's reason: 1–`max` characters, none that an id may not hold either. */
export const textSchema = (max: number, empty: string) =>
  z
    .string()
    .min(1, empty)
    .max(max)
    .refine((text) => !FORBIDDEN_IN_TEXT.test(text), FORBIDDEN_MESSAGE);

/** The zod schema of every id. */
export const idSchema = z.custom<string>(isValidId, {
  error: (issue) => describeBadId(issue.input),
});

/** An amount as accepted at the API; the exact checks happen in `toMicros`. */
export const creditsInputSchema = z.union([z.number(), z.string(), z.custom<Decimal>(isDecimalValue)], {
  error: 'must be a number, a decimal string or a Decimal',
});

/** Earliest instant accepted: the Unix epoch. */
export const MIN_INSTANT = Date.UTC(1970, 0, 1);
/** Latest instant accepted: the end of year 9999 (what every store's date type can hold). */
export const MAX_INSTANT = Date.UTC(9999, 11, 31, 23, 59, 59, 999);

/**
 * A point in time: a `Date` or an ISO-8601 string with an offset (`Z` or `±hh:mm`), always
 * read as an instant, between 1970-01-01 and 9999-12-31 (UTC).
 */
export const instantSchema = z
  .union(
    [
      z.date({ error: 'must be a valid Date' }),
      z.iso.datetime({ offset: true, error: 'must be a Date or an ISO-8601 date-time with an offset' }),
    ],
    {
      error: 'must be a Date or an ISO-8601 date-time with an offset',
    },
  )
  .transform((v, ctx) => {
    const date = typeof v === 'string' ? new Date(v) : new Date(v.getTime());
    const ms = date.getTime();
    if (Number.isNaN(ms)) {
      ctx.addIssue({ code: 'custom', message: 'must be a valid date' });
      return z.NEVER;
    }
    if (ms < MIN_INSTANT || ms > MAX_INSTANT) {
      ctx.addIssue({ code: 'custom', message: 'must be between 1970-01-01 and 9999-12-31' });
      return z.NEVER;
    }
    return date;
  });

/**
 * Validates `input` against `schema`, throwing `INVALID_INPUT` naming the field. Object
 * schemas should be strict (`z.strictObject`): an unknown key is then reported under its
 * own path, with a hint when it is close to a known one (`replyID` → `replyId`).
 */
export function parseInput<T extends z.ZodType>(schema: T, input: unknown, root = ''): z.output<T> {
  let result: z.ZodSafeParseResult<z.output<T>>;
  try {
    result = schema.safeParse(input) as z.ZodSafeParseResult<z.output<T>>;
  } catch {
    // A getter or a proxy trap threw while zod read the input.
    throw new InvalidInputError([{ path: joinPath(root, []), message: 'could not be read: a getter or proxy threw' }]);
  }
  if (result.success) return result.data;
  throw new InvalidInputError(result.error.issues.flatMap((issue) => toIssues(issue, schema, root)));
}

/**
 * The fast paths' check for unknown keys: throws `INVALID_INPUT` naming the first own key of
 * `input` that is not in `known` (with a hint), as a strict zod object would.
 */
export function refuseUnknownKeys(input: object, known: ReadonlySet<string>, root = ''): void {
  for (const key of Object.keys(input)) {
    if (!known.has(key)) throw new InvalidInputError([unknownKeyIssue(joinPath(root, [key]), key, known)]);
  }
}

/**
 * The known key closest to `key`: equal ignoring case, or at most 2 edits away (and at most
 * a third of its length, so short keys do not match everything).
 */
export function closestKey(key: string, known: Iterable<string>): string | undefined {
  const lower = key.toLowerCase();
  let best: string | undefined;
  let bestDistance = Number.POSITIVE_INFINITY;
  for (const candidate of known) {
    const other = candidate.toLowerCase();
    if (other === lower) return candidate;
    if (Math.abs(other.length - lower.length) > 2) continue;
    const distance = editDistance(lower, other);
    const limit = Math.min(2, Math.floor(Math.max(lower.length, other.length) / 3));
    if (distance <= limit && distance < bestDistance) {
      best = candidate;
      bestDistance = distance;
    }
  }
  return best;
}

/** The issue of a key that is not a field: names it, with a hint when it is close to a known one. */
export function unknownKeyIssue(path: string, key: string, known: Iterable<string>): InputIssue {
  if (PROTOTYPE_KEYS.has(key)) return { path, message: 'is not allowed: a prototype key' };
  const hint = closestKey(key, known);
  return { path, message: hint === undefined ? 'is not a known field' : `is not a known field; did you mean "${hint}"?` };
}

function toIssues(issue: z.core.$ZodIssue, schema: z.ZodType, root: string): InputIssue[] {
  if (issue.code === 'unrecognized_keys') {
    const known = knownKeysAt(schema, issue.path);
    return issue.keys.map((key) => unknownKeyIssue(joinPath(root, [...issue.path, key]), key, known));
  }
  return [{ path: joinPath(root, issue.path), message: issue.message }];
}

function joinPath(root: string, path: readonly PropertyKey[]): string {
  const joined = [root, ...path.map(String)].filter((part) => part !== '').join('.');
  return joined === '' ? '(input)' : joined;
}

/** The keys of the object schema found by following `path` from `schema` (for hints). */
function knownKeysAt(schema: z.ZodType, path: readonly PropertyKey[]): string[] {
  let current: z.core.$ZodType | undefined = unwrap(schema);
  for (const part of path) {
    if (!current) return [];
    const def = current._zod.def as { type: string; shape?: Record<string, z.core.$ZodType>; element?: z.core.$ZodType };
    if (def.type === 'object' && def.shape && typeof part === 'string') current = unwrap(def.shape[part]);
    else if (def.type === 'array' && def.element) current = unwrap(def.element);
    else return [];
  }
  const def = current?._zod.def as { type?: string; shape?: Record<string, unknown> } | undefined;
  return def?.type === 'object' && def.shape ? Object.keys(def.shape) : [];
}

function unwrap(schema: z.core.$ZodType | undefined): z.core.$ZodType | undefined {
  let current = schema;
  for (let i = 0; current && i < 16; i++) {
    const def = current._zod.def as { type: string; innerType?: z.core.$ZodType; in?: z.core.$ZodType };
    if ((def.type === 'optional' || def.type === 'nullable' || def.type === 'default' || def.type === 'readonly') && def.innerType) {
      current = def.innerType;
    } else if (def.type === 'pipe' && def.in) {
      current = def.in;
    } else {
      return current;
    }
  }
  return current;
}

/** Optimal string alignment distance (Levenshtein with adjacent transpositions). */
function editDistance(a: string, b: string): number {
  const rows = a.length + 1;
  const cols = b.length + 1;
  const d: number[][] = Array.from({ length: rows }, (_, i) => Array.from({ length: cols }, (_, j) => (i === 0 ? j : j === 0 ? i : 0)));
  for (let i = 1; i < rows; i++) {
    for (let j = 1; j < cols; j++) {
      const cost = a[i - 1] === b[j - 1] ? 0 : 1;
      const row = d[i] as number[];
      const prev = d[i - 1] as number[];
      let best = Math.min((prev[j] as number) + 1, (row[j - 1] as number) + 1, (prev[j - 1] as number) + cost);
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1]) {
        best = Math.min(best, ((d[i - 2] as number[])[j - 2] as number) + 1);
      }
      row[j] = best;
    }
  }
  return (d[rows - 1] as number[])[cols - 1] as number;
}

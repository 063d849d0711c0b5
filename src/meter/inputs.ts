/**
 * The shapes every public method of the meter accepts. Every object is strict: an unknown
 * key is refused with `INVALID_INPUT` naming it (`replyID` → "did you mean replyId?"),
 * because a silently dropped key changes behaviour without a word (a typo in `replyId`
 * loses idempotency, one in `expiresAt` makes a top-up that never expires).
 */
import { z } from 'zod';
import { InvalidInputError } from '../core/errors.js';
import { creditsInputSchema, idSchema, instantSchema, isValidId, parseInput, refuseUnknownKeys } from '../core/validation.js';
import type { ReplyProvider } from './provider.js';
import type { ReplyIdentity, ReplyInput, ReplyRef, SettleInput } from './types.js';

const identity = {
  workspaceId: idSchema,
  agentId: idSchema,
  conversationId: idSchema,
  model: idSchema,
  replyId: idSchema.optional(),
};

function readable(read: () => boolean): boolean {
  try {
    return read();
  } catch {
    return false;
  }
}

const abortSignal = z.custom<AbortSignal>(
  (v) =>
    readable(() => {
      const signal = v as AbortSignal;
      return (
        typeof v === 'object' &&
        v !== null &&
        typeof signal.aborted === 'boolean' &&
        typeof signal.throwIfAborted === 'function' &&
        typeof signal.addEventListener === 'function'
      );
    }),
  { error: 'must be an AbortSignal' },
);

/** True for an object with a `generate` function and, if present, a `stream` function. */
export function isReplyProvider(value: unknown): value is ReplyProvider {
  return readable(() => {
    if (typeof value !== 'object' || value === null) return false;
    const provider = value as { generate?: unknown; stream?: unknown };
    return typeof provider.generate === 'function' && (provider.stream === undefined || typeof provider.stream === 'function');
  });
}

const providerSchema = z.custom<ReplyProvider>(isReplyProvider, {
  error: 'must be a provider: an object with a generate() function and optionally a stream() function',
});

/** An instant range [from, to): `to` must not be before `from`. */
function rangeRefinement(value: { from?: unknown; to?: unknown }): boolean {
  // zod may run this on an object whose fields failed already: compare only real dates.
  const { from, to } = value;
  return !(from instanceof Date && to instanceof Date) || to.getTime() >= from.getTime();
}
const rangeIssue = { path: ['to'], error: 'must not be before from' };

export const createWorkspaceSchema = z.strictObject({
  workspaceId: idSchema,
  plan: idSchema,
  allotment: creditsInputSchema.optional(),
  startsAt: instantSchema.optional(),
});
export const workspaceIdSchema = idSchema;
// A quote takes the reply's whole identity, so the object a host reserves with can be quoted first.
export const quoteSchema = z.strictObject({
  workspaceId: idSchema,
  model: idSchema,
  agentId: idSchema.optional(),
  conversationId: idSchema.optional(),
  replyId: idSchema.optional(),
});
export const reserveSchema = z.strictObject(identity);
export const replySchema = z.strictObject({
  ...identity,
  // Passed to the provider untouched; may be absent (the provider then gets undefined).
  input: z.unknown().optional(),
  signal: abortSignal.optional(),
  /** A provider for this reply only, instead of the one registered for the model's provider id. */
  provider: providerSchema.optional(),
});
/** `release` (and `extend`): a reply of a workspace. */
export const replyRefSchema = z.strictObject({ workspaceId: idSchema, replyId: idSchema });
/** `extend({ workspaceId, replyId })`: keep a hold alive. */
export const extendSchema = replyRefSchema;
/** A count of tokens: a whole number from 0 to 2^53 - 1. */
const tokenCount = z.number().int().min(0).max(Number.MAX_SAFE_INTEGER);
/** Token counts a provider reported. */
export const tokenUsageSchema = z.strictObject({ inputTokens: tokenCount.optional(), outputTokens: tokenCount.optional() });
/**
 * `settle({ workspaceId, replyId, model?, usage? })`: `model` is the one that produced the
 * reply, when it differs; `usage` the token counts kept on the ledger row.
 */
export const settleSchema = z.strictObject({
  workspaceId: idSchema,
  replyId: idSchema,
  model: idSchema.optional(),
  usage: tokenUsageSchema.optional(),
});
export const changePlanSchema = z.strictObject({
  workspaceId: idSchema,
  plan: idSchema,
  allotment: creditsInputSchema.optional(),
});
export const addCreditsSchema = z.strictObject({
  workspaceId: idSchema,
  credits: creditsInputSchema,
  grantId: idSchema,
  expiresAt: instantSchema.optional(),
});
export const ledgerSchema = z
  .strictObject({
    workspaceId: idSchema,
    from: instantSchema.optional(),
    to: instantSchema.optional(),
    agentId: idSchema.optional(),
    limit: z.number().int().min(1).max(1000).optional(),
    cursor: z
      .string()
      .regex(/^\d{1,20}$/, 'must be a cursor returned by ledger()')
      .optional(),
  })
  .refine(rangeRefinement, rangeIssue);
export const usageSchema = z
  .strictObject({
    workspaceId: idSchema,
    from: instantSchema,
    to: instantSchema,
    groupBy: z.enum(['agent', 'model', 'conversation']),
    interval: z.enum(['day', 'week', 'month']).optional(),
  })
  .refine(rangeRefinement, rangeIssue);

const IDENTITY_KEYS: ReadonlySet<string> = new Set(Object.keys(identity));
const REPLY_KEYS: ReadonlySet<string> = new Set(Object.keys(replySchema.shape));
const REPLY_REF_KEYS: ReadonlySet<string> = new Set(Object.keys(replyRefSchema.shape));

/** A reply's input as the meter uses it: a fresh object, every field read once. */
export type ParsedReplyInput = ReplyInput & { provider?: ReplyProvider };

/**
 * Reads a reply's ids once into a fresh object when every one is plainly valid and no key is
 * unknown, skipping zod on the hot path; otherwise (or when a getter throws) returns undefined
 * and zod produces the error.
 */
function fastIdentity(input: unknown, known: ReadonlySet<string>): ReplyIdentity | undefined {
  if (typeof input !== 'object' || input === null) return undefined;
  try {
    const source = input as Record<string, unknown>;
    const workspaceId = source.workspaceId;
    const agentId = source.agentId;
    const conversationId = source.conversationId;
    const model = source.model;
    const replyId = source.replyId;
    if (!isValidId(workspaceId) || !isValidId(agentId) || !isValidId(conversationId) || !isValidId(model)) return undefined;
    if (replyId !== undefined && !isValidId(replyId)) return undefined;
    for (const key of Object.keys(source)) if (!known.has(key)) return undefined;
    return replyId === undefined
      ? { workspaceId, agentId, conversationId, model }
      : { workspaceId, agentId, conversationId, model, replyId };
  } catch {
    return undefined;
  }
}

/**
 * The hot path's check of a reply's ids. Serves both `reply` and `reserve` in the meter of
 * today, so it accepts the keys of a reply (`input`, `signal`, `provider`) and refuses any
 * other; prefer {@link parseReserveInput} and {@link parseReplyInput}, which are exact.
 */
export function parseIdentity(input: ReplyIdentity): ReplyIdentity {
  const fast = fastIdentity(input, REPLY_KEYS);
  if (
    fast &&
    readable(() => (input as Partial<ParsedReplyInput>).signal === undefined && (input as Partial<ParsedReplyInput>).provider === undefined)
  ) {
    return fast;
  }
  return parseInput(replySchema, input) as ReplyIdentity;
}

/** `reserve`'s input: a reply's ids, and nothing else. */
export function parseReserveInput(input: ReplyIdentity): ReplyIdentity {
  return fastIdentity(input, IDENTITY_KEYS) ?? (parseInput(reserveSchema, input) as ReplyIdentity);
}

/**
 * `reply` and `replyStream`'s input: a reply's ids, the host's `input` (untouched), an
 * optional `signal` and an optional per-call `provider`. Returns a fresh object.
 */
export function parseReplyInput(input: ReplyInput): ParsedReplyInput {
  const fast = fastIdentity(input, REPLY_KEYS);
  if (fast) {
    try {
      const source = input as Partial<ParsedReplyInput>;
      if (source.signal === undefined && source.provider === undefined) {
        const parsed = fast as ParsedReplyInput;
        parsed.input = source.input;
        return parsed;
      }
    } catch {
      // A throwing getter: zod reports it below.
    }
  }
  return parseInput(replySchema, input) as ParsedReplyInput;
}

/** `release`'s (and `extend`'s) input: `{ workspaceId, replyId }`, nothing else. */
export function parseReplyRef(input: ReplyRef): ReplyRef {
  try {
    if (typeof input === 'object' && input !== null) {
      const { workspaceId, replyId } = input as Partial<ReplyRef>;
      if (isValidId(workspaceId) && isValidId(replyId)) {
        refuseUnknownKeys(input, REPLY_REF_KEYS);
        return { workspaceId, replyId };
      }
    }
  } catch (error) {
    if (error instanceof InvalidInputError) throw error;
  }
  return parseInput(replyRefSchema, input);
}

const SETTLE_KEYS: ReadonlySet<string> = new Set(Object.keys(settleSchema.shape));

/** `settle`'s input: `{ workspaceId, replyId, model?, usage? }`, as a fresh object. */
export function parseSettleInput(input: SettleInput): SettleInput {
  return fastSettle(input) ?? (parseInput(settleSchema, input) as SettleInput);
}

/**
 * The hot path of {@link parseSettleInput}: plainly valid ids, no `usage` and no unknown key,
 * read once into a fresh object. Anything else (or a getter that throws) returns undefined, and
 * zod produces the error.
 */
function fastSettle(input: unknown): SettleInput | undefined {
  try {
    if (typeof input !== 'object' || input === null) return undefined;
    const { workspaceId, replyId, model, usage } = input as Partial<SettleInput>;
    if (!isValidId(workspaceId) || !isValidId(replyId) || (model !== undefined && !isValidId(model)) || usage !== undefined)
      return undefined;
    for (const key of Object.keys(input)) if (!SETTLE_KEYS.has(key)) return undefined;
    return model === undefined ? { workspaceId, replyId } : { workspaceId, replyId, model };
  } catch {
    return undefined;
  }
}

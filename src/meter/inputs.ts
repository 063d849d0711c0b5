import { z } from 'zod';
import { creditsInputSchema, idSchema, instantSchema, isValidId, parseInput } from '../core/validation.js';
import type { ReplyIdentity, ReplyRef } from './types.js';

const identity = {
  workspaceId: idSchema,
  agentId: idSchema,
  conversationId: idSchema,
  model: idSchema,
  replyId: idSchema.optional(),
};

const abortSignal = z.custom<AbortSignal>(
  (v) => typeof v === 'object' && v !== null && typeof (v as AbortSignal).aborted === 'boolean',
  { message: 'must be an AbortSignal' },
);

export const createWorkspaceSchema = z.object({
  workspaceId: idSchema,
  plan: idSchema,
  allotment: creditsInputSchema.optional(),
  startsAt: instantSchema.optional(),
});
export const workspaceIdSchema = idSchema;
export const quoteSchema = z.object({ workspaceId: idSchema, model: idSchema });
export const reserveSchema = z.object(identity);
export const replySchema = z.object({ ...identity, input: z.unknown(), signal: abortSignal.optional() });
export const replyRefSchema = z.object({ workspaceId: idSchema, replyId: idSchema });
export const changePlanSchema = z.object({
  workspaceId: idSchema,
  plan: idSchema,
  allotment: creditsInputSchema.optional(),
});
export const addCreditsSchema = z.object({
  workspaceId: idSchema,
  credits: creditsInputSchema,
  grantId: idSchema,
  expiresAt: instantSchema.optional(),
});
export const ledgerSchema = z.object({
  workspaceId: idSchema,
  from: instantSchema.optional(),
  to: instantSchema.optional(),
  agentId: idSchema.optional(),
  limit: z.number().int().min(1).max(1000).optional(),
  cursor: z.string().regex(/^\d{1,20}$/, 'must be a cursor returned by ledger()').optional(),
});
export const usageSchema = z.object({
  workspaceId: idSchema,
  from: instantSchema,
  to: instantSchema,
  groupBy: z.enum(['agent', 'model', 'conversation']),
  interval: z.enum(['day', 'week', 'month']).optional(),
});

/**
 * The hot path's check of a reply's ids: when every id is plainly valid the zod parse is
 * skipped (it accepts exactly the same values); otherwise zod produces the error.
 */
export function parseIdentity(input: ReplyIdentity): ReplyIdentity {
  if (
    typeof input === 'object' &&
    input !== null &&
    isValidId(input.workspaceId) &&
    isValidId(input.agentId) &&
    isValidId(input.conversationId) &&
    isValidId(input.model) &&
    (input.replyId === undefined || isValidId(input.replyId))
  ) {
    return input;
  }
  return parseInput(reserveSchema, input) as ReplyIdentity;
}

/** The same fast check for settle and release. */
export function parseReplyRef(input: ReplyRef): ReplyRef {
  if (typeof input === 'object' && input !== null && isValidId(input.workspaceId) && isValidId(input.replyId)) return input;
  return parseInput(replyRefSchema, input);
}

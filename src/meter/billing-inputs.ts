/** The shapes of the billing operations: refunds, adjustments, agent caps and recharges. Strict, like every input. */
import { Decimal } from 'decimal.js';
import { z } from 'zod';
import { toMicros } from '../core/credits.js';
import { creditsInputSchema, idSchema, instantSchema, textSchema } from '../core/validation.js';

// A control character in a reason would end up in every export and page that shows it.
const reasonSchema = textSchema(500, 'must say why');

export const refundSchema = z.strictObject({
  workspaceId: idSchema,
  replyId: idSchema,
  refundId: idSchema,
  reason: reasonSchema,
  credits: creditsInputSchema.optional(),
});

export const adjustSchema = z.strictObject({
  workspaceId: idSchema,
  adjustmentId: idSchema,
  reason: reasonSchema,
  credits: creditsInputSchema,
  expiresAt: instantSchema.optional(),
});

export const agentLimitSchema = z.strictObject({
  workspaceId: idSchema,
  agentId: idSchema,
  credits: creditsInputSchema.nullable(),
  models: z.array(idSchema).max(1000).nullable().optional(),
});

export const rechargeSchema = z.strictObject({
  workspaceId: idSchema,
  recharge: z.strictObject({ below: creditsInputSchema, credits: creditsInputSchema }).nullable(),
});

export const deleteWorkspaceSchema = z.strictObject({ workspaceId: idSchema, keepLedger: z.boolean().optional() });

export const listWorkspacesSchema = z.strictObject({ cursor: idSchema.optional(), limit: z.number().int().min(1).max(1000).optional() });

/** Micro-credits of a signed amount: the same rules as {@link toMicros}, either sign. */
export function toSignedMicros(value: number | string | Decimal, field: string): number {
  const negative =
    typeof value === 'number'
      ? value < 0
      : typeof value === 'string'
        ? value.trim().startsWith('-')
        : Decimal.isDecimal(value) && value.isNegative();
  if (!negative) return toMicros(value, field);
  const magnitude = typeof value === 'number' ? -value : typeof value === 'string' ? value.trim().slice(1) : value.negated();
  return -toMicros(magnitude, field);
}

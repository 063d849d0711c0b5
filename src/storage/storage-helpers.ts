import type { Allocation, GrantRecord, LedgerKind, LedgerRow, LedgerRowInput, ReplyRecord, WorkspaceRecord } from './storage.js';

/** Milliseconds in a UTC day. */
export const DAY_MS = 86_400_000;

/**
 * The spending order of grants: soonest-expiring first, never-expiring last, then
 * oldest first, then by id. Every store spends in this order.
 */
export function compareGrants(a: GrantRecord, b: GrantRecord): number {
  const ae = a.expiresAt ?? Number.POSITIVE_INFINITY;
  const be = b.expiresAt ?? Number.POSITIVE_INFINITY;
  if (ae !== be) return ae < be ? -1 : 1;
  if (a.createdAt !== b.createdAt) return a.createdAt - b.createdAt;
  return a.grantId < b.grantId ? -1 : a.grantId > b.grantId ? 1 : 0;
}

/** A ledger row of `kind` with every optional column empty. */
export function ledgerRowInput(workspaceId: string, kind: LedgerKind, amount: number, at: number): LedgerRowInput {
  return {
    workspaceId,
    kind,
    amount,
    at,
    replyId: null,
    agentId: null,
    conversationId: null,
    model: null,
    route: null,
    priceVersion: null,
    grantId: null,
    plan: null,
  };
}

/** The `reply` row that settling `reply` appends: −amount, and 0 (never −0) for a free reply. */
export function chargeRow(id: string, reply: ReplyRecord, at: number): LedgerRow {
  // One literal: a store writes this row once per charged reply.
  return {
    id,
    workspaceId: reply.workspaceId,
    kind: 'reply',
    amount: 0 - reply.amount,
    at,
    replyId: reply.replyId,
    agentId: reply.agentId,
    conversationId: reply.conversationId,
    model: reply.model,
    route: reply.route,
    priceVersion: reply.priceVersion,
    grantId: null,
    plan: null,
  };
}

/** {@link chargeRow} before the store gives it an id. */
export function replyChargeRow(reply: ReplyRecord, at: number): LedgerRowInput {
  const { id: _id, ...row } = chargeRow('', reply, at);
  return row;
}

/** The `expiry` row for `amount` micro-credits of `grantId` that can no longer be spent. */
export function expiryRow(workspaceId: string, grantId: string, amount: number, at: number): LedgerRowInput {
  return { ...ledgerRowInput(workspaceId, 'expiry', -amount, at), grantId };
}

/**
 * Takes `amount` from `grants` (already in spending order), lowering their `remaining`,
 * and says where it came from. The caller checked that they cover it.
 */
export function takeFromGrants(grants: readonly GrantRecord[], amount: number): Allocation[] {
  const allocations: Allocation[] = [];
  let left = amount;
  for (const grant of grants) {
    if (grant.remaining === 0) continue;
    const part = Math.min(grant.remaining, left);
    grant.remaining -= part;
    allocations.push({ grantId: grant.grantId, amount: part });
    left -= part;
    if (left === 0) break;
  }
  return allocations;
}

/** A copy of a workspace record, field by field: object spread is slow on Node 20's hot path. */
export function copyWorkspace(record: WorkspaceRecord): WorkspaceRecord {
  return {
    workspaceId: record.workspaceId,
    plan: record.plan,
    allotment: record.allotment,
    pendingPlan: record.pendingPlan,
    pendingAllotment: record.pendingAllotment,
    anchor: record.anchor,
    periodIndex: record.periodIndex,
    periodStart: record.periodStart,
    periodEnd: record.periodEnd,
    usedThisPeriod: record.usedThisPeriod,
    version: record.version,
    createdAt: record.createdAt,
  };
}

/** The plan allotment grant of period `index`: `period:<index>`, expiring at the period end. */
export function allotmentGrant(index: number, amount: number, expiresAt: number, createdAt: number): GrantRecord {
  return { grantId: `period:${index}`, kind: 'allotment', amount, remaining: amount, expiresAt, createdAt };
}

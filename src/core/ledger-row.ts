import type { LedgerKind, LedgerRow } from './state.js';

/** A ledger row with every optional column empty but those given: the one place a row's shape is spelt out. */
export function ledgerRow(
  workspaceId: string,
  seq: number,
  kind: LedgerKind,
  amount: number,
  at: number,
  fields: Partial<LedgerRow> = {},
): LedgerRow {
  return {
    workspaceId,
    seq,
    kind,
    // 0 - x, never -x: a free reply is 0, not -0.
    amount: amount === 0 ? 0 : amount,
    at,
    replyId: null,
    agentId: null,
    conversationId: null,
    model: null,
    route: null,
    priceVersion: null,
    grantId: null,
    plan: null,
    inputTokens: null,
    outputTokens: null,
    reason: null,
    ...fields,
  };
}

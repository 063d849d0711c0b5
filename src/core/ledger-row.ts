import type { LedgerKind, LedgerRow } from './state.js';

/** The fields of a ledger row a change may set; every one it leaves out is null. */
export type LedgerRowFields = Partial<Omit<LedgerRow, 'workspaceId' | 'seq' | 'kind' | 'amount' | 'at'>>;

/**
 * A ledger row with every optional column empty but those given: the one place a row's shape
 * is spelt out. Built as one literal (not spread over defaults) so that every row has the same
 * shape, which the hot path of a charge feels.
 */
export function ledgerRow(
  workspaceId: string,
  seq: number,
  kind: LedgerKind,
  amount: number,
  at: number,
  fields: LedgerRowFields = {},
): LedgerRow {
  return {
    workspaceId,
    seq,
    kind,
    // 0 - x, never -x: a free reply is 0, not -0.
    amount: amount === 0 ? 0 : amount,
    at,
    replyId: fields.replyId ?? null,
    agentId: fields.agentId ?? null,
    conversationId: fields.conversationId ?? null,
    model: fields.model ?? null,
    route: fields.route ?? null,
    priceVersion: fields.priceVersion ?? null,
    grantId: fields.grantId ?? null,
    plan: fields.plan ?? null,
    inputTokens: fields.inputTokens ?? null,
    outputTokens: fields.outputTokens ?? null,
    reason: fields.reason ?? null,
  };
}

/** One field of a ledger row as a SQL store lays it out: a column each. */
export interface LedgerColumn {
  /** The {@link LedgerRow} field the column holds. */
  readonly field: Exclude<keyof LedgerRow, 'workspaceId'>;
  /** The column's name: the field in snake_case, e.g. `reply_id` for `replyId`. */
  readonly column: string;
  /** `integer` for whole numbers (seq, amounts, instants, token counts; all within ±(2⁵³ − 1)), `text` otherwise. */
  readonly type: 'integer' | 'text';
  /** True for the fields every row has (`seq`, `kind`, `amount`, `at`); the others may be null. */
  readonly required: boolean;
}

const INTEGER_FIELDS: ReadonlySet<string> = new Set(['seq', 'amount', 'at', 'inputTokens', 'outputTokens']);

/**
 * Every field of a ledger row but `workspaceId`, in the order of {@link ledgerRow}, with the
 * column a SQL store keeps it in. A store that builds its table and statements from this list
 * stays in step when a field is added.
 */
export const LEDGER_COLUMNS: readonly LedgerColumn[] = Object.entries(ledgerRow('', 0, 'reply', 0, 0))
  .filter(([field]) => field !== 'workspaceId')
  .map(([field, sample]) => ({
    field: field as LedgerColumn['field'],
    column: field.replace(/[A-Z]/g, (letter) => `_${letter.toLowerCase()}`),
    type: INTEGER_FIELDS.has(field) ? 'integer' : 'text',
    required: sample !== null,
  }));

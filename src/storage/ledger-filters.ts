import type { LedgerQuery } from './storage.js';

/** One condition of a ledger page on a column of {@link LEDGER_COLUMNS}, e.g. `at >= 1714521600000`. */
export interface LedgerFilter {
  readonly column: 'seq' | 'at' | 'agent_id' | 'kind';
  /** `in`: the column equals one of the strings in `value` (none: no row matches). */
  readonly op: '>' | '>=' | '<' | '=' | 'in';
  readonly value: number | string | readonly string[];
}

/**
 * The conditions a {@link LedgerQuery} puts on a workspace's rows, for a store that renders them
 * in its query language: `afterSeq` is exclusive, `from` inclusive, `to` exclusive. A page is
 * the first `limit` matching rows in `seq` order.
 */
export function ledgerFilters(query: LedgerQuery): LedgerFilter[] {
  const filters: LedgerFilter[] = [];
  if (query.afterSeq !== undefined) filters.push({ column: 'seq', op: '>', value: query.afterSeq });
  if (query.from !== undefined) filters.push({ column: 'at', op: '>=', value: query.from });
  if (query.to !== undefined) filters.push({ column: 'at', op: '<', value: query.to });
  if (query.agentId !== undefined) filters.push({ column: 'agent_id', op: '=', value: query.agentId });
  if (query.kinds !== undefined) filters.push({ column: 'kind', op: 'in', value: query.kinds });
  return filters;
}

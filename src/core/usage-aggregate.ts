import { LEDGER_COLUMNS, type LedgerColumn } from './ledger-row.js';
import type { LedgerRow, UsageGroupBy } from './state.js';

/** Milliseconds in a UTC day. */
export const DAY_MS = 86_400_000;

/** A ledger column usage can be grouped by. */
export type UsageGroupColumn = LedgerColumn & { readonly field: 'agentId' | 'model' | 'conversationId' };
const columnOf = (field: UsageGroupColumn['field']) => LEDGER_COLUMNS.find((column) => column.field === field) as UsageGroupColumn;

/** The ledger column each way of grouping usage groups `reply` rows by (a row without one counts under `''`). */
export const USAGE_GROUP_COLUMNS: Readonly<Record<UsageGroupBy, UsageGroupColumn>> = {
  agent: columnOf('agentId'),
  model: columnOf('model'),
  conversation: columnOf('conversationId'),
};

/** Usage of one group (and UTC day): micro-credits charged and replies counted. */
export interface UsageTotals {
  key: string;
  day?: number;
  amount: number;
  replies: number;
}

/**
 * Adds `reply` rows to per-group (and per-UTC-day) totals. Stores that sum inside their
 * database must agree with this: it is what the meter uses when a store cannot.
 */
export class UsageAccumulator {
  readonly #groups = new Map<string, UsageTotals>();
  readonly #field: UsageGroupColumn['field'];

  /**
   * @param groupBy which column groups the rows
   * @param byDay also split by UTC day
   */
  constructor(
    groupBy: UsageGroupBy,
    readonly byDay: boolean,
  ) {
    this.#field = USAGE_GROUP_COLUMNS[groupBy].field;
  }

  /** Counts a row; rows of other kinds than `reply` are ignored. */
  add(row: LedgerRow): void {
    if (row.kind !== 'reply') return;
    const group = this.#group(row[this.#field] ?? '', row.at);
    group.amount -= row.amount;
    group.replies += 1;
  }

  /**
   * Adds totals summed elsewhere, e.g. a store's rollup of one UTC day, as if their rows had
   * been added one by one: `at` is any instant of that day.
   */
  merge(key: string, at: number, amount: number, replies: number): void {
    const group = this.#group(key, at);
    group.amount += amount;
    group.replies += replies;
  }

  #group(key: string, at: number): UsageTotals {
    const day = this.byDay ? dayOf(at) : undefined;
    const id = day === undefined ? key : `${day}\u0000${key}`;
    let group = this.#groups.get(id);
    if (!group) {
      group = day === undefined ? { key, amount: 0, replies: 0 } : { key, day, amount: 0, replies: 0 };
      this.#groups.set(id, group);
    }
    return group;
  }

  /** The totals so far, one per group (and day), in no particular order. */
  totals(): UsageTotals[] {
    return [...this.#groups.values()];
  }
}

/** Epoch ms of 00:00 UTC on the day of `at`. */
export function dayOf(at: number): number {
  return at - (((at % DAY_MS) + DAY_MS) % DAY_MS);
}

import { UTCDate } from '@date-fns/utc';
import { startOfISOWeek, startOfMonth } from 'date-fns';
import { fromMicros } from '../core/credits.js';
import type { UsageGroupBy } from '../core/state.js';
import { UsageAccumulator } from '../core/usage-aggregate.js';
import type { CreditStorage, UsageAggregate, UsageQuery } from '../storage/storage.js';
import type { UsageInterval, UsageReport, UsageRow } from './types.js';

interface Window {
  workspaceId: string;
  from: Date;
  to: Date;
  groupBy: UsageGroupBy;
  interval?: UsageInterval | undefined;
}

/** Rows per ledger page when the meter sums a window itself. */
const PAGE = 1000;

/**
 * Sums a window's rows of one kind by paging the ledger (after `start`, a `seq` no row of the
 * window precedes): `reply` rows when a store has no `usage` of its own, and `refund` rows,
 * counted against the group of the reply they refund.
 */
export async function sumLedger(
  storage: CreditStorage,
  query: UsageQuery,
  kind: 'reply' | 'refund',
  start?: number,
): Promise<UsageAggregate[]> {
  const sum = new UsageAccumulator(query.groupBy, query.byDay);
  let afterSeq = start;
  for (;;) {
    const rows = await storage.ledger({
      workspaceId: query.workspaceId,
      from: query.from,
      to: query.to,
      kinds: [kind],
      limit: PAGE,
      ...(afterSeq !== undefined && { afterSeq }),
    });
    for (const row of rows) sum.add(kind === 'reply' ? row : { ...row, kind: 'reply', amount: -row.amount });
    if (rows.length < PAGE) return sum.totals();
    afterSeq = rows[rows.length - 1]!.seq;
  }
}

/**
 * Rolls a store's per-day aggregates up into the asked calendar buckets (UTC). Stores
 * only ever bucket by day, which every database does the same way; weeks and months come
 * from date-fns here, so every store agrees on them.
 */
export function bucketUsage(window: Window, aggregates: readonly UsageAggregate[], refunds: readonly UsageAggregate[] = []): UsageReport {
  const groups = new Map<string, { key: string; bucket: number | undefined; amount: number; refunded: number; replies: number }>();
  const groupOf = (aggregate: UsageAggregate) => {
    const bucket = window.interval && aggregate.day !== undefined ? bucketStart(aggregate.day, window.interval) : undefined;
    const id = bucket === undefined ? aggregate.key : `${bucket}\u0000${aggregate.key}`;
    let group = groups.get(id);
    if (!group) {
      group = { key: aggregate.key, bucket, amount: 0, refunded: 0, replies: 0 };
      groups.set(id, group);
    }
    return group;
  };
  for (const aggregate of aggregates) {
    const group = groupOf(aggregate);
    group.amount += aggregate.amount;
    group.replies += aggregate.replies;
  }
  // Refunds count where they were made, against the group of the reply they give back for.
  for (const refund of refunds) groupOf(refund).refunded += refund.amount;
  const sorted = [...groups.values()].sort(
    (a, b) => (a.bucket ?? 0) - (b.bucket ?? 0) || b.amount - a.amount || (a.key < b.key ? -1 : a.key > b.key ? 1 : 0),
  );
  let totalMicros = 0;
  let totalRefunded = 0;
  let totalReplies = 0;
  const rows: UsageRow[] = sorted.map((group) => {
    totalMicros += group.amount;
    totalRefunded += group.refunded;
    totalReplies += group.replies;
    const row = {
      key: group.key,
      credits: fromMicros(group.amount),
      refunded: fromMicros(group.refunded),
      net: fromMicros(group.amount - group.refunded),
      replies: group.replies,
    };
    return group.bucket === undefined ? row : { ...row, bucket: new Date(group.bucket) };
  });
  return {
    workspaceId: window.workspaceId,
    from: window.from,
    to: window.to,
    groupBy: window.groupBy,
    ...(window.interval && { interval: window.interval }),
    rows,
    totalCredits: fromMicros(totalMicros),
    totalRefunded: fromMicros(totalRefunded),
    totalNet: fromMicros(totalMicros - totalRefunded),
    totalReplies,
  };
}

function bucketStart(day: number, interval: UsageInterval): number {
  if (interval === 'day') return day;
  const date = new UTCDate(day);
  return (interval === 'week' ? startOfISOWeek(date) : startOfMonth(date)).getTime();
}

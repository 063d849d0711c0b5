import { UTCDate } from '@date-fns/utc';
import { startOfISOWeek, startOfMonth } from 'date-fns';
import { fromMicros } from '../core/credits.js';
import type { UsageGroupBy } from '../core/state.js';
import type { UsageAggregate } from '../storage/storage.js';
import type { UsageInterval, UsageReport, UsageRow } from './types.js';

interface Window {
  workspaceId: string;
  from: Date;
  to: Date;
  groupBy: UsageGroupBy;
  interval?: UsageInterval | undefined;
}

/**
 * Rolls a store's per-day aggregates up into the asked calendar buckets (UTC). Stores
 * only ever bucket by day, which every database does the same way; weeks and months come
 * from date-fns here, so every store agrees on them.
 */
export function bucketUsage(window: Window, aggregates: readonly UsageAggregate[]): UsageReport {
  const groups = new Map<string, { key: string; bucket: number | undefined; amount: number; replies: number }>();
  for (const aggregate of aggregates) {
    const bucket = window.interval && aggregate.day !== undefined ? bucketStart(aggregate.day, window.interval) : undefined;
    const id = bucket === undefined ? aggregate.key : `${bucket}\u0000${aggregate.key}`;
    const group = groups.get(id) ?? { key: aggregate.key, bucket, amount: 0, replies: 0 };
    group.amount += aggregate.amount;
    group.replies += aggregate.replies;
    groups.set(id, group);
  }
  const sorted = [...groups.values()].sort(
    (a, b) => (a.bucket ?? 0) - (b.bucket ?? 0) || b.amount - a.amount || (a.key < b.key ? -1 : a.key > b.key ? 1 : 0),
  );
  let totalMicros = 0;
  let totalReplies = 0;
  const rows: UsageRow[] = sorted.map((group) => {
    totalMicros += group.amount;
    totalReplies += group.replies;
    const row = { key: group.key, credits: fromMicros(group.amount), replies: group.replies };
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
    totalReplies,
  };
}

function bucketStart(day: number, interval: UsageInterval): number {
  if (interval === 'day') return day;
  const date = new UTCDate(day);
  return (interval === 'week' ? startOfISOWeek(date) : startOfMonth(date)).getTime();
}

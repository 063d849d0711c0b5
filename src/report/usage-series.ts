import { UTCDate } from '@date-fns/utc';
import { addDays, addMonths, addWeeks, startOfDay, startOfISOWeek, startOfMonth } from 'date-fns';
import { Decimal } from 'decimal.js';
import type { UsageInterval, UsageReport } from '../meter/types.js';

/** How {@link buildUsageSeries} orders keys and bounds the buckets. */
export interface UsageSeriesOptions {
  /**
   * Keys (agent ids for a report grouped by agent) in the order to stack and colour them,
   * first at the bottom with the first colour. Pass every agent of the workspace, so an
   * agent keeps its colour in a window where another one has no usage. Keys of the report
   * missing here follow, in code-unit order.
   * @default [] (every key in code-unit order, which is stable from one window to the next)
   */
  order?: readonly string[];
  /**
   * Refuse windows with more buckets than this (a year by day is 366), so a hand-edited
   * query string cannot make a page render a million bars.
   * @default 1000
   */
  maxBuckets?: number;
}

/** One calendar bucket of a series, with the totals of every key. */
export interface UsageBucket {
  /** Start of the bucket, inclusive (UTC midnight). */
  readonly start: Date;
  /** End of the bucket, exclusive; the last bucket ends at the report's `to`. */
  readonly end: Date;
  /** Credits of every key in this bucket. */
  readonly credits: Decimal;
  /** Replies of every key in this bucket (byo and unmetered replies count, with 0 credits). */
  readonly replies: number;
}

/** Credits and replies of one key in one bucket. */
export interface UsagePoint {
  readonly credits: Decimal;
  readonly replies: number;
}

/** One key (agent, model or conversation) across every bucket. */
export interface UsageSeriesEntry {
  readonly key: string;
  /** The position of the key in the order (including `order` keys without usage): picks its colour. */
  readonly colorIndex: number;
  /** One point per bucket, aligned with {@link UsageSeries.buckets}; zero where the key had no usage. */
  readonly points: readonly UsagePoint[];
  /** Credits of this key over the window. */
  readonly credits: Decimal;
  /** Replies of this key over the window. */
  readonly replies: number;
}

/** A usage report as a dense grid: every bucket of the window × every key, zeros filled in. */
export interface UsageSeries {
  readonly workspaceId: string;
  readonly from: Date;
  readonly to: Date;
  readonly groupBy: UsageReport['groupBy'];
  /** The report's interval; without one the window is a single bucket. */
  readonly interval: UsageInterval | undefined;
  /** Every bucket of the window, oldest first, including those without usage. */
  readonly buckets: readonly UsageBucket[];
  /** Keys with usage (replies or credits) in the window, in stacking order. */
  readonly series: readonly UsageSeriesEntry[];
  /** Sum of every row's credits (equals the report's `totalCredits`). */
  readonly totalCredits: Decimal;
  /** Sum of every row's replies (equals the report's `totalReplies`). */
  readonly totalReplies: number;
}

const ZERO = new Decimal(0);

/**
 * Turns a `meter.usage()` report into a dense grid for charting: every calendar bucket of
 * the window (UTC; ISO weeks start on Monday, as the meter buckets them), every key, zeros
 * filled in. Used by {@link renderUsageChart}; useful on its own to feed a chart library.
 *
 * @example
 * ```ts
 * const report = await meter.usage({ workspaceId, from, to, groupBy: 'agent', interval: 'week' });
 * const { buckets, series } = buildUsageSeries(report, { order: ['support', 'sales', 'faq'] });
 * for (const entry of series) console.log(entry.key, entry.points.map((p) => p.credits.toNumber()));
 * ```
 */
export function buildUsageSeries(report: UsageReport, options: UsageSeriesOptions = {}): UsageSeries {
  const maxBuckets = options.maxBuckets ?? 1000;
  const starts = bucketStarts(report.from, report.to, report.interval, maxBuckets);
  for (const row of report.rows) {
    const start = rowBucket(row.bucket, report);
    if (!starts.includes(start)) starts.push(start);
  }
  starts.sort((a, b) => a - b);
  if (starts.length > maxBuckets) throw tooManyBuckets(starts.length, maxBuckets);
  const bucketIndex = new Map(starts.map((start, index) => [start, index]));

  const keys = new Set(report.rows.map((row) => row.key));
  const ordered = [...new Set(options.order ?? [])];
  const rest = [...keys].filter((key) => !ordered.includes(key)).sort(compareKeys);
  const stacking = [...ordered, ...rest];

  const grid = new Map<string, { credits: Decimal; replies: number }[]>();
  for (const key of keys)
    grid.set(
      key,
      starts.map(() => ({ credits: ZERO, replies: 0 })),
    );
  let totalCredits = ZERO;
  let totalReplies = 0;
  for (const row of report.rows) {
    const cell = grid.get(row.key)?.[bucketIndex.get(rowBucket(row.bucket, report)) ?? -1];
    if (!cell) continue;
    cell.credits = cell.credits.plus(row.credits);
    cell.replies += row.replies;
    totalCredits = totalCredits.plus(row.credits);
    totalReplies += row.replies;
  }

  const series: UsageSeriesEntry[] = [];
  stacking.forEach((key, colorIndex) => {
    const cells = grid.get(key);
    if (!cells) return;
    series.push(
      Object.freeze({
        key,
        colorIndex,
        points: Object.freeze(cells.map((cell) => Object.freeze({ credits: cell.credits, replies: cell.replies }))),
        credits: cells.reduce((sum, cell) => sum.plus(cell.credits), ZERO),
        replies: cells.reduce((sum, cell) => sum + cell.replies, 0),
      }),
    );
  });

  const buckets = starts.map((start, index) =>
    Object.freeze({
      start: new Date(start),
      end: new Date(index + 1 < starts.length ? (starts[index + 1] as number) : Math.max(report.to.getTime(), start)),
      credits: series.reduce((sum, entry) => sum.plus(entry.points[index]?.credits ?? ZERO), ZERO),
      replies: series.reduce((sum, entry) => sum + (entry.points[index]?.replies ?? 0), 0),
    }),
  );

  return Object.freeze({
    workspaceId: report.workspaceId,
    from: report.from,
    to: report.to,
    groupBy: report.groupBy,
    interval: report.interval,
    buckets: Object.freeze(buckets),
    series: Object.freeze(series),
    totalCredits,
    totalReplies,
  });
}

function bucketStarts(from: Date, to: Date, interval: UsageInterval | undefined, maxBuckets: number): number[] {
  if (!interval) return [from.getTime()];
  const starts: number[] = [];
  const end = to.getTime();
  let cursor = startOf(new UTCDate(from.getTime()), interval);
  do {
    starts.push(cursor.getTime());
    if (starts.length > maxBuckets) throw tooManyBuckets(starts.length, maxBuckets);
    cursor = next(cursor, interval);
  } while (cursor.getTime() < end);
  return starts;
}

function rowBucket(bucket: Date | undefined, report: UsageReport): number {
  return report.interval && bucket ? bucket.getTime() : report.from.getTime();
}

function startOf(date: UTCDate, interval: UsageInterval): UTCDate {
  if (interval === 'day') return startOfDay(date);
  return interval === 'week' ? startOfISOWeek(date) : startOfMonth(date);
}

function next(date: UTCDate, interval: UsageInterval): UTCDate {
  if (interval === 'day') return addDays(date, 1);
  return interval === 'week' ? addWeeks(date, 1) : addMonths(date, 1);
}

function tooManyBuckets(count: number, max: number): RangeError {
  return new RangeError(`The window has more than ${max} buckets (${count} so far): pick a shorter window or a longer interval`);
}

function compareKeys(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

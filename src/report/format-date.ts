import { UTCDate } from '@date-fns/utc';
import { format } from 'date-fns';
import type { UsageInterval } from '../meter/types.js';

/**
 * Formats an instant in UTC, the time zone every period and usage bucket is computed in:
 * `1 Dec 2026, 09:00 UTC`.
 *
 * @example
 * ```ts
 * formatDateTime(summary.renewsAt); // '1 Dec 2026, 09:00 UTC'
 * ```
 */
export function formatDateTime(date: Date): string {
  return `${format(new UTCDate(date.getTime()), 'd MMM yyyy, HH:mm')} UTC`;
}

/**
 * Formats a calendar day in UTC: `3 Nov 2026`.
 *
 * @example
 * ```ts
 * formatDay(new Date('2026-11-03T00:00:00Z')); // '3 Nov 2026'
 * ```
 */
export function formatDay(date: Date): string {
  return format(new UTCDate(date.getTime()), 'd MMM yyyy');
}

/**
 * Labels a usage bucket by its start (UTC). `axis` is the short label under a bar
 * (`Nov 3`, `Nov 2026`); `full` is the label of a table row (`3 Nov 2026`,
 * `Week of 2 Nov 2026`, `November 2026`).
 *
 * @example
 * ```ts
 * formatBucket(new Date('2026-11-02T00:00:00Z'), 'week', 'full'); // 'Week of 2 Nov 2026'
 * ```
 */
export function formatBucket(start: Date, interval: UsageInterval | undefined, style: 'axis' | 'full'): string {
  const date = new UTCDate(start.getTime());
  if (interval === 'month') return format(date, style === 'axis' ? 'MMM yyyy' : 'MMMM yyyy');
  if (style === 'axis') return format(date, 'MMM d');
  return interval === 'week' ? `Week of ${format(date, 'd MMM yyyy')}` : format(date, 'd MMM yyyy');
}

/**
 * Formats a window whose end is exclusive as the inclusive days it covers:
 * `[1 Nov, 1 Dec)` → `1 Nov 2026 – 30 Nov 2026`.
 *
 * @example
 * ```ts
 * formatWindow(report.from, report.to); // '1 Nov 2026 – 30 Nov 2026'
 * ```
 */
export function formatWindow(from: Date, to: Date): string {
  const lastInstant = new Date(Math.max(from.getTime(), to.getTime() - 1));
  const first = formatDay(from);
  const last = formatDay(lastInstant);
  return first === last ? first : `${first} – ${last}`;
}

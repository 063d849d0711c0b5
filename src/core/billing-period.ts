import { UTCDate } from '@date-fns/utc';
import { addMonths } from 'date-fns';

/** A half-open billing period [start, end), both in epoch milliseconds. */
export interface PeriodBounds {
  /** Number of whole months from the anchor: period 0 starts at the anchor. */
  readonly index: number;
  readonly start: number;
  readonly end: number;
}

/**
 * The start of period `index`: the anchor plus `index` months, always computed from the
 * anchor (never chained), in UTC, clamped to the end of shorter months. A Jan 31 anchor
 * gives Feb 28 (29 in leap years), Mar 31, Apr 30, ...
 */
export function periodStart(anchor: number, index: number): number {
  return addMonths(new UTCDate(anchor), index).getTime();
}

/** The bounds of period `index`. */
export function periodBounds(anchor: number, index: number): PeriodBounds {
  return { index, start: periodStart(anchor, index), end: periodStart(anchor, index + 1) };
}

/** The index of the period that contains `at` (0 for any instant before the anchor). */
export function periodIndexAt(anchor: number, at: number): number {
  if (at < anchor) return 0;
  const a = new Date(anchor);
  const b = new Date(at);
  let index = (b.getUTCFullYear() - a.getUTCFullYear()) * 12 + (b.getUTCMonth() - a.getUTCMonth());
  // The month difference is exact or one too many; clamping makes the start fall earlier, never later.
  while (index > 0 && periodStart(anchor, index) > at) index--;
  while (periodStart(anchor, index + 1) <= at) index++;
  return index;
}

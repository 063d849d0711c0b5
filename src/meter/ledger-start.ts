import type { LedgerDayRecord } from '../core/state.js';
import { ledgerDayKey } from '../core/transition.js';
import { DAY_MS, dayOf } from '../core/usage-aggregate.js';
import type { CreditStorage } from '../storage/storage.js';

// Days of marks one lookup asks for: a workspace quiet for longer after `from` is paged from its first row.
const LOOKAHEAD_DAYS = 7;
// Rows of `from`'s day before it that a page may always skip: reading them in order costs little.
const CHEAP_SKIP = 10_000;

/**
 * Where a page of rows stamped in [from, to) should start: a `seq` after which all of them lie,
 * read from the day marks the core writes (see `LedgerDayRecord`), or undefined to leave the
 * choice to the store. Passed on as `afterSeq`, it lets a store read rows in `seq` order from the
 * day of `from` instead of from the workspace's first row, which an index on `at` cannot do in
 * order. One `load` of a few keys; `now` is the meter's clock.
 */
export async function seqBefore(
  storage: CreditStorage,
  workspaceId: string,
  from: number,
  to: number | undefined,
  now: number,
): Promise<number | undefined> {
  // A window that ended before now: reading in `seq` order would go on through every later row
  // when the window holds fewer than a page of matches (refunds, one agent's rows); the store's
  // index on `at` reads only the window's.
  if (to !== undefined && to < now) return undefined;
  const day = dayOf(from);
  const keys = Array.from({ length: LOOKAHEAD_DAYS }, (_, i) => ledgerDayKey(day + i * DAY_MS));
  const loaded = await storage.load({ workspaceId, keys, now: 0 });
  const marked = loaded.state?.ledgerMarks;
  if (typeof marked !== 'number') return undefined;
  const last = loaded.state!.ledgerSeq;
  // No change was made on `from`'s day or later: no row is stamped that late.
  if (day > marked) return last;
  const marks = loaded.records
    .flatMap(({ value }) => (value.type === 'ledgerDay' ? [value as LedgerDayRecord] : []))
    .sort((a, b) => a.day - b.day);
  const [mark, next] = marks;
  if (!mark) return undefined;
  if (mark.day > day) return mark.firstSeq - 1;
  // Starting at the mark skips the rows of `from`'s day stamped before it; an index on `at` reads
  // every row from `from` on, then sorts them. With the day's rows spread evenly over its hours,
  // start at the mark when that skips few rows, or fewer than the index would read (a page from
  // the last minutes of a day with a million rows is the index's).
  const end = next ? next.day : Math.max(now, from);
  const dayRows = (next ? next.firstSeq : last + 1) - mark.firstSeq;
  const skipped = (dayRows * (from - mark.day)) / Math.max(1, end - mark.day);
  return skipped <= Math.max(CHEAP_SKIP, last + 1 - mark.firstSeq - skipped) ? mark.firstSeq - 1 : undefined;
}

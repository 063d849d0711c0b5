import { ledgerDayKey } from '../core/transition.js';
import { DAY_MS, dayOf } from '../core/usage-aggregate.js';
import type { CreditStorage } from '../storage/storage.js';

// Days of marks one lookup asks for: a workspace quiet for longer after `from` is paged from its first row.
const LOOKAHEAD_DAYS = 7;

/**
 * The `seq` after which every ledger row stamped at or after `from` lies, read from the day marks
 * the core writes (see `LedgerDayRecord`), or undefined when they cannot tell. Passed on as `afterSeq`, it
 * lets a store start a page from `from` near its first row instead of at the workspace's first row
 * (a store's index on `at` cannot give rows in `seq` order). One `load` of a few keys.
 */
export async function seqBefore(storage: CreditStorage, workspaceId: string, from: number): Promise<number | undefined> {
  const day = dayOf(from);
  const keys = Array.from({ length: LOOKAHEAD_DAYS }, (_, i) => ledgerDayKey(day + i * DAY_MS));
  const loaded = await storage.load({ workspaceId, keys, now: 0 });
  const marked = loaded.state?.ledgerMarks;
  if (typeof marked !== 'number') return undefined;
  // No change was made on `from`'s day or later: no row is stamped that late.
  if (day > marked) return loaded.state!.ledgerSeq;
  let first = Number.POSITIVE_INFINITY;
  for (const { value } of loaded.records) if (value.type === 'ledgerDay') first = Math.min(first, value.firstSeq);
  return first === Number.POSITIVE_INFINITY ? undefined : first - 1;
}

import { describe, expect, it } from 'vitest';
import { CreditMeter, MemoryStorage } from '../../src/index.js';
import type { LedgerQuery } from '../../src/storage/index.js';
import { wrapStorage } from '../support.js';

const DAY = 86_400_000;
const START = Date.UTC(2026, 0, 1);

/** A meter on a memory store that records the ledger queries it receives, on a clock the test sets. */
function recordingMeter() {
  const inner = new MemoryStorage();
  const queries: LedgerQuery[] = [];
  const storage = wrapStorage(inner, {
    ledger: (query) => {
      queries.push(query);
      return inner.ledger(query);
    },
  });
  const clock = { now: START };
  const meter = new CreditMeter({ storage, clock: () => new Date(clock.now) });
  const rows = () => inner.ledger({ workspaceId: 'ws', limit: 100_000 });
  return { meter, queries, clock, rows };
}

/** {@link recordingMeter} with 5 days of replies, 10 a day. */
async function fiveDays() {
  const { meter, queries, clock, rows } = recordingMeter();
  await meter.createWorkspace({ workspaceId: 'ws', plan: 'pro' });
  for (let i = 0; i < 50; i++) {
    clock.now = START + Math.floor(i / 10) * DAY + (i % 10) * 3_600_000;
    const hold = await meter.reserve({ workspaceId: 'ws', agentId: 'a', conversationId: 'c', model: 'gpt-4o-mini' });
    await meter.settle({ workspaceId: 'ws', replyId: hold.replyId });
  }
  return { meter, queries, rows: await rows(), setNow: (at: number) => (clock.now = at) };
}

describe('ledger pages from an instant start at the day mark', () => {
  it("ask the store only for rows from that day's first on, and return exactly the rows from the instant", async () => {
    const { meter, queries, rows } = await fiveDays();
    const from = START + 3 * DAY + 5 * 3_600_000;
    queries.length = 0;
    const page = await meter.ledger({ workspaceId: 'ws', from: new Date(from), limit: 100 });
    expect(page.entries.map((entry) => Number(entry.id))).toEqual(rows.filter((row) => row.at >= from).map((row) => row.seq));
    const dayStart = rows.find((row) => row.at >= START + 3 * DAY)!.seq;
    expect(queries).toHaveLength(1);
    expect(queries[0]!.afterSeq).toBe(dayStart - 1);
  });

  it('a cursor past the mark wins; an instant after every change asks for nothing older than the last row', async () => {
    const { meter, queries, rows } = await fiveDays();
    const from = START + DAY;
    const first = await meter.ledger({ workspaceId: 'ws', from: new Date(from), limit: 5 });
    queries.length = 0;
    await meter.ledger({ workspaceId: 'ws', from: new Date(from), limit: 5, cursor: first.nextCursor! });
    expect(queries[0]!.afterSeq).toBe(Number(first.nextCursor));
    queries.length = 0;
    expect((await meter.ledger({ workspaceId: 'ws', from: new Date(START + 9 * DAY) })).entries).toEqual([]);
    expect(queries[0]!.afterSeq).toBe(rows[rows.length - 1]!.seq);
  });

  it("a page from the last minutes of a day with very many rows is left to the store's index on at; from early that day it starts at the mark", async () => {
    const { meter, queries, clock, rows: allRows } = recordingMeter();
    await meter.createWorkspace({ workspaceId: 'ws', plan: 'enterprise', allotment: 1_000_000 });
    // 24,000 replies over one day, one every 3.6 s, 64 at a time.
    for (let i = 0; i < 24_000; i += 64) {
      clock.now = START + i * 3_600;
      await Promise.all(
        Array.from({ length: 64 }, () => meter.reserve({ workspaceId: 'ws', agentId: 'a', conversationId: 'c', model: 'gpt-4o-mini' })),
      ).then((holds) => Promise.all(holds.map((hold) => meter.settle({ workspaceId: 'ws', replyId: hold.replyId }))));
    }
    const rows = await allRows();
    const late = clock.now - 60_000;
    const page = await meter.ledger({ workspaceId: 'ws', from: new Date(late), limit: 1000 });
    expect(page.entries.map((entry) => Number(entry.id))).toEqual(rows.filter((row) => row.at >= late).map((row) => row.seq));
    expect(queries.at(-1)!.afterSeq).toBeUndefined();
    await meter.ledger({ workspaceId: 'ws', from: new Date(START + 3_600_000) });
    expect(queries.at(-1)!.afterSeq).toBe(0);
  });

  it('usage summed by the meter pages from the mark too, up to now; a window that ended before now is left to the store', async () => {
    const { meter, queries, rows, setNow } = await fiveDays();
    setNow(START + 4 * DAY + 12 * 3_600_000);
    queries.length = 0;
    const open = await meter.usage({ workspaceId: 'ws', from: new Date(START + 2 * DAY), to: new Date(START + 5 * DAY), groupBy: 'agent' });
    expect(open.totalReplies).toBe(30);
    const dayStart = rows.find((row) => row.at >= START + 2 * DAY)!.seq;
    // The refunds are always paged by the meter (the memory store sums replies itself).
    expect(queries.length).toBeGreaterThan(0);
    for (const query of queries) expect(query.afterSeq).toBe(dayStart - 1);
    // Read in seq order, a past window with few matches (refunds) would go on through every later row.
    queries.length = 0;
    const past = await meter.usage({ workspaceId: 'ws', from: new Date(START + 2 * DAY), to: new Date(START + 3 * DAY), groupBy: 'agent' });
    expect(past.totalReplies).toBe(10);
    for (const query of queries) expect(query.afterSeq).toBeUndefined();
  });
});

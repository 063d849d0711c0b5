import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { CreditMeter, MemoryStorage } from '../../src/index.js';
import type { LedgerEntry } from '../../src/meter/types.js';

const HOUR = 3_600_000;
const START = Date.UTC(2026, 2, 1);

/** One step of the app servers' traffic: which server acts, how far time moves first, and what it does. */
const step = fc.record({
  server: fc.nat(2),
  advance: fc.integer({ min: 0, max: 9 * HOUR }),
  action: fc.constantFrom('charge', 'hold', 'release', 'topUp'),
});

describe('ledger pages and usage from an instant (day marks), against the raw ledger', () => {
  it('hold exactly the rows at or after the instant, whatever the servers’ clocks and the page size', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.array(fc.integer({ min: -6 * HOUR, max: 6 * HOUR }), { minLength: 3, maxLength: 3 }),
        fc.array(step, { minLength: 5, maxLength: 60 }),
        fc.array(fc.tuple(fc.double({ min: 0, max: 1, noNaN: true }), fc.integer({ min: 1, max: 7 }), fc.boolean()), {
          minLength: 1,
          maxLength: 4,
        }),
        async (offsets, steps, probes) => {
          const storage = new MemoryStorage();
          let now = START;
          const meters = offsets.map((offset) => new CreditMeter({ storage, clock: () => new Date(now + offset) }));
          const reader = new CreditMeter({ storage, clock: () => new Date(now) });
          await meters[0]!.createWorkspace({ workspaceId: 'ws', plan: 'enterprise', allotment: 10_000 });
          const held: { replyId: string; server: number }[] = [];
          for (const [i, { server, advance, action }] of steps.entries()) {
            now += advance;
            const meter = meters[server]!;
            const ask = { workspaceId: 'ws', agentId: `a${i % 3}`, conversationId: 'c', model: 'gpt-4o-mini' };
            if (action === 'charge') await meter.settle({ workspaceId: 'ws', replyId: (await meter.reserve(ask)).replyId });
            else if (action === 'hold') held.push({ replyId: (await meter.reserve(ask)).replyId, server });
            else if (action === 'release' && held.length > 0) {
              const { replyId } = held.shift()!;
              await meter.release({ workspaceId: 'ws', replyId }).catch(() => undefined); // it may have lapsed already
            } else if (action === 'topUp') await meter.addCredits({ workspaceId: 'ws', credits: 1, grantId: `g${i}` });
          }
          const rows = await storage.ledger({ workspaceId: 'ws', limit: 100_000 });
          const first = rows[0]!.at;
          const last = Math.max(...rows.map((row) => row.at));
          for (const [where, limit, bounded] of probes) {
            const from = Math.floor(first - HOUR + where * (last - first + 2 * HOUR));
            const to = bounded ? from + 5 * HOUR : undefined;
            const seen: LedgerEntry[] = [];
            let cursor: string | undefined;
            do {
              const page = await reader.ledger({
                workspaceId: 'ws',
                from: new Date(from),
                ...(to !== undefined && { to: new Date(to) }),
                limit,
                ...(cursor !== undefined && { cursor }),
              });
              seen.push(...page.entries);
              cursor = page.nextCursor;
            } while (cursor !== undefined);
            const expected = rows.filter((row) => row.at >= from && (to === undefined || row.at < to));
            expect(seen.map((entry) => Number(entry.id))).toEqual(expected.map((row) => row.seq));
            const until = to ?? Math.max(now, from) + HOUR;
            const report = await reader.usage({ workspaceId: 'ws', from: new Date(from), to: new Date(until), groupBy: 'agent' });
            const replies = rows.filter((row) => row.kind === 'reply' && row.at >= from && row.at < until);
            expect(report.totalReplies).toBe(replies.length);
          }
        },
      ),
      { numRuns: 60 },
    );
  });
});

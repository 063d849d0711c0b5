import { describe, expect, it } from 'vitest';
import { CreditMeter, MemoryStorage } from '../../src/index.js';
import type { LedgerRow } from '../../src/storage/index.js';
import { harness, turn } from '../support.js';

describe('usage', () => {
  async function seeded() {
    const h = harness({ start: '2026-03-01T10:00:00Z', byoKeys: ({ provider }) => (provider === 'anthropic' ? 'sk-ant' : undefined) });
    await h.meter.createWorkspace({ workspaceId: 'ws', plan: 'pro' });
    // Day 1: agent a 2 × gpt-4o; agent b 1 × sonnet (byo). Day 2 (Mar 2): agent a 1 × mini. Day 9 (next ISO week): agent b 1 × gpt-4o.
    await h.meter.reply(turn(1, 'gpt-4o', 'a', 'c1'));
    await h.meter.reply(turn(2, 'gpt-4o', 'a', 'c1'));
    await h.meter.reply(turn(3, 'claude-sonnet-4-6', 'b', 'c2'));
    h.clock.set('2026-03-02T23:59:59.999Z');
    await h.meter.reply(turn(4, 'gpt-4o-mini', 'a', 'c3'));
    h.clock.set('2026-03-09T00:00:00Z');
    await h.meter.reply(turn(5, 'gpt-4o', 'b', 'c4'));
    return h;
  }
  const window = { workspaceId: 'ws', from: '2026-03-01T00:00:00Z', to: '2026-04-01T00:00:00Z' };
  const plain = (rows: readonly { key: string; credits: unknown; replies: number; bucket?: Date }[]) =>
    rows.map((r) => ({
      key: r.key,
      credits: Number(r.credits),
      replies: r.replies,
      ...(r.bucket && { bucket: r.bucket.toISOString().slice(0, 10) }),
    }));

  it('per agent: credits and replies, byo replies counted with 0 credits', async () => {
    const { meter } = await seeded();
    const report = await meter.usage({ ...window, groupBy: 'agent' });
    expect(plain(report.rows)).toEqual([
      { key: 'a', credits: 11, replies: 3 },
      { key: 'b', credits: 5, replies: 2 },
    ]);
    expect([Number(report.totalCredits), report.totalReplies]).toEqual([16, 5]);
  });

  it('per model and per conversation', async () => {
    const { meter } = await seeded();
    expect(plain((await meter.usage({ ...window, groupBy: 'model' })).rows)).toEqual([
      { key: 'gpt-4o', credits: 15, replies: 3 },
      { key: 'gpt-4o-mini', credits: 1, replies: 1 },
      { key: 'claude-sonnet-4-6', credits: 0, replies: 1 },
    ]);
    expect((await meter.usage({ ...window, groupBy: 'conversation' })).rows.map((r) => r.key)).toEqual(['c1', 'c4', 'c3', 'c2']);
  });

  it('buckets by UTC day, ISO week and month', async () => {
    const { meter } = await seeded();
    expect(plain((await meter.usage({ ...window, groupBy: 'agent', interval: 'day' })).rows)).toEqual([
      { key: 'a', credits: 10, replies: 2, bucket: '2026-03-01' },
      { key: 'b', credits: 0, replies: 1, bucket: '2026-03-01' },
      { key: 'a', credits: 1, replies: 1, bucket: '2026-03-02' },
      { key: 'b', credits: 5, replies: 1, bucket: '2026-03-09' },
    ]);
    expect(plain((await meter.usage({ ...window, groupBy: 'agent', interval: 'week' })).rows)).toEqual([
      { key: 'a', credits: 10, replies: 2, bucket: '2026-02-23' },
      { key: 'b', credits: 0, replies: 1, bucket: '2026-02-23' },
      { key: 'a', credits: 1, replies: 1, bucket: '2026-03-02' },
      { key: 'b', credits: 5, replies: 1, bucket: '2026-03-09' },
    ]);
    expect(plain((await meter.usage({ ...window, groupBy: 'agent', interval: 'month' })).rows)).toEqual([
      { key: 'a', credits: 11, replies: 3, bucket: '2026-03-01' },
      { key: 'b', credits: 5, replies: 2, bucket: '2026-03-01' },
    ]);
  });

  it('windows are half-open', async () => {
    const { meter } = await seeded();
    const report = await meter.usage({ workspaceId: 'ws', from: '2026-03-02T00:00:00Z', to: '2026-03-09T00:00:00Z', groupBy: 'agent' });
    expect(plain(report.rows)).toEqual([{ key: 'a', credits: 1, replies: 1 }]);
  });

  it('stays fast on a ledger of a million rows', async () => {
    const storage = new MemoryStorage();
    const meter = new CreditMeter({ storage, mode: 'self-hosted' });
    const agents = ['a', 'b', 'c', 'd'];
    const start = Date.parse('2026-01-01T00:00:00Z');
    // Written straight through the storage seam: a million replies through the meter would test the meter, not usage.
    const rows: LedgerRow[] = [];
    for (let i = 0; i < 1_000_000; i++) {
      const at = start + i * 1000;
      rows.push({
        workspaceId: 'big',
        seq: i + 1,
        kind: 'reply',
        amount: 0,
        at,
        replyId: `r${i}`,
        agentId: agents[i % 4]!,
        conversationId: `c${i % 1000}`,
        model: 'gpt-4o',
        route: 'unmetered',
        priceVersion: 'v',
        grantId: null,
        plan: null,
        inputTokens: null,
        outputTokens: null,
        reason: null,
      });
    }
    for (let i = 0; i < rows.length; i += 100_000) {
      const ledger = rows.slice(i, i + 100_000);
      const state = { workspaceId: 'big', account: null, ledgerSeq: ledger[ledger.length - 1]!.seq };
      expect(await storage.commit([{ workspaceId: 'big', expectedVersion: i / 100_000, state, ledger, records: [] }])).toEqual([
        'committed',
      ]);
    }
    const started = performance.now();
    const report = await meter.usage({
      workspaceId: 'big',
      from: '2025-01-01T00:00:00Z',
      to: '2027-01-01T00:00:00Z',
      groupBy: 'agent',
      interval: 'day',
    });
    const elapsed = performance.now() - started;
    expect(report.totalReplies).toBe(1_000_000);
    expect(report.rows).toHaveLength(4 * 12);
    // A guard against a quadratic scan, not a benchmark (bench/ measures usage latency).
    expect(elapsed).toBeLessThan(10_000);
  }, 120_000);
});

import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { CreditMeter, CreditsError, MemoryStorage, periodBounds } from '../../src/index.js';
import { ledgerSum, TestClock } from '../support.js';

/**
 * A deliberately plain model of the rules: grants with expiries spent soonest-expiring
 * first, holds that lapse, lazy monthly renewal, upgrades at once and downgrades at
 * renewal. Random operation sequences run against it and against a real meter; balances,
 * holds and outcomes must agree after every step.
 */
interface Grant {
  id: string;
  remaining: number;
  expiresAt: number | null;
  createdAt: number;
}
interface Hold {
  amount: number;
  expiresAt: number;
  from: Array<[Grant, number]>;
}

const PRICES: Record<string, number> = { 'bookbag-local': 1, 'gpt-4o-mini': 1, 'claude-haiku-4-5': 2, 'claude-sonnet-4-6': 4, 'gpt-4o': 5 };
const MONTHLY: Record<string, number> = { free: 100e6, hobby: 2000e6, standard: 12000e6, pro: 40000e6 };
const TTL = 60_000;

class Model {
  grants: Grant[] = [];
  holds = new Map<string, Hold>();
  finished = new Map<string, 'settled' | 'released' | 'expired' | 'refused'>();
  plan: string;
  pending: string | null = null;
  allotment: number;
  index = 0;
  end: number;

  constructor(
    readonly anchor: number,
    plan: string,
  ) {
    this.plan = plan;
    this.allotment = MONTHLY[plan]!;
    this.end = periodBounds(anchor, 0).end;
    this.grants.push({ id: 'period:0', remaining: this.allotment, expiresAt: this.end, createdAt: anchor });
  }

  available(now: number): number {
    return this.grants.filter((g) => g.expiresAt === null || g.expiresAt > now).reduce((sum, g) => sum + g.remaining, 0);
  }
  held(): number {
    return [...this.holds.values()].reduce((sum, h) => sum + h.amount, 0);
  }

  #lapse(id: string, status: 'released' | 'expired', now: number): void {
    const hold = this.holds.get(id)!;
    for (const [grant, amount] of hold.from) if (grant.expiresAt === null || grant.expiresAt > now) grant.remaining += amount;
    this.holds.delete(id);
    this.finished.set(id, status);
  }

  #sweep(now: number): void {
    for (const [id, hold] of [...this.holds]) if (hold.expiresAt <= now) this.#lapse(id, 'expired', now);
    for (const grant of this.grants) if (grant.expiresAt !== null && grant.expiresAt <= now) grant.remaining = 0;
  }

  current(now: number): void {
    while (now >= this.end) {
      for (const [id, hold] of [...this.holds]) if (hold.expiresAt <= now) this.#lapse(id, 'expired', now);
      for (const grant of this.grants) if (grant.id.startsWith('period:') || (grant.expiresAt !== null && grant.expiresAt <= now)) grant.remaining = 0;
      if (this.pending) {
        this.plan = this.pending;
        this.allotment = MONTHLY[this.pending]!;
        this.pending = null;
      }
      this.index++;
      const bounds = periodBounds(this.anchor, this.index);
      this.end = bounds.end;
      this.grants.push({ id: `period:${this.index}`, remaining: this.allotment, expiresAt: bounds.end, createdAt: bounds.start });
    }
    this.#sweep(now);
  }

  reserve(id: string, amount: number, now: number): 'held' | 'refused' | 'exists' {
    if (this.holds.has(id) || this.finished.has(id)) return 'exists';
    this.current(now);
    if (this.available(now) < amount) {
      this.finished.set(id, 'refused');
      return 'refused';
    }
    const order = this.grants
      .filter((g) => g.remaining > 0 && (g.expiresAt === null || g.expiresAt > now))
      .sort((a, b) => (a.expiresAt ?? Infinity) - (b.expiresAt ?? Infinity) || a.createdAt - b.createdAt || (a.id < b.id ? -1 : 1));
    const from: Array<[Grant, number]> = [];
    let left = amount;
    for (const grant of order) {
      const part = Math.min(grant.remaining, left);
      if (part === 0) continue;
      grant.remaining -= part;
      from.push([grant, part]);
      left -= part;
    }
    this.holds.set(id, { amount, expiresAt: now + TTL, from });
    return 'held';
  }

  settle(id: string, now: number): string {
    const hold = this.holds.get(id);
    if (!hold) return this.finished.get(id) ?? 'not_found';
    if (hold.expiresAt <= now) {
      this.#lapse(id, 'expired', now);
      return 'expired-now';
    }
    this.holds.delete(id);
    this.finished.set(id, 'settled');
    return 'settled-now';
  }

  release(id: string, now: number): string {
    const hold = this.holds.get(id);
    if (!hold) return this.finished.get(id) ?? 'not_found';
    if (hold.expiresAt <= now) {
      this.#lapse(id, 'expired', now);
      return 'expired-now';
    }
    this.#lapse(id, 'released', now);
    return 'released-now';
  }

  topUp(id: string, amount: number, expiresAt: number | null, now: number): void {
    this.current(now);
    if (this.grants.some((g) => g.id === `topup:${id}`)) return;
    this.grants.push({ id: `topup:${id}`, remaining: amount, expiresAt, createdAt: now });
  }

  changePlan(plan: string, now: number): void {
    this.current(now);
    const next = MONTHLY[plan]!;
    if (next >= this.allotment) {
      this.grants.find((g) => g.id === `period:${this.index}`)!.remaining += next - this.allotment;
      this.plan = plan;
      this.allotment = next;
      this.pending = null;
    } else {
      this.pending = plan;
    }
  }
}

type Op =
  | { kind: 'reserve'; model: string; id: number }
  | { kind: 'settle'; id: number }
  | { kind: 'release'; id: number }
  | { kind: 'reply'; model: string; id: number }
  | { kind: 'advance'; ms: number }
  | { kind: 'topUp'; id: number; credits: number; expiresInMs: number | null }
  | { kind: 'changePlan'; plan: string }
  | { kind: 'bad'; which: number };

const models = fc.constantFrom(...Object.keys(PRICES));
const op: fc.Arbitrary<Op> = fc.oneof(
  { arbitrary: fc.record({ kind: fc.constant('reserve' as const), model: models, id: fc.nat(30) }), weight: 5 },
  { arbitrary: fc.record({ kind: fc.constant('settle' as const), id: fc.nat(30) }), weight: 4 },
  { arbitrary: fc.record({ kind: fc.constant('release' as const), id: fc.nat(30) }), weight: 2 },
  { arbitrary: fc.record({ kind: fc.constant('reply' as const), model: models, id: fc.nat(30) }), weight: 4 },
  {
    arbitrary: fc.record({
      kind: fc.constant('advance' as const),
      ms: fc.oneof(fc.integer({ min: 1, max: 30_000 }), fc.integer({ min: TTL, max: 3 * TTL }), fc.integer({ min: 5 * 86_400_000, max: 70 * 86_400_000 })),
    }),
    weight: 2,
  },
  {
    arbitrary: fc.record({
      kind: fc.constant('topUp' as const),
      id: fc.nat(5),
      credits: fc.integer({ min: 1, max: 50 }),
      expiresInMs: fc.option(fc.integer({ min: 1000, max: 40 * 86_400_000 }), { nil: null }),
    }),
    weight: 1,
  },
  { arbitrary: fc.record({ kind: fc.constant('changePlan' as const), plan: fc.constantFrom('free', 'hobby', 'pro') }), weight: 1 },
  { arbitrary: fc.record({ kind: fc.constant('bad' as const), which: fc.nat(5) }), weight: 1 },
);

function codeOf(error: unknown): string {
  return CreditsError.is(error) ? error.code : `unexpected: ${String(error)}`;
}

describe('meter vs reference model (property)', () => {
  it('balance, holds, outcomes and the ledger agree after every step', async () => {
    await fc.assert(
      fc.asyncProperty(fc.array(op, { minLength: 1, maxLength: 40 }), async (ops) => {
        const clock = new TestClock('2026-01-31T00:00:00Z');
        const meter = new CreditMeter({
          storage: new MemoryStorage(),
          clock: clock.now,
          holdTtlMs: TTL,
          providers: { openai: echo, anthropic: echo, bookbag: echo },
        });
        await meter.createWorkspace({ workspaceId: 'ws', plan: 'free' });
        const model = new Model(clock.ms, 'free');
        const identity = (modelId: string, id: number) => ({ workspaceId: 'ws', agentId: 'a', conversationId: 'c', model: modelId, replyId: `r${id}` });
        const models = new Map<number, string>();

        for (const step of ops) {
          const now = clock.ms;
          switch (step.kind) {
            case 'reserve':
            case 'reply': {
              const modelId = models.get(step.id) ?? step.model;
              models.set(step.id, modelId);
              const expected = model.reserve(`r${step.id}`, PRICES[modelId]! * 1e6, now);
              if (step.kind === 'reserve') {
                const got = await meter.reserve(identity(modelId, step.id)).then((r) => (r.replayed ? 'exists' : r.status), codeOf);
                if (expected === 'exists') expect(['exists', 'INSUFFICIENT_CREDITS', 'REPLY_RELEASED', 'HOLD_EXPIRED']).toContain(got);
                else expect(got).toBe(expected === 'held' ? 'held' : 'INSUFFICIENT_CREDITS');
              } else {
                if (expected === 'held') model.settle(`r${step.id}`, now);
                const got = await meter.reply({ ...identity(modelId, step.id), input: 'x' }).then((r) => (r.replayed ? 'exists' : 'ok'), codeOf);
                if (expected === 'exists') expect(['exists', 'INSUFFICIENT_CREDITS', 'REPLY_RELEASED', 'HOLD_EXPIRED', 'REPLY_IN_PROGRESS']).toContain(got);
                else expect(got).toBe(expected === 'held' ? 'ok' : 'INSUFFICIENT_CREDITS');
              }
              break;
            }
            case 'settle': {
              model.current(now);
              const expected = model.settle(`r${step.id}`, now);
              const got = await meter.settle({ workspaceId: 'ws', replyId: `r${step.id}` }).then((r) => (r.replayed ? 'settled' : 'settled-now'), codeOf);
              const map: Record<string, string> = {
                'settled-now': 'settled-now',
                settled: 'settled',
                'expired-now': 'HOLD_EXPIRED',
                expired: 'HOLD_EXPIRED',
                released: 'REPLY_RELEASED',
                refused: 'REPLY_NOT_FOUND',
                not_found: 'REPLY_NOT_FOUND',
              };
              expect(got).toBe(map[expected]);
              break;
            }
            case 'release': {
              model.current(now);
              const expected = model.release(`r${step.id}`, now);
              const got = await meter.release({ workspaceId: 'ws', replyId: `r${step.id}` }).then((r) => (r.replayed ? 'released' : 'released-now'), codeOf);
              const map: Record<string, string> = {
                'released-now': 'released-now',
                released: 'released',
                'expired-now': 'HOLD_EXPIRED',
                expired: 'HOLD_EXPIRED',
                settled: 'REPLY_SETTLED',
                refused: 'REPLY_NOT_FOUND',
                not_found: 'REPLY_NOT_FOUND',
              };
              expect(got).toBe(map[expected]);
              break;
            }
            case 'advance':
              clock.advance(step.ms);
              break;
            case 'topUp': {
              const expiresAt = step.expiresInMs === null ? null : now + step.expiresInMs;
              model.topUp(`p${step.id}-${step.credits}-${step.expiresInMs}`, step.credits * 1e6, expiresAt, now);
              await meter.addCredits({
                workspaceId: 'ws',
                credits: step.credits,
                grantId: `p${step.id}-${step.credits}-${step.expiresInMs}`,
                ...(expiresAt !== null && { expiresAt: new Date(expiresAt) }),
              });
              break;
            }
            case 'changePlan':
              model.changePlan(step.plan, now);
              await meter.changePlan({ workspaceId: 'ws', plan: step.plan });
              break;
            case 'bad': {
              const attempts = [
                () => meter.addCredits({ workspaceId: 'ws', credits: Number.NaN, grantId: 'g' }),
                () => meter.addCredits({ workspaceId: 'ws', credits: '1e400', grantId: 'g' }),
                () => meter.reserve({ ...identity('gpt-4o', 99), agentId: '' }),
                () => meter.reply({ ...identity('gpt-4o', 99), replyId: 'x'.repeat(10_000), input: 1 }),
                () => meter.addCredits({ workspaceId: 'ws', credits: -1, grantId: 'g' }),
                () => meter.addCredits({ workspaceId: 'ws', credits: 1.0000001, grantId: 'g' }),
              ];
              expect(await attempts[step.which]!().then(() => 'ok', codeOf)).toBe('INVALID_INPUT');
              break;
            }
          }
          model.current(clock.ms);
          const ws = await meter.getWorkspace('ws');
          const available = Math.round(Number(ws.balance) * 1e6);
          const held = Math.round(Number(ws.held) * 1e6);
          expect(available).toBeGreaterThanOrEqual(0);
          expect({ available, held, plan: ws.plan }).toEqual({ available: model.available(clock.ms), held: model.held(), plan: model.plan });
          expect(Math.round((await ledgerSum(meter, 'ws')) * 1e6)).toBe(available + held);
        }
      }),
      { numRuns: 150 },
    );
  }, 120_000);
});

const echo = { generate: async () => ({ output: 'ok' }) };

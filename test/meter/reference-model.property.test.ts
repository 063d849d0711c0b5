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
interface Charge {
  amount: number;
  refunded: number;
  paidFrom: Array<[Grant, number]>;
}

const PRICES: Record<string, number> = { 'bookbag-local': 1, 'gpt-4o-mini': 1, 'claude-haiku-4-5': 2, 'claude-sonnet-4-6': 4, 'gpt-4o': 5 };
const MONTHLY: Record<string, number> = { free: 100e6, hobby: 2000e6, standard: 12000e6, pro: 40000e6 };
const TTL = 60_000;
/** Absolute alert levels, micro-credits. */
const LEVELS = [50e6, 5e6];

class Model {
  grants: Grant[] = [];
  holds = new Map<string, Hold>();
  finished = new Map<string, 'settled' | 'released' | 'expired' | 'refused'>();
  charges = new Map<string, Charge>();
  refunds = new Map<string, string>();
  adjustments = new Map<string, number>();
  /** The one agent's cap (micro-credits per period) and what it spent this period. */
  cap: number | null = null;
  spent = 0;
  /** Automatic recharge, as the core keeps it. */
  recharge: { below: number; amount: number; armed: boolean; count: number } | null = null;
  /** Absolute levels announced this period. */
  levelsClaimed = new Set<number>();
  plan: string;
  pending: string | null = null;
  allotment: number;
  index = 0;
  end: number;

  constructor(
    readonly anchor: number,
    plan: string,
    /** Events the meter should have announced so far, across workspaces made afresh. */
    readonly announced: { below: number; recharges: number },
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

  #live(now: number): Grant[] {
    return this.grants
      .filter((g) => g.remaining > 0 && (g.expiresAt === null || g.expiresAt > now))
      .sort((a, b) => (a.expiresAt ?? Infinity) - (b.expiresAt ?? Infinity) || a.createdAt - b.createdAt || (a.id < b.id ? -1 : 1));
  }

  #take(amount: number, now: number): Array<[Grant, number]> {
    const from: Array<[Grant, number]> = [];
    let left = amount;
    for (const grant of this.#live(now)) {
      const part = Math.min(grant.remaining, left);
      if (part === 0) continue;
      grant.remaining -= part;
      from.push([grant, part]);
      left -= part;
    }
    return from;
  }

  /** Runs one command of the meter and watches the balance it leaves, as the core does after each command. */
  command<T>(now: number, run: () => T): T {
    this.current(now);
    const before = this.available(now);
    const result = run();
    this.#watch(before, now);
    return result;
  }

  #watch(before: number, now: number): void {
    const after = this.available(now);
    if (after === before) return;
    for (const level of LEVELS) {
      if (before <= level || after > level || this.levelsClaimed.has(level)) continue;
      this.levelsClaimed.add(level);
      this.announced.below++;
    }
    const recharge = this.recharge;
    if (!recharge) return;
    if (recharge.armed && after < recharge.below) {
      recharge.armed = false;
      recharge.count++;
      this.announced.recharges++;
      // The handler resolves, and the meter adds the credits: a top-up, a command of its own.
      this.command(now, () =>
        this.grants.push({ id: `topup:recharge:${recharge.count}`, remaining: recharge.amount, expiresAt: null, createdAt: now }),
      );
    } else if (!recharge.armed && after >= recharge.below) {
      recharge.armed = true;
    }
  }

  #sweep(now: number): void {
    for (const [id, hold] of [...this.holds]) if (hold.expiresAt <= now) this.#lapse(id, 'expired', now);
    for (const grant of this.grants) if (grant.expiresAt !== null && grant.expiresAt <= now) grant.remaining = 0;
  }

  current(now: number): void {
    while (now >= this.end) {
      for (const [id, hold] of [...this.holds]) if (hold.expiresAt <= now) this.#lapse(id, 'expired', now);
      for (const grant of this.grants)
        if (grant.id.startsWith('period:') || (grant.expiresAt !== null && grant.expiresAt <= now)) grant.remaining = 0;
      this.spent = 0;
      this.levelsClaimed.clear();
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

  reserve(id: string, amount: number, now: number): 'held' | 'refused' | 'capped' | 'exists' {
    if (this.holds.has(id) || this.finished.has(id)) return 'exists';
    this.current(now);
    if (this.cap !== null && amount > 0 && this.spent + this.held() + amount > this.cap) {
      this.finished.set(id, 'refused');
      return 'capped';
    }
    if (this.available(now) < amount) {
      this.finished.set(id, 'refused');
      return 'refused';
    }
    this.holds.set(id, { amount, expiresAt: now + TTL, from: this.#take(amount, now) });
    return 'held';
  }

  settle(id: string, now: number): string {
    const hold = this.holds.get(id);
    if (!hold) return this.finished.get(id) ?? 'not_found';
    if (hold.expiresAt <= now) {
      this.#lapse(id, 'expired', now);
      return 'expired-now';
    }
    // The charge is taken afresh from the grants live now: the hold's credits go back first;
    // those set aside from a grant that expired since stay spent.
    const paidFrom: Array<[Grant, number]> = [];
    for (const [grant, part] of hold.from) {
      if (grant.expiresAt === null || grant.expiresAt > now) grant.remaining += part;
      else paidFrom.push([grant, part]);
    }
    const setAside = paidFrom.reduce((sum, [, part]) => sum + part, 0);
    paidFrom.push(...this.#take(hold.amount - setAside, now));
    this.holds.delete(id);
    this.finished.set(id, 'settled');
    this.charges.set(id, { amount: hold.amount, refunded: 0, paidFrom });
    this.spent += hold.amount;
    return 'settled-now';
  }

  refund(replyId: string, refundId: string, now: number): string {
    this.current(now);
    const charge = this.charges.get(replyId);
    if (this.refunds.has(refundId)) return this.refunds.get(refundId) === replyId ? 'replayed' : 'IDEMPOTENCY_CONFLICT';
    if (!charge) {
      if (this.holds.has(replyId)) return 'REPLY_IN_PROGRESS';
      const status = this.finished.get(replyId);
      return status === 'released' ? 'REPLY_RELEASED' : status === 'expired' ? 'HOLD_EXPIRED' : 'REPLY_NOT_FOUND';
    }
    let left = charge.amount - charge.refunded;
    if (left <= 0) return 'INVALID_INPUT';
    this.refunds.set(refundId, replyId);
    charge.refunded += left;
    this.spent -= Math.min(left, this.spent);
    for (let i = charge.paidFrom.length - 1; i >= 0 && left > 0; i--) {
      const [grant, part] = charge.paidFrom[i]!;
      if (!(grant.expiresAt === null || grant.expiresAt > now)) continue;
      const back = Math.min(part, left);
      grant.remaining += back;
      left -= back;
    }
    if (left > 0) this.grants.push({ id: `refund:${refundId}`, remaining: left, expiresAt: this.end, createdAt: now });
    return 'refunded';
  }

  adjust(adjustmentId: string, amount: number, now: number): string {
    this.current(now);
    if (this.adjustments.has(adjustmentId)) return this.adjustments.get(adjustmentId) === amount ? 'replayed' : 'IDEMPOTENCY_CONFLICT';
    if (amount < 0 && this.available(now) < -amount) return 'INSUFFICIENT_CREDITS';
    this.adjustments.set(adjustmentId, amount);
    if (amount > 0) this.grants.push({ id: `adjustment:${adjustmentId}`, remaining: amount, expiresAt: null, createdAt: now });
    else this.#take(-amount, now);
    return 'adjusted';
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
  | { kind: 'refund'; id: number; refundId: number }
  | { kind: 'adjust'; id: number; credits: number }
  | { kind: 'cap'; credits: number | null }
  | { kind: 'recharge'; below: number; credits: number }
  | { kind: 'delete' }
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
      ms: fc.oneof(
        fc.integer({ min: 1, max: 30_000 }),
        fc.integer({ min: TTL, max: 3 * TTL }),
        fc.integer({ min: 5 * 86_400_000, max: 70 * 86_400_000 }),
      ),
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
  { arbitrary: fc.record({ kind: fc.constant('refund' as const), id: fc.nat(30), refundId: fc.nat(8) }), weight: 2 },
  {
    arbitrary: fc.record({
      kind: fc.constant('adjust' as const),
      id: fc.nat(8),
      credits: fc.integer({ min: -60, max: 60 }).filter((n) => n !== 0),
    }),
    weight: 1,
  },
  {
    arbitrary: fc.record({ kind: fc.constant('cap' as const), credits: fc.option(fc.integer({ min: 0, max: 40 }), { nil: null }) }),
    weight: 1,
  },
  {
    arbitrary: fc.record({
      kind: fc.constant('recharge' as const),
      below: fc.integer({ min: 60, max: 99 }),
      credits: fc.integer({ min: 1, max: 15 }),
    }),
    weight: 3,
  },
  { arbitrary: fc.record({ kind: fc.constant('delete' as const) }), weight: 1 },
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
          lowBalanceLevels: LEVELS.map((level) => level / 1e6),
          onRecharge: () => undefined,
        });
        const heard = { below: 0, recharges: 0 };
        meter.on('balance.below', () => void heard.below++);
        meter.on('recharge.requested', () => void heard.recharges++);
        await meter.createWorkspace({ workspaceId: 'ws', plan: 'free' });
        const announced = { below: 0, recharges: 0 };
        let model = new Model(clock.ms, 'free', announced);
        const identity = (modelId: string, id: number) => ({
          workspaceId: 'ws',
          agentId: 'a',
          conversationId: 'c',
          model: modelId,
          replyId: `r${id}`,
        });
        const models = new Map<number, string>();

        for (const step of ops) {
          const now = clock.ms;
          switch (step.kind) {
            case 'reserve':
            case 'reply': {
              const modelId = models.get(step.id) ?? step.model;
              models.set(step.id, modelId);
              const expected = model.command(now, () => model.reserve(`r${step.id}`, PRICES[modelId]! * 1e6, now));
              if (step.kind === 'reserve') {
                const got = await meter.reserve(identity(modelId, step.id)).then((r) => (r.replayed ? 'exists' : r.status), codeOf);
                if (expected === 'exists')
                  expect(['exists', 'INSUFFICIENT_CREDITS', 'AGENT_LIMIT_REACHED', 'REPLY_RELEASED', 'HOLD_EXPIRED']).toContain(got);
                else
                  expect(got).toBe(expected === 'held' ? 'held' : expected === 'capped' ? 'AGENT_LIMIT_REACHED' : 'INSUFFICIENT_CREDITS');
              } else {
                if (expected === 'held') model.command(now, () => model.settle(`r${step.id}`, now));
                const got = await meter
                  .reply({ ...identity(modelId, step.id), input: 'x' })
                  .then((r) => (r.replayed ? 'exists' : 'ok'), codeOf);
                if (expected === 'exists')
                  expect([
                    'exists',
                    'INSUFFICIENT_CREDITS',
                    'AGENT_LIMIT_REACHED',
                    'REPLY_RELEASED',
                    'HOLD_EXPIRED',
                    'REPLY_IN_PROGRESS',
                  ]).toContain(got);
                else expect(got).toBe(expected === 'held' ? 'ok' : expected === 'capped' ? 'AGENT_LIMIT_REACHED' : 'INSUFFICIENT_CREDITS');
              }
              break;
            }
            case 'settle': {
              model.current(now);
              const expected = model.command(now, () => model.settle(`r${step.id}`, now));
              const got = await meter
                .settle({ workspaceId: 'ws', replyId: `r${step.id}` })
                .then((r) => (r.replayed ? 'settled' : 'settled-now'), codeOf);
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
              const expected = model.command(now, () => model.release(`r${step.id}`, now));
              const got = await meter
                .release({ workspaceId: 'ws', replyId: `r${step.id}` })
                .then((r) => (r.replayed ? 'released' : 'released-now'), codeOf);
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
              model.command(now, () => model.topUp(`p${step.id}-${step.credits}-${step.expiresInMs}`, step.credits * 1e6, expiresAt, now));
              await meter.addCredits({
                workspaceId: 'ws',
                credits: step.credits,
                grantId: `p${step.id}-${step.credits}-${step.expiresInMs}`,
                ...(expiresAt !== null && { expiresAt: new Date(expiresAt) }),
              });
              break;
            }
            case 'refund': {
              const expected = model.command(now, () => model.refund(`r${step.id}`, `f${step.refundId}`, now));
              const got = await meter
                .refund({ workspaceId: 'ws', replyId: `r${step.id}`, refundId: `f${step.refundId}`, reason: 'test' })
                .then((r) => (r.replayed ? 'replayed' : 'refunded'), codeOf);
              expect(got).toBe(expected);
              break;
            }
            case 'adjust': {
              const expected = model.command(now, () => model.adjust(`a${step.id}`, step.credits * 1e6, now));
              const got = await meter
                .adjust({ workspaceId: 'ws', adjustmentId: `a${step.id}`, credits: step.credits, reason: 'test' })
                .then((r) => (r.replayed ? 'replayed' : 'adjusted'), codeOf);
              expect(got).toBe(expected);
              break;
            }
            case 'cap':
              model.current(now);
              model.cap = step.credits === null ? null : step.credits * 1e6;
              await meter.setAgentLimit({ workspaceId: 'ws', agentId: 'a', credits: step.credits });
              break;
            case 'recharge': {
              model.current(now);
              model.recharge = { below: step.below * 1e6, amount: step.credits * 1e6, armed: true, count: model.recharge?.count ?? 0 };
              await meter.setRecharge({ workspaceId: 'ws', recharge: { below: step.below, credits: step.credits } });
              break;
            }
            case 'delete': {
              // Erased with the ledger kept; the id is created afresh: a new account with nothing of the old one.
              await meter.deleteWorkspace({ workspaceId: 'ws', keepLedger: true });
              await meter.createWorkspace({ workspaceId: 'ws', plan: 'free' });
              model = new Model(now, 'free', announced);
              models.clear();
              break;
            }
            case 'changePlan':
              model.command(now, () => model.changePlan(step.plan, now));
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
          expect(heard).toEqual(announced);
          expect({ available, held, plan: ws.plan }).toEqual({
            available: model.available(clock.ms),
            held: model.held(),
            plan: model.plan,
          });
          expect(Math.round((await ledgerSum(meter, 'ws')) * 1e6)).toBe(available + held);
        }
      }),
      { numRuns: 300 },
    );
  }, 120_000);
});

const echo = { generate: async () => ({ output: 'ok' }) };

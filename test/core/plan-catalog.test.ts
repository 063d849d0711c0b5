import { describe, expect, it } from 'vitest';
import { DEFAULT_PLANS, definePlans } from '../../src/index.js';

describe('DEFAULT_PLANS', () => {
  it('grants the documented monthly allotments', () => {
    const allotments = Object.fromEntries(
      DEFAULT_PLANS.plans.map((p) => [p.id, p.monthlyCredits === null ? null : Number(p.monthlyCredits)]),
    );
    expect(allotments).toEqual({ free: 100, hobby: 2000, standard: 12000, pro: 40000, enterprise: null });
  });

  it('has no rollover by default', () => {
    for (const plan of DEFAULT_PLANS.plans) expect(Number(plan.rolloverCap)).toBe(0);
  });

  it('fails on an unknown plan', () => {
    expect(() => DEFAULT_PLANS.require('platinum')).toThrow(expect.objectContaining({ code: 'UNKNOWN_PLAN' }));
  });
});

describe('definePlans', () => {
  it('accepts a custom catalog with rollover', () => {
    const plans = definePlans([{ id: 'team', name: 'Team', monthlyCredits: 5000, rolloverCap: 2500 }]);
    expect(Number(plans.require('team').rolloverCap)).toBe(2500);
    expect(plans.require('team').rolloverCapMicros).toBe(2_500_000_000);
  });

  it.each([
    [
      [
        { id: 'a', name: 'A', monthlyCredits: 1 },
        { id: 'a', name: 'A', monthlyCredits: 2 },
      ],
      'plans.1.id',
    ],
    [[{ id: 'a', name: 'A', monthlyCredits: -5 }], 'plans.0.monthlyCredits'],
    [[{ id: 'a', name: 'A', monthlyCredits: 'lots' }], 'plans.0.monthlyCredits'],
    [[{ id: 'a', name: 'A', monthlyCredits: 1, rolloverCap: Infinity }], 'plans.0.rolloverCap'],
  ])('refuses a bad catalog (%#) naming %s', (entries, field) => {
    expect(() => definePlans(entries as never)).toThrow(expect.objectContaining({ code: 'INVALID_INPUT', field }));
  });
});

import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { periodBounds, periodIndexAt, periodStart } from '../../src/index.js';

const at = (iso: string) => Date.parse(iso);
const iso = (ms: number) => new Date(ms).toISOString();

describe('billing periods', () => {
  it('clamps a Jan 31 anchor to month ends, computed from the anchor', () => {
    const anchor = at('2026-01-31T10:00:00Z');
    expect([1, 2, 3, 4].map((n) => iso(periodStart(anchor, n)))).toEqual([
      '2026-02-28T10:00:00.000Z',
      '2026-03-31T10:00:00.000Z',
      '2026-04-30T10:00:00.000Z',
      '2026-05-31T10:00:00.000Z',
    ]);
  });

  it('gives Feb 29 in a leap year', () => {
    expect(iso(periodStart(at('2028-01-31T00:00:00Z'), 1))).toBe('2028-02-29T00:00:00.000Z');
  });

  it('crosses the year: Dec 31 → Jan 31', () => {
    expect(iso(periodStart(at('2026-12-31T23:30:00Z'), 1))).toBe('2027-01-31T23:30:00.000Z');
  });

  it('is half-open: the end instant belongs to the next period', () => {
    const anchor = at('2026-03-15T00:00:00Z');
    const { end } = periodBounds(anchor, 0);
    expect(periodIndexAt(anchor, end - 1)).toBe(0);
    expect(periodIndexAt(anchor, end)).toBe(1);
  });

  it('ignores the server time zone', () => {
    const before = process.env.TZ;
    process.env.TZ = 'Pacific/Kiritimati';
    try {
      expect(iso(periodStart(at('2026-01-31T23:00:00Z'), 1))).toBe('2026-02-28T23:00:00.000Z');
    } finally {
      process.env.TZ = before;
    }
  });

  it('finds the period containing any instant', () => {
    fc.assert(
      fc.property(
        fc.date({ min: new Date('2000-01-01'), max: new Date('2090-01-01'), noInvalidDate: true }),
        fc.integer({ min: 0, max: 400 * 24 * 3600 * 1000 * 3 }),
        (anchorDate, offset) => {
          const anchor = anchorDate.getTime();
          const index = periodIndexAt(anchor, anchor + offset);
          const { start, end } = periodBounds(anchor, index);
          expect(start).toBeLessThanOrEqual(anchor + offset);
          expect(anchor + offset).toBeLessThan(end);
        },
      ),
    );
  });
});

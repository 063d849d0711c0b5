import { Decimal } from 'decimal.js';
import { describe, expect, it } from 'vitest';
import { buildUsageSeries } from '../../src/report/index.js';
import { makeReport, row } from './fixtures.js';

const days = makeReport(
  [
    row('support', 12, 3, '2026-11-02'),
    row('sales', 4, 2, '2026-11-02'),
    row('faq', 0, 5, '2026-11-02'),
    row('sales', '2.5', 1, '2026-11-05'),
    row('support', 8, 2, '2026-11-30'),
  ],
  { interval: 'day' },
);

describe('buildUsageSeries', () => {
  it('buckets - every day of the window, empty ones included', () => {
    const series = buildUsageSeries(days);
    expect(series.buckets).toHaveLength(30);
    expect(series.buckets[0]?.start.toISOString()).toBe('2026-11-01T00:00:00.000Z');
    expect(series.buckets[29]?.start.toISOString()).toBe('2026-11-30T00:00:00.000Z');
    expect(series.buckets[29]?.end.toISOString()).toBe('2026-12-01T00:00:00.000Z');
    expect(series.buckets[0]?.credits.toString()).toBe('0');
  });

  it('stacking - each bucket sums its keys, each key sums its buckets, both sum to the report', () => {
    const series = buildUsageSeries(days);
    expect(series.buckets[1]?.credits.toString()).toBe('16');
    expect(series.buckets[1]?.replies).toBe(10);
    expect(series.buckets[4]?.credits.toString()).toBe('2.5');
    const byKey = Object.fromEntries(series.series.map((entry) => [entry.key, [entry.credits.toString(), entry.replies]]));
    expect(byKey).toEqual({ faq: ['0', 5], sales: ['6.5', 3], support: ['20', 5] });
    const bucketSum = series.buckets.reduce((sum, bucket) => sum.plus(bucket.credits), new Decimal(0));
    const keySum = series.series.reduce((sum, entry) => sum.plus(entry.credits), new Decimal(0));
    expect(bucketSum.equals(days.totalCredits)).toBe(true);
    expect(keySum.equals(days.totalCredits)).toBe(true);
    expect(series.totalCredits.toString()).toBe('26.5');
    expect(series.totalReplies).toBe(days.totalReplies);
    for (const [index, bucket] of series.buckets.entries()) {
      const stacked = series.series.reduce((sum, entry) => sum.plus(entry.points[index]?.credits ?? 0), new Decimal(0));
      expect(stacked.equals(bucket.credits)).toBe(true);
    }
  });

  it('order - code-unit order by default, stable across windows', () => {
    expect(buildUsageSeries(days).series.map((entry) => entry.key)).toEqual(['faq', 'sales', 'support']);
    const other = makeReport([row('support', 1, 1, '2026-11-03'), row('faq', 9, 9, '2026-11-03')], { interval: 'day' });
    expect(buildUsageSeries(other).series.map((entry) => entry.key)).toEqual(['faq', 'support']);
  });

  it('order - the host order first, and an absent key keeps its colour slot', () => {
    const series = buildUsageSeries(days, { order: ['support', 'billing', 'sales'] });
    expect(series.series.map((entry) => [entry.key, entry.colorIndex])).toEqual([
      ['support', 0],
      ['sales', 2],
      ['faq', 3],
    ]);
  });

  it('weeks - ISO weeks from the Monday on or before the window start', () => {
    const weeks = makeReport([row('a', 3, 1, '2026-10-26'), row('a', 5, 2, '2026-11-30')], { interval: 'week' });
    const series = buildUsageSeries(weeks);
    expect(series.buckets.map((bucket) => bucket.start.toISOString().slice(0, 10))).toEqual([
      '2026-10-26',
      '2026-11-02',
      '2026-11-09',
      '2026-11-16',
      '2026-11-23',
      '2026-11-30',
    ]);
    expect(series.buckets.map((bucket) => bucket.credits.toNumber())).toEqual([3, 0, 0, 0, 0, 5]);
  });

  it('months - calendar months', () => {
    const months = makeReport([row('a', 7, 7, '2026-09-01')], {
      interval: 'month',
      from: '2026-09-15T00:00:00Z',
      to: '2026-12-01T00:00:00Z',
    });
    expect(buildUsageSeries(months).buckets.map((bucket) => bucket.start.toISOString().slice(0, 7))).toEqual([
      '2026-09',
      '2026-10',
      '2026-11',
    ]);
  });

  it('no interval - the window is one bucket', () => {
    const totals = makeReport([row('support', 20, 5), row('sales', '6.5', 3)]);
    const series = buildUsageSeries(totals);
    expect(series.buckets).toHaveLength(1);
    expect(series.buckets[0]?.credits.toString()).toBe('26.5');
  });

  it('empty - buckets without series', () => {
    const series = buildUsageSeries(makeReport([], { interval: 'day' }));
    expect(series.series).toEqual([]);
    expect(series.buckets).toHaveLength(30);
    expect(series.totalCredits.toString()).toBe('0');
  });

  it('limits - refuses windows with too many buckets', () => {
    const huge = makeReport([], { interval: 'day', from: '2000-01-01T00:00:00Z', to: '2030-01-01T00:00:00Z' });
    expect(() => buildUsageSeries(huge)).toThrow(/more than 1000 buckets/);
    expect(buildUsageSeries(huge, { maxBuckets: 20_000 }).buckets.length).toBe(10_958);
  });
});

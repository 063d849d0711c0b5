import { Decimal } from 'decimal.js';
import { describe, expect, it } from 'vitest';
import { formatBucket, formatCredits, formatDateTime, formatWindow, REPORT_PALETTE, seriesColor } from '../../src/report/index.js';

describe('formatting', () => {
  it('formatCredits - exact, grouped by thousands, no trailing zeros', () => {
    expect(formatCredits(new Decimal(0))).toBe('0');
    expect(formatCredits(new Decimal(12000))).toBe('12,000');
    expect(formatCredits(new Decimal('1234567.000001'))).toBe('1,234,567.000001');
    expect(formatCredits(new Decimal('0.50'))).toBe('0.5');
    expect(formatCredits(new Decimal(-1500))).toBe('-1,500');
    expect(formatCredits('1e21')).toBe('1,000,000,000,000,000,000,000');
  });

  it('formatDateTime - UTC whatever the process time zone', () => {
    expect(formatDateTime(new Date('2026-12-01T09:05:00Z'))).toBe('1 Dec 2026, 09:05 UTC');
  });

  it('formatBucket - day, ISO week and month labels', () => {
    const monday = new Date('2026-11-02T00:00:00Z');
    expect(formatBucket(monday, 'day', 'axis')).toBe('Nov 2');
    expect(formatBucket(monday, 'day', 'full')).toBe('2 Nov 2026');
    expect(formatBucket(monday, 'week', 'full')).toBe('Week of 2 Nov 2026');
    expect(formatBucket(new Date('2026-11-01T00:00:00Z'), 'month', 'full')).toBe('November 2026');
    expect(formatBucket(new Date('2026-11-01T00:00:00Z'), 'month', 'axis')).toBe('Nov 2026');
  });

  it('formatWindow - an exclusive end shows as the last day it covers', () => {
    expect(formatWindow(new Date('2026-11-01T00:00:00Z'), new Date('2026-12-01T00:00:00Z'))).toBe('1 Nov 2026 – 30 Nov 2026');
    expect(formatWindow(new Date('2026-11-01T00:00:00Z'), new Date('2026-11-02T00:00:00Z'))).toBe('1 Nov 2026');
  });

  it('seriesColor - the palette in order, cycling', () => {
    expect(seriesColor(0)).toBe(REPORT_PALETTE[0]);
    expect(seriesColor(REPORT_PALETTE.length + 1)).toBe(REPORT_PALETTE[1]);
    expect(seriesColor(2, ['#000', '#111'])).toBe('#000');
    expect(() => seriesColor(0, [])).toThrow(RangeError);
  });
});

import { Decimal } from 'decimal.js';
import { describe, expect, it } from 'vitest';
import { REPORT_PALETTE, renderUsageChart } from '../../src/report/index.js';
import { HOSTILE, makeReport, REPORT_TAGS, row, tableRows, tagNames, text } from './fixtures.js';

const report = makeReport(
  [
    row('support', 12, 3, '2026-11-02'),
    row('sales', 4, 2, '2026-11-02'),
    row('faq', 0, 5, '2026-11-02'),
    row('sales', '2.5', 1, '2026-11-05'),
    row('support', 8, 2, '2026-11-30'),
  ],
  { interval: 'day' },
);

interface Segment {
  key: string;
  credits: string;
  y: number;
  height: number;
  fill: string;
}

function segments(html: string, day: string): Segment[] {
  const group = new RegExp(`<g data-bucket="${day}"[^>]*>([\\s\\S]*?)</g>`).exec(html)?.[1] ?? '';
  return [...group.matchAll(/<rect ([^>]*)>/g)].map((match) => {
    const attribute = (name: string): string => new RegExp(`\\b${name}="([^"]*)"`).exec(match[1] as string)?.[1] ?? '';
    return {
      key: attribute('data-key'),
      credits: attribute('data-credits'),
      y: Number(attribute('y')),
      height: Number(attribute('height')),
      fill: attribute('fill'),
    };
  });
}

describe('renderUsageChart', () => {
  it('svg - an image with a title and a description that name the window and totals', () => {
    const html = renderUsageChart(report);
    expect(html).toContain('role="img" aria-labelledby="bb-usage-title bb-usage-desc"');
    expect(html).toContain('<title id="bb-usage-title">Credits per day by agent</title>');
    const desc = text(/<desc id="bb-usage-desc">([\s\S]*?)<\/desc>/.exec(html)?.[1] ?? '');
    expect(desc).toContain('from 1 Nov 2026 – 30 Nov 2026');
    expect(desc).toContain('Total 26.5 credits over 13 replies');
    expect(desc).toContain('Most credits: support 20, sales 6.5, faq 0');
    expect(desc).toContain('Busiest day: 2 Nov 2026 with 16 credits');
    expect(text(html)).toContain('1 Nov 2026 – 30 Nov 2026 · 26.5 credits · 13 replies');
  });

  it('stacking - segments carry the rows, stack without gaps, and the bar height is the bucket total', () => {
    const html = renderUsageChart(report);
    const stack = segments(html, '2026-11-02');
    expect(stack.map((s) => [s.key, s.credits])).toEqual([
      ['sales', '4'],
      ['support', '12'],
    ]);
    const [bottom, top] = stack as [Segment, Segment];
    expect(top.y + top.height).toBeCloseTo(bottom.y, 1);
    // plot height 238, the axis tops out at 20 (ticks of 5) for a peak of 16
    expect(bottom.height + top.height).toBeCloseTo((16 / 20) * 238, 1);
    expect(bottom.height / top.height).toBeCloseTo(4 / 12, 2);
    expect(html).toContain('<g data-bucket="2026-11-02" data-credits="16">');
    expect(segments(html, '2026-11-01')).toEqual([]);
    for (const day of ['2026-11-05', '2026-11-30']) expect(segments(html, day)).toHaveLength(1);
    const all = [...html.matchAll(/<rect [^>]*data-credits="([^"]*)"/g)].map((m) => new Decimal(m[1] as string));
    expect(all.reduce((sum, c) => sum.plus(c), new Decimal(0)).equals(report.totalCredits)).toBe(true);
  });

  it('axis - round ticks from 0 to the top', () => {
    const html = renderUsageChart(report);
    const ticks = [...(/<g class="bb-grid">([\s\S]*?)<\/g>/.exec(html)?.[1] ?? '').matchAll(/<text[^>]*>([^<]*)<\/text>/g)].map(
      (m) => m[1],
    );
    expect(ticks).toEqual(['0', '5', '10', '15', '20']);
  });

  it('colours - from the fixed palette by key order, the same in legend and bars', () => {
    const html = renderUsageChart(report, { order: ['support', 'sales', 'faq'] });
    const [support, sales] = segments(html, '2026-11-02') as [Segment, Segment];
    expect([support.key, sales.key]).toEqual(['support', 'sales']);
    expect(support.fill).toBe(REPORT_PALETTE[0]);
    expect(sales.fill).toBe(REPORT_PALETTE[1]);
    expect(html).toContain(
      `<li data-key="faq"><svg class="bb-swatch" viewBox="0 0 12 12" width="12" height="12" aria-hidden="true" focusable="false"><rect width="12" height="12" rx="2" fill="${REPORT_PALETTE[2]}"/>`,
    );
    const custom = renderUsageChart(report, { palette: ['#111111'] });
    expect(segments(custom, '2026-11-02').map((s) => s.fill)).toEqual(['#111111', '#111111']);
  });

  it('legend - every key with its credits and replies, zero-credit replies included', () => {
    const html = renderUsageChart(report);
    const legend = [...html.matchAll(/<li data-key="([^"]*)">([\s\S]*?)<\/li>/g)].map((m) => text(m[2] as string));
    expect(legend).toEqual(['faq 0 credits · 5 replies', 'sales 6.5 credits · 3 replies', 'support 20 credits · 5 replies']);
  });

  it('table fallback - the same numbers with caption and scoped headers, in a details element by default', () => {
    const html = renderUsageChart(report);
    expect(html).toContain('<details class="bb-data"><summary>Show the numbers as a table</summary>');
    expect(html).toContain('<caption id="bb-usage-table-caption">Credits per day by agent, 1 Nov 2026 – 30 Nov 2026</caption>');
    expect(tableRows(html, 'tfoot')).toEqual([['Total', '0', '6.5', '20', '26.5', '13']]);
    expect(tableRows(html, 'tbody')[1]).toEqual(['2 Nov 2026', '0', '4', '12', '16', '10']);
    expect(renderUsageChart(report, { table: 'visible' })).not.toContain('<details');
    expect(renderUsageChart(report, { table: 'none' })).not.toContain('<table');
  });

  it('empty - a status message and no chart', () => {
    const html = renderUsageChart(makeReport([], { interval: 'week' }));
    expect(html).toContain('data-state="empty"');
    expect(html).toContain('<p class="bb-empty" role="status">No replies between 1 Nov 2026 – 30 Nov 2026.</p>');
    expect(html).not.toContain('<svg');
  });

  it('zero credits - replies without charge draw an empty axis but still list the replies', () => {
    const html = renderUsageChart(makeReport([row('faq', 0, 7, '2026-11-03')], { interval: 'day' }));
    expect(html).not.toMatch(/<rect [^>]*data-key/);
    expect(text(html)).toContain('faq 0 credits · 7 replies');
  });

  it('deterministic - same input, same bytes; many buckets thin the axis labels', () => {
    expect(renderUsageChart(report)).toBe(renderUsageChart(report));
    const labels = [...(/<g class="bb-x-labels">([\s\S]*?)<\/g>/.exec(renderUsageChart(report))?.[1] ?? '').matchAll(/<text/g)];
    expect(labels.length).toBeLessThanOrEqual(12);
    expect(labels.length).toBeGreaterThan(4);
  });

  it('escaping - hostile agent names, titles, labels and ids', () => {
    for (const hostile of HOSTILE) {
      const hostileReport = makeReport([row(hostile, 3, 1, '2026-11-02'), row('ok', 1, 1, '2026-11-02')], {
        interval: 'day',
        workspaceId: hostile,
      });
      const html = renderUsageChart(hostileReport, {
        title: hostile,
        idPrefix: hostile,
        labels: { ok: hostile },
        palette: [hostile],
        table: 'visible',
      });
      expect([...tagNames(html)].filter((tag) => !REPORT_TAGS.has(tag))).toEqual([]);
      expect(html).not.toContain(hostile);
      expect(text(html)).toContain(hostile);
    }
  });

  it('options - width and height must be positive', () => {
    expect(() => renderUsageChart(report, { width: 0 })).toThrow(RangeError);
    expect(renderUsageChart(report, { width: 360, height: 200 })).toContain('viewBox="0 0 360 200"');
  });
});

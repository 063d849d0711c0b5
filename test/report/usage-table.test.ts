import { describe, expect, it } from 'vitest';
import { renderUsageTable } from '../../src/report/index.js';
import { HOSTILE, makeReport, REPORT_TAGS, row, tableRows, tagNames, text } from './fixtures.js';

describe('renderUsageTable', () => {
  it('totals - one row per key, most credits first, with shares and a total row', () => {
    const report = makeReport([row('support', 1200, 300), row('faq', 0, 40), row('sales', '400.5', 200)]);
    const html = renderUsageTable(report);
    expect(tableRows(html, 'thead')).toEqual([['Agent', 'Replies', 'Credits', 'Share']]);
    expect(tableRows(html, 'tbody')).toEqual([
      ['support', '300', '1,200', '75.0%'],
      ['sales', '200', '400.5', '25.0%'],
      ['faq', '40', '0', '0.0%'],
    ]);
    expect(tableRows(html, 'tfoot')).toEqual([['Total', '540', '1,600.5', '100.0%']]);
    expect(html).toContain('<caption id="bb-usage-table-caption">Credits by agent, 1 Nov 2026 – 30 Nov 2026</caption>');
    expect(html).toContain('<th scope="row">support</th>');
  });

  it('totals - shares are a dash when nothing was charged (self-hosted, BYO)', () => {
    const html = renderUsageTable(makeReport([row('gpt-4o', 0, 12)], { groupBy: 'model' }), { labels: { 'gpt-4o': 'GPT-4o' } });
    expect(tableRows(html, 'tbody')).toEqual([['GPT-4o', '12', '0', '–']]);
    expect(tableRows(html, 'thead')[0]?.[0]).toBe('Model');
  });

  it('interval - a row per bucket, a column per key, totals both ways', () => {
    const report = makeReport([row('support', 12, 3, '2026-11-02'), row('sales', 4, 2, '2026-11-02'), row('sales', 1, 1, '2026-11-04')], {
      interval: 'day',
      to: '2026-11-05T00:00:00Z',
    });
    const html = renderUsageTable(report, { order: ['support', 'sales'] });
    expect(tableRows(html, 'thead')).toEqual([['Day', 'support', 'sales', 'Total credits', 'Replies']]);
    expect(tableRows(html, 'tbody')).toEqual([
      ['1 Nov 2026', '0', '0', '0', '0'],
      ['2 Nov 2026', '12', '4', '16', '5'],
      ['3 Nov 2026', '0', '0', '0', '0'],
      ['4 Nov 2026', '0', '1', '1', '1'],
    ]);
    expect(tableRows(html, 'tfoot')).toEqual([['Total', '12', '5', '17', '6']]);
  });

  it('empty - a status message instead of a table', () => {
    const html = renderUsageTable(makeReport([]));
    expect(html).toBe('<p class="bb-empty" role="status" id="bb-usage-table">No replies between 1 Nov 2026 – 30 Nov 2026.</p>');
    expect(renderUsageTable(makeReport([]), { emptyMessage: '<none>' })).toContain('&lt;none&gt;');
  });

  it('escaping - hostile keys, labels and captions', () => {
    for (const hostile of HOSTILE) {
      const html = renderUsageTable(makeReport([row(hostile, 1, 1, '2026-11-02')], { interval: 'day' }), {
        caption: hostile,
        keyLabel: hostile,
        idPrefix: hostile,
      });
      expect([...tagNames(html)].filter((tag) => !REPORT_TAGS.has(tag))).toEqual([]);
      expect(html).not.toContain(hostile);
      expect(text(html)).toContain(hostile);
    }
  });
});

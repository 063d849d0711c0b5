import { Decimal } from 'decimal.js';
import { describe, expect, it } from 'vitest';
import { DEFAULT_MODEL_PRICES } from '../../src/core/price-table.js';
import { balanceState, renderBalanceCard } from '../../src/report/index.js';
import { HOSTILE, makeSummary, REPORT_TAGS, tableRows, tagNames, text } from './fixtures.js';

function field(html: string, name: string): string {
  const match = new RegExp(`data-field="${name}">([\\s\\S]*?)</(dd|span|td|p)>`).exec(html);
  if (!match) throw new Error(`no field ${name}`);
  return text(match[1] as string);
}

describe('renderBalanceCard', () => {
  it('numbers - every figure of the summary, exactly', () => {
    const html = renderBalanceCard(makeSummary());
    expect(field(html, 'available')).toBe('1,234.5');
    expect(field(html, 'balance')).toBe('1,234.5 credits');
    expect(field(html, 'held')).toBe('4 credits');
    expect(field(html, 'allotment')).toBe('2,000 credits');
    expect(field(html, 'used')).toBe('815.5 credits');
    expect(field(html, 'top-up')).toBe('50 credits');
    expect(field(html, 'renews-at')).toBe('1 Dec 2026, 09:00 UTC');
    expect(html).toContain('<time datetime="2026-12-01T09:00:00.000Z">');
    expect(text(html)).toContain('Workspace acme · Hobby plan');
  });

  it('meter - used of the allotment as an ARIA meter', () => {
    const html = renderBalanceCard(makeSummary());
    expect(html).toContain('role="meter"');
    expect(html).toContain('aria-valuemin="0" aria-valuemax="2000" aria-valuenow="815.5"');
    expect(html).toContain('aria-valuetext="815.5 of 2,000 credits used this period (40.8%)"');
    expect(html).toContain('<rect class="bb-meter-fill" width="40.8"');
  });

  it('replies left - per model, in price-table order with names and prices; free models unlimited', () => {
    const summary = makeSummary({ repliesLeft: { 'gpt-4o': 246, 'bookbag-local': null, 'claude-haiku-4-5': 617 } });
    const html = renderBalanceCard(summary, { models: DEFAULT_MODEL_PRICES });
    expect(tableRows(html, 'tbody')).toEqual([
      ['Bookbag Local', '1', 'Unlimited'],
      ['Claude Haiku 4.5', '2', '617'],
      ['GPT-4o', '5', '246'],
    ]);
    expect(html).toContain('<caption>Replies left at this balance</caption>');
    expect(html).toContain('<th scope="col">Model</th>');
  });

  it('replies left - model ids without a price table, in the summary order', () => {
    const html = renderBalanceCard(makeSummary({ repliesLeft: { b: 3, a: 12000 } }));
    expect(tableRows(html, 'tbody')).toEqual([
      ['b', '3'],
      ['a', '12,000'],
    ]);
    expect(renderBalanceCard(makeSummary(), { showRepliesLeft: false })).not.toContain('<table');
  });

  it('state - ok, low from 80% used, blocked at zero with the renewal time', () => {
    expect(balanceState(makeSummary())).toBe('ok');
    const ok = renderBalanceCard(makeSummary());
    expect(ok).toContain('data-state="ok"');
    expect(ok).not.toContain('data-field="notice"');

    const low = makeSummary({ usedThisPeriod: new Decimal(1600), balance: new Decimal(400) });
    expect(balanceState(low)).toBe('low');
    expect(field(renderBalanceCard(low), 'notice')).toBe("80% of this period's allotment is used. It renews on 1 Dec 2026, 09:00 UTC.");
    expect(balanceState(low, 0.9)).toBe('ok');

    const empty = makeSummary({
      balance: new Decimal(0),
      usedThisPeriod: new Decimal(2000),
      topUpBalance: new Decimal(0),
      repliesLeft: { 'bookbag-local': 0, 'gpt-4o': 0 },
    });
    expect(balanceState(empty)).toBe('blocked');
    const html = renderBalanceCard(empty);
    expect(html).toContain('data-state="blocked"');
    expect(html).toContain('role="alert"');
    expect(field(html, 'notice')).toBe(
      'Out of credits. AI replies are blocked until the allotment renews on 1 Dec 2026, 09:00 UTC, or until credits are added.',
    );
  });

  it('state - blocked when what is left pays for no model', () => {
    const summary = makeSummary({ balance: new Decimal('0.5'), repliesLeft: { 'gpt-4o-mini': 0, 'gpt-4o': 0, free: null } });
    expect(balanceState(summary)).toBe('blocked');
  });

  it('pending plan - a downgrade shows with its date', () => {
    const html = renderBalanceCard(makeSummary({ plan: 'standard', pendingPlan: 'hobby' }), {
      planNames: { standard: 'Standard', hobby: 'Hobby' },
    });
    expect(text(html)).toContain('Standard plan · changes to Hobby on 1 Dec 2026, 09:00 UTC');
  });

  it('options - title, heading level, id prefix and formatters', () => {
    const html = renderBalanceCard(makeSummary(), {
      title: 'Your balance',
      headingLevel: 3,
      idPrefix: 'ws-1',
      formatCredits: (credits) => `${credits.toFixed(2)} cr`,
      formatDate: (date) => date.toISOString(),
    });
    expect(html).toContain('<h3 class="bb-title" id="ws-1-heading">Your balance</h3>');
    expect(html).toContain('id="ws-1" aria-labelledby="ws-1-heading"');
    expect(field(html, 'available')).toBe('1234.50 cr');
    expect(field(html, 'renews-at')).toBe('2026-12-01T09:00:00.000Z');
  });

  it('escaping - hostile workspace, plan, model ids and names never become markup', () => {
    for (const hostile of HOSTILE) {
      const html = renderBalanceCard(
        makeSummary({ workspaceId: hostile, plan: hostile, pendingPlan: hostile, repliesLeft: { [hostile]: 1 } }),
        {
          models: { models: [{ id: hostile, name: hostile }] },
          title: hostile,
          idPrefix: hostile,
          planNames: { [hostile]: hostile },
        },
      );
      expect([...tagNames(html)].filter((tag) => !REPORT_TAGS.has(tag))).toEqual([]);
      expect(html).not.toContain(hostile);
      expect(text(html)).toContain(hostile);
    }
  });

  it('deterministic - the same summary renders the same bytes', () => {
    expect(renderBalanceCard(makeSummary(), { models: DEFAULT_MODEL_PRICES })).toBe(
      renderBalanceCard(makeSummary(), { models: DEFAULT_MODEL_PRICES }),
    );
  });
});

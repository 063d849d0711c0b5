import { mkdir } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import { Decimal } from 'decimal.js';
import { type Browser, chromium, type Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { type DemoServer, startDemoServer } from '../../examples/web/server.js';
import type { LedgerEntry } from '../../src/index.js';
import { formatCredits } from '../../src/report/index.js';

const IMAGES = fileURLToPath(new URL('../../docs/images/', import.meta.url));
const CHROMIUM_ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--no-first-run',
  '--disable-quic',
];

let demo: DemoServer;
let browser: Browser;
let page: Page;
const consoleErrors: string[] = [];

async function allEntries(): Promise<LedgerEntry[]> {
  const entries: LedgerEntry[] = [];
  let cursor: string | undefined;
  do {
    const page = await demo.meter.ledger({ workspaceId: demo.workspaceId, limit: 1000, ...(cursor && { cursor }) });
    entries.push(...page.entries);
    cursor = page.nextCursor;
  } while (cursor);
  return entries;
}

async function field(name: string): Promise<string> {
  return (await page.locator(`[data-field="${name}"]`).first().innerText()).trim();
}

describe('billing and analytics pages in Chromium', () => {
  beforeAll(async () => {
    await mkdir(IMAGES, { recursive: true });
    demo = await startDemoServer();
    browser = await chromium.launch({ executablePath: inject('chromiumPath') || '/usr/bin/chromium', args: CHROMIUM_ARGS });
    page = await browser.newPage({ viewport: { width: 1100, height: 900 }, deviceScaleFactor: 1 });
    page.on('console', (message) => {
      if (message.type() === 'error' && !message.text().includes('status of 402')) consoleErrors.push(message.text());
    });
  });

  afterAll(async () => {
    await browser?.close();
    await demo?.close();
  });

  it('billing - the balance card and the usage tables show what the ledger holds', async () => {
    const response = await page.goto(`${demo.url}/billing`);
    expect(response?.status()).toBe(200);
    expect(response?.headers()['content-security-policy']).toContain("default-src 'none'");

    const summary = await demo.meter.getWorkspace(demo.workspaceId);
    const entries = await allEntries();
    const ledgerSum = entries.reduce((sum, entry) => sum.plus(entry.credits), new Decimal(0));
    expect(ledgerSum.equals(summary.balance.plus(summary.held))).toBe(true);
    const charged = entries
      .filter((entry) => entry.kind === 'reply' && entry.at >= summary.periodStart)
      .reduce((sum, entry) => sum.minus(entry.credits), new Decimal(0));
    expect(charged.equals(summary.usedThisPeriod)).toBe(true);

    expect(await field('available')).toBe(formatCredits(summary.balance));
    expect(await field('balance')).toBe(`${formatCredits(summary.balance)} credits`);
    expect(await field('used')).toBe(`${formatCredits(summary.usedThisPeriod)} credits`);
    expect(await field('allotment')).toBe('2,000 credits');
    expect(await field('top-up')).toBe(`${formatCredits(summary.topUpBalance)} credits`);
    expect(await field('renews-at')).toBe('1 Dec 2026, 09:00 UTC');
    expect(await page.locator('.bb-balance').getAttribute('data-state')).toBe('ok');
    const sonnetLeft = summary.repliesLeft['claude-sonnet-4-6'];
    expect(await page.locator('tr[data-model="claude-sonnet-4-6"] [data-field="replies-left"]').innerText()).toBe(String(sonnetLeft));

    const usage = await demo.meter.usage({
      workspaceId: demo.workspaceId,
      from: summary.periodStart,
      to: summary.periodEnd,
      groupBy: 'agent',
    });
    expect(usage.totalCredits.equals(summary.usedThisPeriod)).toBe(true);
    const table = page.locator('#usage-by-agent');
    for (const row of usage.rows) {
      const cells = await table.locator(`tr[data-key="${row.key}"] td`).allInnerTexts();
      expect(cells.slice(0, 2)).toEqual([formatCredits(row.replies), formatCredits(row.credits)]);
    }
    const keys = usage.rows.map((row) => row.key);
    expect(keys).toEqual(expect.arrayContaining(['support', 'sales', 'docs', 'faq', 'staging']));
    // BYO (faq) and self-hosted (staging) replies count, with 0 credits
    for (const key of ['faq', 'staging']) {
      const row = usage.rows.find((r) => r.key === key);
      expect(row?.credits.isZero()).toBe(true);
      expect(row?.replies).toBeGreaterThan(0);
    }
    expect(await table.locator('tfoot td').allInnerTexts()).toEqual([
      formatCredits(usage.totalReplies),
      formatCredits(usage.totalCredits),
      '100.0%',
    ]);

    // The stylesheet applied under the page's strict CSP
    expect(await page.evaluate('getComputedStyle(document.querySelector(".bb-balance")).borderTopLeftRadius')).toBe('12px');
    await page.screenshot({ path: `${IMAGES}billing.png`, fullPage: true });
  });

  it('analytics - the chart and its table carry the usage of the default window', async () => {
    expect((await page.goto(`${demo.url}/analytics`))?.status()).toBe(200);
    const usage = await demo.meter.usage({
      workspaceId: demo.workspaceId,
      from: '2026-11-01T00:00:00Z',
      to: '2026-11-28T00:00:00Z',
      groupBy: 'agent',
      interval: 'day',
    });
    const chart = page.locator('#credits-chart');
    await expect(chart.locator('svg[role="img"] > title').textContent()).resolves.toBe('Credits per day by agent');
    expect(await chart.locator('g[data-bucket]').count()).toBe(27);
    let segments = 0;
    for (const row of usage.rows) {
      if (row.credits.isZero()) continue;
      const day = row.bucket?.toISOString().slice(0, 10);
      expect(await chart.locator(`g[data-bucket="${day}"] rect[data-key="${row.key}"]`).getAttribute('data-credits')).toBe(
        row.credits.toFixed(),
      );
      segments++;
    }
    expect(await chart.locator('rect[data-key]').count()).toBe(segments);
    expect(await chart.locator('[data-field="summary"]').innerText()).toContain(
      `${formatCredits(usage.totalCredits)} credits · ${formatCredits(usage.totalReplies)} replies`,
    );
    expect(await chart.locator('.bb-legend li').allInnerTexts()).toHaveLength(5);
    // The data table (inside <details>) holds the same totals
    await chart.locator('details summary').click();
    expect(await chart.locator('tfoot td').last().innerText()).toBe(formatCredits(usage.totalReplies));
    await chart.locator('details summary').click();
    await page.screenshot({ path: `${IMAGES}analytics.png`, fullPage: true });
  });

  it('analytics - a new window from the form changes the chart', async () => {
    const before = await page.locator('#credits-chart svg.bb-chart').innerHTML();
    await page.fill('input[name="from"]', '2026-11-09');
    await page.fill('input[name="to"]', '2026-11-22');
    await page.selectOption('select[name="interval"]', 'week');
    await Promise.all([page.waitForURL(/interval=week/), page.click('form[action="/analytics"] button')]);
    expect(page.url()).toContain('from=2026-11-09&to=2026-11-22&interval=week');

    const usage = await demo.meter.usage({
      workspaceId: demo.workspaceId,
      from: '2026-11-09T00:00:00Z',
      to: '2026-11-23T00:00:00Z',
      groupBy: 'agent',
      interval: 'week',
    });
    const chart = page.locator('#credits-chart');
    expect(await chart.locator('g[data-bucket]').evaluateAll((groups) => groups.map((g) => g.getAttribute('data-bucket')))).toEqual([
      '2026-11-09',
      '2026-11-16',
    ]);
    for (const week of ['2026-11-09', '2026-11-16']) {
      const total = usage.rows
        .filter((row) => row.bucket?.toISOString().startsWith(week))
        .reduce((sum, row) => sum.plus(row.credits), new Decimal(0));
      expect(await chart.locator(`g[data-bucket="${week}"]`).getAttribute('data-credits')).toBe(total.toFixed());
    }
    expect(await chart.locator('svg > title').textContent()).toBe('Credits per week by agent');
    expect(await page.locator('#credits-chart svg.bb-chart').innerHTML()).not.toBe(before);
  });

  it('billing - spending the balance to zero shows the blocked state and the 402 answer', async () => {
    await page.goto(`${demo.url}/billing`);
    await page.selectOption('select[name="agent"]', 'docs');
    await page.selectOption('select[name="model"]', 'bookbag-local');
    await page.selectOption('select[name="count"]', 'all');
    const [answer] = await Promise.all([
      page.waitForResponse((response) => response.url().endsWith('/reply') && response.request().method() === 'POST'),
      page.click('form[action="/reply"] button'),
    ]);
    expect(answer.status()).toBe(402);
    expect(answer.headers()['retry-after']).toBeTruthy();
    await page.waitForLoadState();

    const summary = await demo.meter.getWorkspace(demo.workspaceId);
    expect(summary.balance.isZero()).toBe(true);
    expect(await field('available')).toBe('0');
    expect(await page.locator('.bb-balance').getAttribute('data-state')).toBe('blocked');
    expect(await page.locator('.bb-balance [role="alert"]').innerText()).toContain('Out of credits.');
    const http = await field('http-answer');
    expect(http).toContain('HTTP/1.1 402');
    expect(http).toContain('"code": "INSUFFICIENT_CREDITS"');
    expect(await page.locator('tr[data-model="gpt-4o"] [data-field="replies-left"]').innerText()).toBe('0');
    await page.screenshot({ path: `${IMAGES}billing-blocked.png`, fullPage: true });

    // The same refusal for an API client
    const json = await fetch(`${demo.url}/reply`, {
      method: 'POST',
      headers: { accept: 'application/json', 'content-type': 'application/x-www-form-urlencoded' },
      body: 'agent=support&model=claude-haiku-4-5&count=1',
    });
    expect(json.status).toBe(402);
    expect(json.headers.get('retry-after')).toBeTruthy();
    expect(await json.json()).toMatchObject({ code: 'INSUFFICIENT_CREDITS' });
    expect((await demo.meter.getWorkspace(demo.workspaceId)).balance.isZero()).toBe(true);
  });

  it('top-up - one purchase adds its credits once, however often the form is sent', async () => {
    const grantId = await page.locator('form[action="/top-up"] input[name="grantId"]').getAttribute('value');
    expect(grantId).toMatch(/^topup-/);
    await Promise.all([page.waitForURL(/flash=topup-added/), page.click('form[action="/top-up"] button')]);
    expect(await field('available')).toBe('500');
    expect(await page.locator('.bb-balance').getAttribute('data-state')).not.toBe('blocked');

    const again = await fetch(`${demo.url}/top-up`, {
      method: 'POST',
      headers: { 'content-type': 'application/x-www-form-urlencoded' },
      body: new URLSearchParams({ grantId: grantId ?? '', credits: '500' }).toString(),
      redirect: 'manual',
    });
    expect(again.status).toBe(303);
    expect(again.headers.get('location')).toBe('/billing?flash=topup-replayed');
    expect((await demo.meter.getWorkspace(demo.workspaceId)).balance.toString()).toBe('500');
    expect((await allEntries()).filter((entry) => entry.grantId === grantId && entry.kind === 'topup')).toHaveLength(1);
    expect(consoleErrors).toEqual([]);
  });
});

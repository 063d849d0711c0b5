import { Decimal } from 'decimal.js';
import type { UsageInterval, UsageReport, UsageRow, WorkspaceSummary } from '../../src/meter/types.js';

/** Hostile strings a host might pass through as agent, model or workspace ids. */
export const HOSTILE = ['<script>alert(1)</script>', '"><img src=x onerror=alert(1)>', "' onmouseover='alert(1)", '&amp;<b>'] as const;

/** A workspace summary with plausible numbers, overridable field by field. */
export function makeSummary(overrides: Partial<WorkspaceSummary> = {}): WorkspaceSummary {
  return {
    workspaceId: 'acme',
    plan: 'hobby',
    pendingPlan: undefined,
    balance: new Decimal('1234.5'),
    held: new Decimal(4),
    allotment: new Decimal(2000),
    usedThisPeriod: new Decimal('815.5'),
    topUpBalance: new Decimal(50),
    periodStart: new Date('2026-11-01T09:00:00Z'),
    periodEnd: new Date('2026-12-01T09:00:00Z'),
    renewsAt: new Date('2026-12-01T09:00:00Z'),
    repliesLeft: { 'bookbag-local': 1234, 'gpt-4o-mini': 1234, 'claude-haiku-4-5': 617, 'claude-sonnet-4-6': 308, 'gpt-4o': 246 },
    grants: [],
    agents: [],
    recharge: undefined,
    ...overrides,
  };
}

/** One usage row; `bucket` is a UTC day `YYYY-MM-DD`. */
export function row(key: string, credits: number | string, replies: number, bucket?: string): UsageRow {
  const base = { key, credits: new Decimal(credits), refunded: new Decimal(0), net: new Decimal(credits), replies };
  return bucket === undefined ? base : { ...base, bucket: new Date(`${bucket}T00:00:00Z`) };
}

/** A usage report over `[from, to)` with totals computed from the rows, as the meter returns it. */
export function makeReport(
  rows: readonly UsageRow[],
  window: { from?: string; to?: string; interval?: UsageInterval; groupBy?: UsageReport['groupBy']; workspaceId?: string } = {},
): UsageReport {
  return {
    workspaceId: window.workspaceId ?? 'acme',
    from: new Date(window.from ?? '2026-11-01T00:00:00Z'),
    to: new Date(window.to ?? '2026-12-01T00:00:00Z'),
    groupBy: window.groupBy ?? 'agent',
    ...(window.interval && { interval: window.interval }),
    rows,
    totalCredits: rows.reduce((sum, r) => sum.plus(r.credits), new Decimal(0)),
    totalRefunded: rows.reduce((sum, r) => sum.plus(r.refunded), new Decimal(0)),
    totalNet: rows.reduce((sum, r) => sum.plus(r.net), new Decimal(0)),
    totalReplies: rows.reduce((sum, r) => sum + r.replies, 0),
  };
}

/** Every opening tag name in `html`, to check that no host string became markup. */
export function tagNames(html: string): Set<string> {
  return new Set([...html.matchAll(/<([a-zA-Z][a-zA-Z0-9-]*)/g)].map((m) => (m[1] as string).toLowerCase()));
}

/** The tags the report renders; anything else in its output came from an unescaped string. */
export const REPORT_TAGS = new Set([
  'section',
  'h1',
  'h2',
  'h3',
  'h4',
  'h5',
  'h6',
  'p',
  'span',
  'strong',
  'code',
  'time',
  'div',
  'dl',
  'dt',
  'dd',
  'svg',
  'rect',
  'title',
  'desc',
  'g',
  'line',
  'text',
  'ul',
  'li',
  'details',
  'summary',
  'table',
  'caption',
  'thead',
  'tbody',
  'tfoot',
  'tr',
  'th',
  'td',
]);

/** Values of `attribute` on elements carrying `data-key="<key>"` (attribute order as rendered). */
export function attrs(html: string, selector: RegExp, attribute: string): string[] {
  const out: string[] = [];
  for (const match of html.matchAll(selector)) {
    const value = new RegExp(`\\s${attribute}="([^"]*)"`).exec(match[0]);
    if (value) out.push(value[1] as string);
  }
  return out;
}

/** The text of an element, with tags stripped and entities of the escaper decoded. */
export function text(html: string): string {
  return html
    .replace(/<[^>]*>/g, '')
    .replace(/&lt;/g, '<')
    .replace(/&gt;/g, '>')
    .replace(/&quot;/g, '"')
    .replace(/&#39;/g, "'")
    .replace(/&amp;/g, '&');
}

/** The cells of each `<tr>` in the first `<tbody>`/`<tfoot>` of `html`, as text. */
export function tableRows(html: string, part: 'thead' | 'tbody' | 'tfoot'): string[][] {
  const section = new RegExp(`<${part}>([\\s\\S]*?)</${part}>`).exec(html)?.[1] ?? '';
  return [...section.matchAll(/<tr[^>]*>([\s\S]*?)<\/tr>/g)].map((tr) =>
    [...(tr[1] as string).matchAll(/<t[hd][^>]*>([\s\S]*?)<\/t[hd]>/g)].map((cell) => text(cell[1] as string)),
  );
}

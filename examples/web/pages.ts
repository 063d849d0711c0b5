/**
 * The two screens of the demo, as whole HTML pages around the report module's fragments.
 * Everything a user or the store supplies is escaped by the report module or by `escapeHtml`.
 */
import { createHash } from 'node:crypto';
import { DEFAULT_MODEL_PRICES, type UsageInterval, type UsageReport, type WorkspaceSummary } from '../../src/index.js';
import { escapeHtml, formatCredits, REPORT_STYLES, renderBalanceCard, renderUsageChart, renderUsageTable } from '../../src/report/index.js';
import type { HttpErrorAnswer } from './http-error.js';

const PAGE_STYLES = `
*{box-sizing:border-box}
body{margin:0;background:#f5f7fa;color:#1f2933;font:14px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif}
.top{background:#fff;border-bottom:1px solid #e3e8ee}
.top-inner{max-width:1000px;margin:0 auto;padding:0 24px;display:flex;align-items:center;gap:32px;height:56px}
.brand{font-weight:700;font-size:16px;color:#1f2933;text-decoration:none}
.top nav{display:flex;gap:4px}
.top nav a{color:#5f6b7a;text-decoration:none;padding:6px 12px;border-radius:6px}
.top nav a[aria-current=page]{background:#eef2f7;color:#1f2933;font-weight:600}
main{max-width:1000px;margin:0 auto;padding:28px 24px 48px;display:grid;gap:20px}
main>*,.grid>*,.pair>*{min-width:0}
.pair{display:grid;grid-template-columns:1fr 1fr;gap:24px}
h1{font-size:24px;margin:0}
.lede{color:#5f6b7a;margin:4px 0 0}
.grid{display:grid;grid-template-columns:minmax(0,3fr) minmax(0,2fr);gap:20px;align-items:start}
.panel{background:#fff;border:1px solid #e3e8ee;border-radius:12px;padding:20px 24px}
.panel h2{font-size:16px;margin:0 0 4px}
.panel p{color:#5f6b7a;margin:0 0 12px}
form.inline{display:flex;flex-wrap:wrap;gap:10px;align-items:end;margin:0 0 16px}
form.inline:last-child{margin-bottom:0}
label{display:grid;gap:4px;font-size:12px;color:#5f6b7a;text-transform:uppercase;letter-spacing:.04em}
input,select{font:inherit;padding:7px 10px;border:1px solid #cfd6df;border-radius:8px;background:#fff;color:#1f2933;text-transform:none;letter-spacing:0}
button{font:inherit;font-weight:600;padding:8px 14px;border-radius:8px;border:1px solid #4e79a7;background:#4e79a7;color:#fff;cursor:pointer}
button.secondary{background:#fff;color:#4e79a7}
button:focus-visible,a:focus-visible,input:focus-visible,select:focus-visible{outline:3px solid #9cb8d9;outline-offset:1px}
.flash{background:#ecfdf3;border:1px solid #abefc6;color:#067647;border-radius:8px;padding:10px 14px}
.refused{background:#fff;border:1px solid #fecdca;border-radius:12px;padding:16px 24px}
.refused h2{color:#b42318;font-size:16px;margin:0 0 8px}
.refused pre{white-space:pre-wrap;overflow-wrap:anywhere;background:#f8f9fb;border:1px solid #e3e8ee;border-radius:8px;padding:12px;margin:0;overflow:auto;font-size:12px}
.presets{display:flex;gap:12px;flex-wrap:wrap;margin:0}
.presets a{color:#4e79a7}
footer{color:#8a94a3;font-size:12px;text-align:center}
`.trim();

/** The page's only stylesheet, allowed by its hash in the Content-Security-Policy. */
const STYLES = `${REPORT_STYLES}\n${PAGE_STYLES}`;
const STYLE_HASH = createHash('sha256').update(STYLES).digest('base64');

/**
 * A strict policy: no script at all, the one inline stylesheet by hash, forms posting back
 * here only. The report's markup has no inline style attribute, so nothing else is needed.
 */
export const CONTENT_SECURITY_POLICY = `default-src 'none'; style-src 'sha256-${STYLE_HASH}'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'`;

/** Model display names, for the model tables. */
const MODEL_NAMES: Readonly<Record<string, string>> = Object.fromEntries(
  DEFAULT_MODEL_PRICES.models.map((model) => [model.id, model.name]),
);

function layout(title: string, current: 'billing' | 'analytics' | undefined, body: string): string {
  const link = (href: string, label: string, page: 'billing' | 'analytics'): string =>
    `<a href="${href}"${current === page ? ' aria-current="page"' : ''}>${label}</a>`;
  return (
    `<!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">` +
    `<title>${escapeHtml(title)} · Bookbag</title><style>${STYLES}</style></head><body>` +
    `<header class="top"><div class="top-inner"><a class="brand" href="/billing">Bookbag</a>` +
    `<nav aria-label="Workspace">${link('/billing', 'Plans &amp; billing', 'billing')}${link('/analytics', 'Analytics', 'analytics')}</nav></div></header>` +
    `<main>${body}</main>` +
    `<footer>Demo of @bookbag/credits on the embedded memory store, with a simulated clock.</footer></body></html>`
  );
}

/** What the billing page shows. */
export interface BillingPageInput {
  summary: WorkspaceSummary;
  /** Usage this period, by agent. */
  byAgent: UsageReport;
  /** Usage this period, by model. */
  byModel: UsageReport;
  /** Agents and models the "send replies" form offers. */
  agents: readonly string[];
  models: readonly { id: string; name: string; credits: string; route: string }[];
  /** A fresh idempotency key for the top-up form. */
  grantId: string;
  /** A message about the last action. */
  flash?: string | undefined;
  /** The refused reply, when the page answers one. */
  refused?: HttpErrorAnswer | undefined;
}

/** The Plans & billing page. */
export function billingPage(input: BillingPageInput): string {
  const { summary } = input;
  const refused = input.refused
    ? `<section class="refused" aria-labelledby="refused-heading" data-status="${input.refused.status}">` +
      `<h2 id="refused-heading">Reply refused: HTTP ${input.refused.status}</h2>` +
      `<p>The answer an API route of the host returns for this error:</p>` +
      `<pre data-field="http-answer">${escapeHtml(
        `HTTP/1.1 ${input.refused.status}\n` +
          Object.entries(input.refused.headers)
            .map(([name, value]) => `${name}: ${value}`)
            .join('\n') +
          `\n\n${JSON.stringify(input.refused.body, null, 2)}`,
      )}</pre></section>`
    : '';
  const models = input.models
    .map((model) => `<option value="${escapeHtml(model.id)}">${escapeHtml(`${model.name} (${model.route})`)}</option>`)
    .join('');
  const agents = input.agents.map((agent) => `<option value="${escapeHtml(agent)}">${escapeHtml(agent)}</option>`).join('');
  return layout(
    'Plans & billing',
    'billing',
    `<div><h1>Plans &amp; billing</h1><p class="lede">Your balance, this period's allotment and where the credits went.</p></div>` +
      (input.flash ? `<p class="flash" role="status">${escapeHtml(input.flash)}</p>` : '') +
      refused +
      `<div class="grid"><div>${renderBalanceCard(summary, { models: DEFAULT_MODEL_PRICES, title: 'Balance' })}</div>` +
      `<section class="panel" aria-labelledby="actions-heading"><h2 id="actions-heading">Try it</h2>` +
      `<p>Spend the balance to see replies refused, buy credits, or jump to the renewal.</p>` +
      `<form class="inline" method="post" action="/reply">` +
      `<label>Agent<select name="agent">${agents}</select></label>` +
      `<label>Model<select name="model">${models}</select></label>` +
      `<label>Replies<select name="count"><option value="1">1</option><option value="10">10</option><option value="100">100</option><option value="all">Until refused</option></select></label>` +
      `<button type="submit">Send replies</button></form>` +
      `<form class="inline" method="post" action="/top-up"><input type="hidden" name="grantId" value="${escapeHtml(input.grantId)}">` +
      `<input type="hidden" name="credits" value="500"><button type="submit" class="secondary">Buy 500 credits</button></form>` +
      `<form class="inline" method="post" action="/renew"><button type="submit" class="secondary">Jump to the renewal</button></form>` +
      `</section></div>` +
      `<section class="panel" aria-labelledby="usage-heading"><h2 id="usage-heading">Usage this period</h2>` +
      `<p>${escapeHtml(`${formatCredits(input.byAgent.totalCredits)} credits over ${formatCredits(input.byAgent.totalReplies)} replies. Replies on the workspace's own key and unmetered replies count with 0 credits.`)}</p>` +
      `<div class="pair">${renderUsageTable(input.byAgent, { idPrefix: 'usage-by-agent', caption: 'By agent' })}` +
      `${renderUsageTable(input.byModel, { idPrefix: 'usage-by-model', caption: 'By model', labels: MODEL_NAMES })}</div></section>`,
  );
}

/** What the analytics page shows. */
export interface AnalyticsPageInput {
  /** The window's usage by agent, bucketed. */
  chart: UsageReport;
  /** The window's usage by model. */
  byModel: UsageReport;
  /** Agents in colour order. */
  agents: readonly string[];
  /** The form's values: inclusive days `YYYY-MM-DD`. */
  form: { from: string; to: string; interval: UsageInterval };
  /** Preset windows. */
  presets: readonly { label: string; href: string }[];
  /** A message about an invalid window. */
  error?: string | undefined;
}

/** The Analytics page. */
export function analyticsPage(input: AnalyticsPageInput): string {
  const option = (value: UsageInterval): string =>
    `<option value="${value}"${input.form.interval === value ? ' selected' : ''}>${value[0]?.toUpperCase()}${value.slice(1)}</option>`;
  return layout(
    'Analytics',
    'analytics',
    `<div><h1>Analytics</h1><p class="lede">Credits per agent, by day, week or month, for any window (UTC).</p></div>` +
      `<section class="panel" aria-labelledby="window-heading"><h2 id="window-heading">Window</h2>` +
      `<form class="inline" method="get" action="/analytics">` +
      `<label>From<input type="date" name="from" value="${escapeHtml(input.form.from)}" required></label>` +
      `<label>To<input type="date" name="to" value="${escapeHtml(input.form.to)}" required></label>` +
      `<label>Interval<select name="interval">${option('day')}${option('week')}${option('month')}</select></label>` +
      `<button type="submit">Show</button></form>` +
      `<p class="presets">${input.presets.map((preset) => `<a href="${escapeHtml(preset.href)}">${escapeHtml(preset.label)}</a>`).join('')}</p>` +
      (input.error ? `<p class="flash" role="alert">${escapeHtml(input.error)}</p>` : '') +
      `</section>` +
      renderUsageChart(input.chart, {
        order: input.agents,
        idPrefix: 'credits-chart',
        title: `Credits per ${input.form.interval} by agent`,
      }) +
      `<section class="panel" aria-labelledby="models-heading"><h2 id="models-heading">By model</h2>` +
      renderUsageTable(input.byModel, {
        idPrefix: 'window-by-model',
        caption: 'Replies and credits by model in this window',
        labels: MODEL_NAMES,
      }) +
      `</section>`,
  );
}

/** A bare error page. */
export function errorPage(status: number, message: string): string {
  return layout(`Error ${status}`, undefined, `<section class="panel"><h1>Error ${status}</h1><p>${escapeHtml(message)}</p></section>`);
}

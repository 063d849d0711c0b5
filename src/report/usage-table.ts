import { Decimal } from 'decimal.js';
import type { UsageReport } from '../meter/types.js';
import { escapeHtml } from './escape-html.js';
import { formatCredits } from './format-credits.js';
import { formatBucket, formatWindow } from './format-date.js';
import type { ReportOptions } from './report-options.js';
import { buildUsageSeries, type UsageSeries, type UsageSeriesOptions } from './usage-series.js';

/** Options of {@link renderUsageTable}. */
export interface UsageTableOptions extends ReportOptions, UsageSeriesOptions {
  /**
   * The table's `<caption>`.
   * @default `Credits by agent, 1 Nov 2026 – 30 Nov 2026` (or `Credits per day by agent, ...`)
   */
  caption?: string;
  /**
   * The header of the key column.
   * @default `Agent`, `Model` or `Conversation`, after the report's `groupBy`
   */
  keyLabel?: string;
  /**
   * Shown instead of the table when the window has no replies.
   * @default `No replies between <from> and <to>.`
   */
  emptyMessage?: string;
  /**
   * Display names of keys, e.g. model names for a report grouped by model
   * (`{ 'gpt-4o': 'GPT-4o' }`); a key without one is shown as is.
   * @default {}
   */
  labels?: Readonly<Record<string, string>>;
}

const INTERVAL_LABELS = { day: 'Day', week: 'Week', month: 'Month' } as const;

/**
 * Renders a `meter.usage()` report as an accessible HTML table (`<caption>`, `<th scope>`,
 * a totals row in `<tfoot>`). Without an interval: one row per key with replies, credits
 * and share of credits, most credits first. With an interval: one row per bucket of the
 * window (empty buckets included), one column per key, then the bucket's total credits
 * and replies. Every host string is escaped.
 *
 * @example
 * ```ts
 * const report = await meter.usage({ workspaceId: 'acme', from, to, groupBy: 'agent' });
 * page.innerHTML = renderUsageTable(report, { caption: 'Usage this period' });
 * ```
 */
export function renderUsageTable(report: UsageReport, options: UsageTableOptions = {}): string {
  return usageTableHtml(buildUsageSeries(report, options), options);
}

/** @internal The table of a series already built (shared with the chart's data table). */
export function usageTableHtml(series: UsageSeries, options: UsageTableOptions): string {
  const prefix = options.idPrefix ?? 'bb-usage-table';
  const fmt = options.formatCredits ?? formatCredits;
  const window = formatWindow(series.from, series.to);
  const keyLabel = options.keyLabel ?? keyLabelOf(series.groupBy);
  const by = keyLabel.toLowerCase();
  const caption =
    options.caption ?? (series.interval ? `Credits per ${series.interval} by ${by}, ${window}` : `Credits by ${by}, ${window}`);
  const label = (key: string): string => escapeHtml(options.labels?.[key] ?? key);

  if (series.series.length === 0) {
    const message = options.emptyMessage ?? `No replies between ${window}.`;
    return `<p class="bb-empty" role="status" id="${escapeHtml(prefix)}">${escapeHtml(message)}</p>`;
  }

  const open =
    `<div class="bb-report bb-table-wrap" id="${escapeHtml(prefix)}" role="region" aria-labelledby="${escapeHtml(prefix)}-caption" tabindex="0">` +
    `<table class="bb-table"><caption id="${escapeHtml(prefix)}-caption">${escapeHtml(caption)}</caption>`;

  if (!series.interval) {
    const total = series.totalCredits;
    const ranked = [...series.series].sort((a, b) => b.credits.comparedTo(a.credits) || b.replies - a.replies);
    const share = (credits: Decimal): string =>
      total.isZero() ? '–' : `${credits.dividedBy(total).times(100).toDecimalPlaces(1, Decimal.ROUND_HALF_UP).toFixed(1)}%`;
    const body = ranked
      .map(
        (entry) =>
          `<tr data-key="${escapeHtml(entry.key)}"><th scope="row">${label(entry.key)}</th>` +
          `<td class="bb-num">${escapeHtml(formatCredits(entry.replies))}</td>` +
          `<td class="bb-num">${escapeHtml(fmt(entry.credits))}</td>` +
          `<td class="bb-num">${escapeHtml(share(entry.credits))}</td></tr>`,
      )
      .join('');
    return (
      `${open}<thead><tr><th scope="col">${escapeHtml(keyLabel)}</th><th scope="col" class="bb-num">Replies</th>` +
      `<th scope="col" class="bb-num">Credits</th><th scope="col" class="bb-num">Share</th></tr></thead>` +
      `<tbody>${body}</tbody>` +
      `<tfoot><tr><th scope="row">Total</th><td class="bb-num">${escapeHtml(formatCredits(series.totalReplies))}</td>` +
      `<td class="bb-num">${escapeHtml(fmt(total))}</td><td class="bb-num">${total.isZero() ? '–' : '100.0%'}</td></tr></tfoot>` +
      `</table></div>`
    );
  }

  const interval = series.interval;
  const head =
    `<thead><tr><th scope="col">${INTERVAL_LABELS[interval]}</th>` +
    series.series.map((entry) => `<th scope="col" class="bb-num">${label(entry.key)}</th>`).join('') +
    `<th scope="col" class="bb-num">Total credits</th><th scope="col" class="bb-num">Replies</th></tr></thead>`;
  const body = series.buckets
    .map(
      (bucket, index) =>
        `<tr data-bucket="${bucket.start.toISOString().slice(0, 10)}"><th scope="row">${escapeHtml(formatBucket(bucket.start, interval, 'full'))}</th>` +
        series.series
          .map((entry) => `<td class="bb-num">${escapeHtml(fmt(entry.points[index]?.credits ?? new Decimal(0)))}</td>`)
          .join('') +
        `<td class="bb-num">${escapeHtml(fmt(bucket.credits))}</td><td class="bb-num">${escapeHtml(formatCredits(bucket.replies))}</td></tr>`,
    )
    .join('');
  const foot =
    `<tfoot><tr><th scope="row">Total</th>` +
    series.series.map((entry) => `<td class="bb-num">${escapeHtml(fmt(entry.credits))}</td>`).join('') +
    `<td class="bb-num">${escapeHtml(fmt(series.totalCredits))}</td><td class="bb-num">${escapeHtml(formatCredits(series.totalReplies))}</td></tr></tfoot>`;
  return `${open}${head}<tbody>${body}</tbody>${foot}</table></div>`;
}

/** @internal The default header of the key column for a report's `groupBy`. */
export function keyLabelOf(groupBy: string): string {
  switch (groupBy) {
    case 'agent':
      return 'Agent';
    case 'model':
      return 'Model';
    case 'conversation':
      return 'Conversation';
    default:
      return 'Key';
  }
}

import { Decimal } from 'decimal.js';
import type { UsageReport } from '../meter/types.js';
import { escapeHtml } from './escape-html.js';
import { formatCredits } from './format-credits.js';
import { formatBucket, formatWindow } from './format-date.js';
import { REPORT_PALETTE, seriesColor } from './palette.js';
import { buildUsageSeries, type UsageSeries } from './usage-series.js';
import { keyLabelOf, type UsageTableOptions, usageTableHtml } from './usage-table.js';

/** Options of {@link renderUsageChart}. */
export interface UsageChartOptions extends UsageTableOptions {
  /**
   * The chart's heading and the SVG's `<title>`.
   * @default `Credits per day by agent` (after the report's interval and `groupBy`)
   */
  title?: string;
  /**
   * Width of the SVG's coordinate system; the SVG scales to its container.
   * @default 720
   */
  width?: number;
  /**
   * Height of the SVG's coordinate system.
   * @default 280
   */
  height?: number;
  /**
   * Series colours, by key order (see `order`): a fixed palette keeps output deterministic.
   * @default REPORT_PALETTE
   */
  palette?: readonly string[];
  /**
   * The data table under the chart: inside a closed `<details>` (the SVG's `<desc>`
   * already summarizes it), always shown, or left out.
   * @default 'details'
   */
  table?: 'details' | 'visible' | 'none';
}

const MARGIN = { top: 12, right: 12, bottom: 30, left: 56 } as const;
const ZERO = new Decimal(0);

/**
 * Renders a `meter.usage()` report as a stacked bar chart: one bar per bucket of the
 * window, one coloured segment per key (agent), a legend with each key's total, and the
 * same numbers as a data table. The chart is an inline SVG with `role="img"`, `<title>`
 * and `<desc>`; colours come from a fixed palette by key order; output is a pure function
 * of the inputs. Uses no inline `style` attribute, so it renders under a strict
 * Content-Security-Policy with {@link REPORT_STYLES} served as a stylesheet.
 *
 * @example
 * ```ts
 * const report = await meter.usage({
 *   workspaceId: 'acme', from: '2026-11-01', to: '2026-12-01', groupBy: 'agent', interval: 'day',
 * });
 * const html = renderUsageChart(report, { order: ['support', 'sales', 'faq'] });
 * ```
 */
export function renderUsageChart(report: UsageReport, options: UsageChartOptions = {}): string {
  const series = buildUsageSeries(report, options);
  const prefix = options.idPrefix ?? 'bb-usage';
  const id = escapeHtml(prefix);
  const level = options.headingLevel ?? 2;
  const fmt = options.formatCredits ?? formatCredits;
  const keyLabel = (options.keyLabel ?? keyLabelOf(series.groupBy)).toLowerCase();
  const title = options.title ?? (series.interval ? `Credits per ${series.interval} by ${keyLabel}` : `Credits by ${keyLabel}`);
  const window = formatWindow(series.from, series.to);
  const summary = `${window} · ${fmt(series.totalCredits)} credits · ${formatCredits(series.totalReplies)} ${series.totalReplies === 1 ? 'reply' : 'replies'}`;
  const header =
    `<h${level} class="bb-title" id="${id}-heading">${escapeHtml(title)}</h${level}>` +
    `<p class="bb-subtitle" data-field="summary">${escapeHtml(summary)}</p>`;

  if (series.series.length === 0) {
    const message = options.emptyMessage ?? `No replies between ${window}.`;
    return (
      `<section class="bb-report bb-usage" id="${id}" aria-labelledby="${id}-heading" data-state="empty">${header}` +
      `<p class="bb-empty" role="status">${escapeHtml(message)}</p></section>`
    );
  }

  const tableOptions: UsageTableOptions = { ...options, idPrefix: `${prefix}-table` };
  const table = options.table ?? 'details';
  const tableHtml =
    table === 'none'
      ? ''
      : table === 'visible'
        ? usageTableHtml(series, tableOptions)
        : `<details class="bb-data"><summary>Show the numbers as a table</summary>${usageTableHtml(series, tableOptions)}</details>`;

  return (
    `<section class="bb-report bb-usage" id="${id}" aria-labelledby="${id}-heading" data-state="ok">${header}` +
    chartSvg(series, { ...options, prefix, title, fmt }) +
    legendHtml(series, options.palette ?? REPORT_PALETTE, fmt, options.labels) +
    tableHtml +
    `</section>`
  );
}

interface ChartContext extends UsageChartOptions {
  prefix: string;
  title: string;
  fmt: (credits: Decimal) => string;
}

function chartSvg(series: UsageSeries, context: ChartContext): string {
  const width = positive(context.width ?? 720, 'width');
  const height = positive(context.height ?? 280, 'height');
  const palette = context.palette ?? REPORT_PALETTE;
  const id = escapeHtml(context.prefix);
  const plotW = Math.max(1, width - MARGIN.left - MARGIN.right);
  const plotH = Math.max(1, height - MARGIN.top - MARGIN.bottom);
  const peak = series.buckets.reduce((max, bucket) => Decimal.max(max, bucket.credits), ZERO).toNumber();
  const { top, step } = niceScale(peak);
  const y = (value: number): number => MARGIN.top + plotH - (value / top) * plotH;

  const grid: string[] = [];
  for (let tick = 0; tick <= top + step / 2; tick += step) {
    const ty = round(y(tick));
    grid.push(
      `<line x1="${MARGIN.left}" x2="${MARGIN.left + plotW}" y1="${ty}" y2="${ty}"${tick === 0 ? ' class="bb-axis"' : ''}/>` +
        `<text x="${MARGIN.left - 8}" y="${ty}" text-anchor="end" dominant-baseline="middle">${escapeHtml(context.fmt(new Decimal(round(tick))))}</text>`,
    );
  }

  const band = plotW / series.buckets.length;
  const barW = Math.min(48, Math.max(1, band * 0.72));
  const labelEvery = Math.max(1, Math.ceil(series.buckets.length / Math.max(1, Math.floor(plotW / 56))));
  const bars: string[] = [];
  const labels: string[] = [];
  series.buckets.forEach((bucket, index) => {
    const x = round(MARGIN.left + band * index + (band - barW) / 2);
    const day = bucket.start.toISOString().slice(0, 10);
    const full = formatBucket(bucket.start, series.interval, 'full');
    let stacked = ZERO;
    const segments: string[] = [];
    for (const entry of series.series) {
      const point = entry.points[index];
      if (!point || point.credits.isZero()) continue;
      const y0 = y(stacked.toNumber());
      stacked = stacked.plus(point.credits);
      const y1 = y(stacked.toNumber());
      const name = context.labels?.[entry.key] ?? entry.key;
      segments.push(
        `<rect x="${x}" y="${round(y1)}" width="${round(barW)}" height="${round(Math.max(0, y0 - y1))}" ` +
          `fill="${escapeHtml(seriesColor(entry.colorIndex, palette))}" data-key="${escapeHtml(entry.key)}" data-credits="${escapeHtml(point.credits.toFixed())}">` +
          `<title>${escapeHtml(`${name}, ${full}: ${context.fmt(point.credits)} credits, ${formatCredits(point.replies)} ${point.replies === 1 ? 'reply' : 'replies'}`)}</title></rect>`,
      );
    }
    bars.push(`<g data-bucket="${day}" data-credits="${escapeHtml(bucket.credits.toFixed())}">${segments.join('')}</g>`);
    if (index % labelEvery === 0) {
      labels.push(
        `<text x="${round(MARGIN.left + band * index + band / 2)}" y="${height - MARGIN.bottom + 18}" text-anchor="middle">${escapeHtml(formatBucket(bucket.start, series.interval, 'axis'))}</text>`,
      );
    }
  });

  const top3 = [...series.series].sort((a, b) => b.credits.comparedTo(a.credits)).slice(0, 3);
  const busiest = series.buckets.reduce((best, bucket) => (bucket.credits.greaterThan(best.credits) ? bucket : best), series.buckets[0]!);
  const desc =
    `Stacked bars of credits per ${series.interval ?? 'window'} from ${formatWindow(series.from, series.to)}, ` +
    `one colour per ${series.groupBy}. Total ${context.fmt(series.totalCredits)} credits over ${formatCredits(series.totalReplies)} replies. ` +
    `Most credits: ${top3.map((entry) => `${context.labels?.[entry.key] ?? entry.key} ${context.fmt(entry.credits)}`).join(', ')}. ` +
    (busiest.credits.isZero()
      ? ''
      : `Busiest ${series.interval ?? 'window'}: ${formatBucket(busiest.start, series.interval, 'full')} with ${context.fmt(busiest.credits)} credits. `) +
    'The same numbers are in the table below.';

  return (
    `<svg class="bb-chart" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 ${width} ${height}" role="img" aria-labelledby="${id}-title ${id}-desc">` +
    `<title id="${id}-title">${escapeHtml(context.title)}</title><desc id="${id}-desc">${escapeHtml(desc)}</desc>` +
    `<g class="bb-grid">${grid.join('')}</g><g class="bb-bars">${bars.join('')}</g><g class="bb-x-labels">${labels.join('')}</g></svg>`
  );
}

function legendHtml(
  series: UsageSeries,
  palette: readonly string[],
  fmt: (credits: Decimal) => string,
  labels: Readonly<Record<string, string>> | undefined,
): string {
  const items = series.series.map(
    (entry) =>
      `<li data-key="${escapeHtml(entry.key)}"><svg class="bb-swatch" viewBox="0 0 12 12" width="12" height="12" aria-hidden="true" focusable="false">` +
      `<rect width="12" height="12" rx="2" fill="${escapeHtml(seriesColor(entry.colorIndex, palette))}"/></svg>` +
      `<span class="bb-legend-key">${escapeHtml(labels?.[entry.key] ?? entry.key)}</span> ` +
      `<span class="bb-legend-value">${escapeHtml(fmt(entry.credits))} credits · ${formatCredits(entry.replies)} ${entry.replies === 1 ? 'reply' : 'replies'}</span></li>`,
  );
  return `<ul class="bb-legend" aria-label="Legend">${items.join('')}</ul>`;
}

// A round axis top with 4–5 ticks: steps of 1, 2, 2.5 or 5 × 10ⁿ.
function niceScale(peak: number): { top: number; step: number } {
  if (!(peak > 0)) return { top: 4, step: 1 };
  const raw = peak / 4;
  const magnitude = 10 ** Math.floor(Math.log10(raw));
  const step = ([1, 2, 2.5, 5, 10].find((m) => m * magnitude >= raw) ?? 10) * magnitude;
  return { top: Math.ceil(peak / step - 1e-9) * step, step };
}

function round(value: number): number {
  return Math.round(value * 100) / 100;
}

function positive(value: number, name: string): number {
  if (!Number.isFinite(value) || value <= 0) throw new RangeError(`${name} must be a positive number, got ${value}`);
  return value;
}

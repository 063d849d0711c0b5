/**
 * `@bookbag/credits/report`: the Plans & billing and Analytics screens as HTML strings.
 * Turns `meter.getWorkspace()` and `meter.usage()` results into an accessible balance card,
 * usage tables and an inline SVG chart, with no framework and no browser code: render on
 * the server, or in any client that can set `innerHTML`. Every host string is escaped.
 *
 * @packageDocumentation
 */

export type { BalanceCardOptions, BalanceState, ReportModels } from './balance-card.js';
export { balanceState, renderBalanceCard } from './balance-card.js';
export { escapeHtml } from './escape-html.js';
export { formatCredits } from './format-credits.js';
export { formatBucket, formatDateTime, formatDay, formatWindow } from './format-date.js';
export { REPORT_PALETTE, seriesColor } from './palette.js';
export type { ReportOptions } from './report-options.js';
export { REPORT_STYLES } from './report-styles.js';
export type { UsageChartOptions } from './usage-chart.js';
export { renderUsageChart } from './usage-chart.js';
export type { UsageBucket, UsagePoint, UsageSeries, UsageSeriesEntry, UsageSeriesOptions } from './usage-series.js';
export { buildUsageSeries } from './usage-series.js';
export type { UsageTableOptions } from './usage-table.js';
export { renderUsageTable } from './usage-table.js';

/**
 * The colours of chart series, in order: the first key gets the first colour. Ten hues
 * (Tableau 10) that stay apart for the common colour-vision deficiencies and on white.
 * A chart with more keys than colours cycles through them again.
 *
 * @example
 * ```ts
 * renderUsageChart(report, { palette: [...REPORT_PALETTE.slice(1), REPORT_PALETTE[0]!] });
 * ```
 */
export const REPORT_PALETTE: readonly string[] = Object.freeze([
  '#4e79a7',
  '#f28e2b',
  '#59a14f',
  '#e15759',
  '#76b7b2',
  '#edc948',
  '#b07aa1',
  '#ff9da7',
  '#9c755f',
  '#bab0ac',
]);

/**
 * The colour of the series at `index` (0-based) in `palette`, cycling when the palette is
 * shorter than the number of series.
 *
 * @example
 * ```ts
 * seriesColor(0); // '#4e79a7'
 * seriesColor(10); // '#4e79a7' again
 * ```
 */
export function seriesColor(index: number, palette: readonly string[] = REPORT_PALETTE): string {
  if (palette.length === 0) throw new RangeError('palette must list at least one colour');
  return palette[((index % palette.length) + palette.length) % palette.length] as string;
}

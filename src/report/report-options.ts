import type { Decimal } from 'decimal.js';

/** Options every renderer of `@bookbag/credits/report` accepts. */
export interface ReportOptions {
  /**
   * The element's `id`, and the prefix of the ids inside it (`<idPrefix>-title`, ...) that
   * `aria-labelledby` points at. Give each report on one page its own.
   */
  idPrefix?: string;
  /**
   * The level of the report's heading, to fit the host page's outline.
   * @default 2
   */
  headingLevel?: 1 | 2 | 3 | 4 | 5 | 6;
  /**
   * Formats a credit amount. Its result is escaped.
   * @default formatCredits (exact, `12,000.5`)
   */
  formatCredits?: (credits: Decimal) => string;
}

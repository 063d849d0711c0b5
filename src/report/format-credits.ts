import { Decimal } from 'decimal.js';

/**
 * Formats credits exactly, with a comma between thousands and no trailing zeros:
 * `12000` → `12,000`, `1234.5` → `1,234.5`. Deterministic (no locale lookup), so what a
 * page shows can be compared with the ledger digit for digit.
 *
 * @example
 * ```ts
 * formatCredits(new Decimal('1999.25')); // '1,999.25'
 * ```
 */
export function formatCredits(value: Decimal | number | string): string {
  const fixed = new Decimal(value).toFixed();
  const negative = fixed.startsWith('-');
  const [integer = '0', fraction] = (negative ? fixed.slice(1) : fixed).split('.');
  const grouped = integer.replace(/\B(?=(\d{3})+(?!\d))/g, ',');
  return `${negative ? '-' : ''}${grouped}${fraction ? `.${fraction}` : ''}`;
}

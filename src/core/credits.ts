import { Decimal } from 'decimal.js';
import { InvalidInputError } from './errors.js';

/** An amount of credits as accepted at the API: a number, a decimal string or a `Decimal`. */
export type CreditsInput = number | string | Decimal;

/**
 * Credits are exact decimals with at most this many decimal places. Inside, every
 * amount is an integer count of micro-credits (credits × 10⁶).
 */
export const CREDIT_DECIMALS = 6;

/** Micro-credits in one credit. */
export const MICROS_PER_CREDIT = 1_000_000;

/**
 * The largest amount any store can hold exactly: 2⁵³ − 1 micro-credits (about 9 billion
 * credits). Redis Lua numbers are doubles, so this is the common ceiling; an amount or a
 * balance above it is refused, never wrapped.
 */
export const MAX_MICROS = Number.MAX_SAFE_INTEGER;

/** The largest single amount accepted in one input (a price, an allotment, a top-up). */
export const MAX_INPUT_CREDITS = 1_000_000_000;
const MAX_INPUT_MICROS = MAX_INPUT_CREDITS * MICROS_PER_CREDIT;

const DECIMAL_TEXT = /^\s*[+-]?(\d+\.?\d*|\.\d+)(e[+-]?\d+)?\s*$/i;

/**
 * Parses an amount of credits into micro-credits, refusing NaN, Infinity, negatives,
 * non-numeric strings, more than 6 decimal places and amounts above
 * {@link MAX_INPUT_CREDITS}, with an `INVALID_INPUT` error naming `field`.
 */
export function toMicros(value: unknown, field: string): number {
  let amount: Decimal;
  if (Decimal.isDecimal(value)) {
    amount = value as Decimal;
  } else if (typeof value === 'number') {
    if (!Number.isFinite(value)) throw invalid(field, 'must be a finite number');
    // String(0.1) is "0.1": going through the shortest round-trip text keeps what the caller wrote.
    amount = new Decimal(String(value));
  } else if (typeof value === 'string') {
    if (!DECIMAL_TEXT.test(value)) throw invalid(field, 'must be a decimal number');
    amount = new Decimal(value.trim());
  } else {
    throw invalid(field, 'must be a number, a decimal string or a Decimal');
  }
  if (!amount.isFinite()) throw invalid(field, 'must be a finite number');
  if (amount.isNegative() && !amount.isZero()) throw invalid(field, 'must not be negative');
  if (amount.decimalPlaces() > CREDIT_DECIMALS) {
    throw invalid(field, `must have at most ${CREDIT_DECIMALS} decimal places`);
  }
  const micros = amount.times(MICROS_PER_CREDIT);
  if (micros.greaterThan(MAX_INPUT_MICROS)) throw invalid(field, `must be at most ${MAX_INPUT_CREDITS} credits`);
  return micros.toNumber();
}

// Decimals are immutable, so the few amounts a meter sees over and over (prices, 0) are
// built once: Decimal division costs more than the rest of a charge on the memory store.
const recent = new Map<number, Decimal>();
const RECENT_LIMIT = 4096;

/** Turns micro-credits back into an exact `Decimal` of credits. */
export function fromMicros(micros: number): Decimal {
  let amount = recent.get(micros);
  if (amount === undefined) {
    amount = new Decimal(micros).dividedBy(MICROS_PER_CREDIT);
    if (recent.size >= RECENT_LIMIT) recent.clear();
    recent.set(micros, amount);
  }
  return amount;
}

function invalid(field: string, message: string): InvalidInputError {
  return new InvalidInputError([{ path: field, message }]);
}

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
const NON_FINITE_TEXT = /^\s*[+-]?(nan|infinity)\s*$/i;
/** Longest decimal string accepted: a valid amount needs far fewer characters. */
const MAX_AMOUNT_TEXT = 100;

/**
 * True for a real `Decimal`: an instance of this package's decimal.js, or of another copy
 * of decimal.js (a host with two copies installed). An object that merely looks like one
 * (`{ s, e, d }`, a forged `toStringTag`) is not: `Decimal.isDecimal` alone accepts those.
 */
export function isDecimalValue(value: unknown): value is Decimal {
  if (typeof value !== 'object' || value === null) return false;
  try {
    if (value instanceof Decimal) return true;
    if (!Decimal.isDecimal(value)) return false;
    const proto: unknown = Object.getPrototypeOf(value);
    if (typeof proto !== 'object' || proto === null || proto === Object.prototype) return false;
    const methods = proto as Record<string, unknown>;
    const ctor: unknown = methods.constructor;
    return (
      typeof methods.toString === 'function' &&
      methods.toString !== Object.prototype.toString &&
      typeof methods.toFixed === 'function' &&
      typeof methods.decimalPlaces === 'function' &&
      typeof ctor === 'function' &&
      typeof (ctor as { isDecimal?: unknown }).isDecimal === 'function'
    );
  } catch {
    // A proxy whose traps throw is no Decimal.
    return false;
  }
}

/**
 * Parses an amount of credits into micro-credits, refusing NaN, Infinity, negatives,
 * non-numeric strings, more than 6 decimal places, amounts above {@link MAX_INPUT_CREDITS}
 * and objects that only look like a `Decimal`, with an `INVALID_INPUT` error naming `field`.
 */
export function toMicros(value: unknown, field: string): number {
  let amount: Decimal;
  if (typeof value === 'number') {
    if (!Number.isFinite(value)) throw invalid(field, 'must be a finite number');
    // String(0.1) is "0.1": going through the shortest round-trip text keeps what the caller wrote.
    amount = new Decimal(String(value));
  } else if (typeof value === 'string') {
    amount = fromText(value, field);
  } else if (isDecimalValue(value)) {
    // Read through its text: a Decimal from another copy of decimal.js (or with forged
    // digits) is checked exactly like a string.
    let text: unknown;
    try {
      text = value.toString();
    } catch {
      throw invalid(field, 'must be a number, a decimal string or a Decimal');
    }
    if (typeof text !== 'string') throw invalid(field, 'must be a number, a decimal string or a Decimal');
    amount = fromText(text, field);
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

function fromText(text: string, field: string): Decimal {
  if (text.length > MAX_AMOUNT_TEXT) throw invalid(field, `must be a decimal number of at most ${MAX_AMOUNT_TEXT} characters`);
  if (NON_FINITE_TEXT.test(text)) throw invalid(field, 'must be a finite number');
  if (!DECIMAL_TEXT.test(text)) throw invalid(field, 'must be a decimal number');
  return new Decimal(text.trim());
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

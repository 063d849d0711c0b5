import { Decimal } from 'decimal.js';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { CreditsError, fromMicros, toMicros } from '../../src/index.js';

describe('toMicros', () => {
  it.each([
    [1, 1_000_000],
    ['2.5', 2_500_000],
    [0.1, 100_000],
    ['0.000001', 1],
    [new Decimal('4.25'), 4_250_000],
    [0, 0],
    ['1e3', 1_000_000_000],
  ])('accepts %s', (input, micros) => {
    expect(toMicros(input, 'credits')).toBe(micros);
  });

  it.each([
    [Number.NaN, 'finite'],
    [Number.POSITIVE_INFINITY, 'finite'],
    [-1, 'negative'],
    ['-0.5', 'negative'],
    ['1e400', 'at most'],
    [1e400, 'finite'],
    ['abc', 'decimal'],
    ['', 'decimal'],
    ['0x10', 'decimal'],
    [1.0000001, 'decimal places'],
    ['1.0000001', 'decimal places'],
    ['2000000000', 'at most'],
    [null, 'number'],
    [{}, 'number'],
    [10n, 'number'],
  ])('refuses %s naming the field', (input, message) => {
    try {
      toMicros(input, 'credits');
      expect.unreachable();
    } catch (error) {
      expect(CreditsError.is(error)).toBe(true);
      expect((error as CreditsError).code).toBe('INVALID_INPUT');
      expect((error as Error).message).toContain('credits');
      expect((error as Error).message).toContain(message);
    }
  });

  it('round-trips every amount with at most 6 decimals exactly', () => {
    fc.assert(
      fc.property(fc.integer({ min: 0, max: 1_000_000_000_000_000 }), (micros) => {
        const credits = fromMicros(micros);
        expect(toMicros(credits.toString(), 'credits')).toBe(micros);
        expect(toMicros(credits, 'credits')).toBe(micros);
      }),
    );
  });
});

import { Decimal } from 'decimal.js';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { fromMicros, toMicros } from '../../src/core/credits.js';
import { CreditsError } from '../../src/index.js';

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
    [Number('1e400'), 'finite'],
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

describe('toMicros - Decimal values', () => {
  it('accepts a real Decimal, and one from another copy of decimal.js', () => {
    expect(toMicros(new Decimal('1.5'), 'credits')).toBe(1_500_000);
    // A second copy of decimal.js is a different class with the same shape.
    const Other = Decimal.clone();
    expect(toMicros(new Other('2.25'), 'credits')).toBe(2_250_000);
  });

  it.each([
    ['a plain look-alike', { s: 1, e: 0, d: [5], toStringTag: '[object Decimal]' }],
    ['a look-alike with a toString', { s: 1, e: 0, d: [5], toStringTag: '[object Decimal]', toString: () => '5' }],
    ['a forged Decimal with bad digits', Object.assign(Object.create(Decimal.prototype) as object, { s: 1, e: 0, d: ['x'] })],
    ['a NaN Decimal', new Decimal(Number.NaN)],
    ['an infinite Decimal', new Decimal(Number.POSITIVE_INFINITY)],
    ['a Decimal with 7 decimals', new Decimal('1.0000001')],
    ['a negative Decimal', new Decimal(-1)],
    [
      'a proxy that throws',
      new Proxy(
        {},
        {
          get: () => {
            throw new Error('no');
          },
          getPrototypeOf: () => {
            throw new Error('no');
          },
        },
      ),
    ],
  ])('refuses %s with INVALID_INPUT naming the field', (_label, value) => {
    let caught: unknown;
    try {
      toMicros(value, 'credits');
    } catch (error) {
      caught = error;
    }
    expect(CreditsError.is(caught)).toBe(true);
    expect((caught as CreditsError).code).toBe('INVALID_INPUT');
    expect((caught as { field: string }).field).toBe('credits');
  });

  it('refuses an absurdly long decimal string without parsing it', () => {
    expect(() => toMicros(`1${'0'.repeat(10_000)}`, 'credits')).toThrow(/at most 100 characters/);
    expect(() => toMicros('NaN', 'credits')).toThrow(/finite/);
    expect(() => toMicros('-Infinity', 'credits')).toThrow(/finite/);
  });
});

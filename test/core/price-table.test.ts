import { describe, expect, it } from 'vitest';
import { type CreditsError, DEFAULT_MODEL_PRICES, defineModelPrices } from '../../src/index.js';

describe('DEFAULT_MODEL_PRICES', () => {
  it('prices the five default models per reply', () => {
    const prices = Object.fromEntries(DEFAULT_MODEL_PRICES.models.map((m) => [m.id, Number(m.credits)]));
    expect(prices).toEqual({
      'bookbag-local': 1,
      'gpt-4o-mini': 1,
      'claude-haiku-4-5': 2,
      'claude-sonnet-4-6': 4,
      'gpt-4o': 5,
    });
  });

  it('does not treat Bookbag Local as provider-backed', () => {
    expect(DEFAULT_MODEL_PRICES.get('bookbag-local')?.providerBacked).toBe(false);
    expect(DEFAULT_MODEL_PRICES.get('gpt-4o')?.providerBacked).toBe(true);
  });

  it('fails closed on an unknown model', () => {
    expect(DEFAULT_MODEL_PRICES.get('gpt-5')).toBeUndefined();
    expect(() => DEFAULT_MODEL_PRICES.require('gpt-5')).toThrow(expect.objectContaining({ code: 'UNKNOWN_MODEL' }));
  });

  it('is immutable', () => {
    expect(Object.isFrozen(DEFAULT_MODEL_PRICES)).toBe(true);
    expect(Object.isFrozen(DEFAULT_MODEL_PRICES.models)).toBe(true);
    expect(Object.isFrozen(DEFAULT_MODEL_PRICES.models[0])).toBe(true);
  });
});

describe('defineModelPrices', () => {
  const entry = { id: 'm', name: 'M', provider: 'openai', credits: 1, providerBacked: true };

  it('validates and versions a table', () => {
    const table = defineModelPrices([entry, { ...entry, id: 'n', credits: '0.25' }], { version: 'v2' });
    expect(table.version).toBe('v2');
    expect(table.get('n')?.credits.toString()).toBe('0.25');
  });

  it('derives the same version from the same content', () => {
    expect(defineModelPrices([entry]).version).toBe(defineModelPrices([{ ...entry }]).version);
    expect(defineModelPrices([entry]).version).not.toBe(defineModelPrices([{ ...entry, credits: 2 }]).version);
  });

  it.each([
    [[entry, entry], 'models.1.id'],
    [[{ ...entry, credits: -1 }], 'models.0.credits'],
    [[{ ...entry, credits: 0.0000001 }], 'models.0.credits'],
    [[{ ...entry, credits: Number.NaN }], 'models.0.credits'],
    [[{ ...entry, id: '' }], 'models.0.id'],
    [[{ ...entry, id: 'x'.repeat(10_000) }], 'models.0.id'],
    [[{ ...entry, id: '__proto__' }], 'models.0.id'],
    [[{ ...entry, providerBacked: 'yes' }], 'models.0.providerBacked'],
    [[], 'models'],
  ])('refuses a bad table (%#) naming %s', (entries, field) => {
    expect(() => defineModelPrices(entries as never)).toThrow(
      expect.objectContaining({ code: 'INVALID_INPUT', field } satisfies Partial<CreditsError> & { field: string }),
    );
  });

  it('extends the default table, overriding by id', () => {
    const table = DEFAULT_MODEL_PRICES.extend([
      { id: 'bookbag-local', name: 'Bookbag Local', provider: 'bookbag', credits: 0, providerBacked: false },
      { id: 'mistral-small', name: 'Mistral Small', provider: 'mistral', credits: '0.5', providerBacked: true },
    ]);
    expect(Number(table.require('bookbag-local').credits)).toBe(0);
    expect(Number(table.require('mistral-small').credits)).toBe(0.5);
    expect(Number(table.require('gpt-4o').credits)).toBe(5);
    expect(table.version).not.toBe(DEFAULT_MODEL_PRICES.version);
  });
});

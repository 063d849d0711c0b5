import { createRequire } from 'node:module';
import { describe, expect, it } from 'vitest';
import { type CreditsModule, endToEnd } from './scenario.js';

// Node's own require, as a CommonJS user gets it: `require` conditions of package.json `exports`.
const require = createRequire(import.meta.url);

describe('dist - CJS', () => {
  it('require - resolves the package to dist/*.cjs through its exports', () => {
    expect(require.resolve('@bookbag/credits')).toMatch(/\/dist\/index\.cjs$/);
    for (const subpath of ['sqlite', 'postgres', 'redis']) {
      expect(require.resolve(`@bookbag/credits/${subpath}`)).toMatch(new RegExp(`/dist/adapters/${subpath}\\.cjs$`));
      expect(Object.keys(require(`@bookbag/credits/${subpath}`)).length, subpath).toBeGreaterThan(0);
    }
  });

  it('reply - charges, refuses an unknown model and the ledger sums to the balance', async () => {
    const credits = require('@bookbag/credits') as CreditsModule;
    const run = await endToEnd(credits);
    expect(run.first.credits.toString()).toBe('1');
    expect(run.second.credits.toString()).toBe('2');
    expect(credits.CreditsError.is(run.refused)).toBe(true);
    expect(run.workspace.balance.toString()).toBe('1997');
    expect(run.ledgerSum.toString()).toBe('1997');
  });

  it('errors - an error from the CJS copy is recognised by the ESM copy', async () => {
    const cjs = require('@bookbag/credits') as CreditsModule;
    const esm = (await import(['@bookbag', 'credits'].join('/'))) as CreditsModule;
    expect(esm.CreditMeter).not.toBe(cjs.CreditMeter);
    const { refused } = await endToEnd(cjs);
    expect(refused).not.toBeInstanceOf(esm.CreditsError);
    expect(esm.CreditsError.is(refused)).toBe(true);
  });
});

import { describe, expect, it } from 'vitest';
import { type CreditsModule, endToEnd } from './scenario.js';

// Through a variable, so the type checker never needs dist/ (it is built by `pretest`), and the
// specifier is resolved at run time through package.json `exports`, as a user's import would be.
const PACKAGE = '@bookbag/credits';
const load = (subpath = '') => import(`${PACKAGE}${subpath}`) as Promise<Record<string, unknown>>;

describe('dist - ESM', () => {
  it('import - resolves the package to dist/ through its exports', async () => {
    expect(import.meta.resolve(PACKAGE)).toMatch(/\/dist\/index\.js$/);
    const credits = await load();
    expect(typeof credits.CreditMeter).toBe('function');
    expect(typeof credits.MemoryStorage).toBe('function');
  });

  it('import - every adapter subpath and ./testing load', async () => {
    for (const subpath of ['/sqlite', '/postgres', '/redis']) {
      expect(Object.keys(await load(subpath)).length, subpath).toBeGreaterThan(0);
    }
    const testing = await load('/testing');
    expect(typeof testing.runStorageConformance).toBe('function');
    expect(typeof testing.FakeProvider).toBe('function');
  });

  it('reply - charges, refuses an unknown model and the ledger sums to the balance', async () => {
    const credits = (await load()) as unknown as CreditsModule;
    const run = await endToEnd(credits);
    expect(run.created.balance.toString()).toBe('2000');
    expect(run.first.credits.toString()).toBe('1');
    expect(run.second.credits.toString()).toBe('2');
    expect(run.retried.credits.toString()).toBe('2');
    expect(run.calls).toEqual(['gpt-4o-mini', 'claude-haiku-4-5']);
    expect(credits.CreditsError.is(run.refused)).toBe(true);
    expect(run.workspace.balance.toString()).toBe('1997');
    expect(run.ledgerSum.toString()).toBe('1997');
    expect(run.entries.filter((entry) => entry.replyId !== undefined)).toHaveLength(2);
  });
});

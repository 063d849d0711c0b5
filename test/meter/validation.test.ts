import { describe, expect, it } from 'vitest';
import { closestKey } from '../../src/core/validation.js';
import { CreditMeter, DEFAULT_MODEL_PRICES, DEFAULT_PLANS, InvalidInputError, MemoryStorage } from '../../src/index.js';
import { checkedReplyIdGenerator, DEFAULT_HOLD_TTL_MS, DEFAULT_THRESHOLDS, parseMeterOptions } from '../../src/meter/options.js';
import { ask, harness, turn } from '../support.js';

const BAD_AMOUNTS = [Number.NaN, Number.POSITIVE_INFINITY, -1, '1e400', 'abc', 1.0000001, '', null, {}, [1]];
const BAD_IDS = ['', 'x'.repeat(10 * 1024), '__proto__', 'constructor', 'a\u0000b', 42, null, {}];

async function snapshot(meter: CreditMeter) {
  const ws = await meter.getWorkspace('ws');
  const ledger = await meter.ledger({ workspaceId: 'ws', limit: 1000 });
  return JSON.stringify({ ws, ledger });
}

async function expectInvalid(call: Promise<unknown>, field: string) {
  const error = await call.catch((e: unknown) => e);
  expect(error).toBeInstanceOf(InvalidInputError);
  expect((error as InvalidInputError).code).toBe('INVALID_INPUT');
  expect((error as InvalidInputError).field).toBe(field);
}

describe('malformed input - a validation error naming the field, and nothing changes', () => {
  it.each(BAD_AMOUNTS)('addCredits credits = %s', async (credits) => {
    const { meter } = harness();
    await meter.createWorkspace({ workspaceId: 'ws', plan: 'free' });
    const before = await snapshot(meter);
    await expectInvalid(meter.addCredits({ workspaceId: 'ws', credits: credits as never, grantId: 'g' }), 'credits');
    expect(await snapshot(meter)).toBe(before);
  });

  it.each(BAD_AMOUNTS)('enterprise allotment = %s', async (allotment) => {
    const { meter } = harness();
    await expectInvalid(meter.createWorkspace({ workspaceId: 'ws', plan: 'enterprise', allotment: allotment as never }), 'allotment');
    await expect(meter.getWorkspace('ws')).rejects.toMatchObject({ code: 'WORKSPACE_NOT_FOUND' });
  });

  it.each(BAD_IDS.map((id) => [typeof id === 'string' && id.length > 100 ? `${id.length} chars` : JSON.stringify(id), id]))(
    'ids: %s',
    async (_label, id) => {
      const { meter, providers } = harness();
      await meter.createWorkspace({ workspaceId: 'ws', plan: 'free' });
      const before = await snapshot(meter);
      for (const field of ['workspaceId', 'agentId', 'conversationId', 'model', 'replyId'] as const) {
        await expectInvalid(meter.reply({ ...turn(1), [field]: id as never }), field);
        await expectInvalid(meter.reserve({ ...ask(1), [field]: id as never }), field);
      }
      await expectInvalid(meter.settle({ workspaceId: 'ws', replyId: id as never }), 'replyId');
      await expectInvalid(meter.release({ workspaceId: 'ws', replyId: id as never }), 'replyId');
      await expectInvalid(meter.addCredits({ workspaceId: 'ws', credits: 1, grantId: id as never }), 'grantId');
      await expectInvalid(meter.createWorkspace({ workspaceId: id as never, plan: 'free' }), 'workspaceId');
      expect(providers.openai.calls).toHaveLength(0);
      expect(await snapshot(meter)).toBe(before);
    },
  );

  it('refuses prototype-polluting payloads without touching Object.prototype', async () => {
    const { meter } = harness();
    await meter.createWorkspace({ workspaceId: 'ws', plan: 'free' });
    const payload = JSON.parse(
      '{"workspaceId":"__proto__","agentId":"a","conversationId":"c","model":"gpt-4o","input":"x","__proto__":{"polluted":true}}',
    );
    await expectInvalid(meter.reply(payload), 'workspaceId');
    expect(({} as Record<string, unknown>).polluted).toBeUndefined();
  });

  it('refuses a custom plan without an allotment, and an allotment for a fixed plan', async () => {
    const { meter } = harness();
    await expectInvalid(meter.createWorkspace({ workspaceId: 'ws', plan: 'enterprise' }), 'allotment');
    await expectInvalid(meter.createWorkspace({ workspaceId: 'ws', plan: 'free', allotment: 5 }), 'allotment');
    await expect(meter.createWorkspace({ workspaceId: 'ws', plan: 'gold' })).rejects.toMatchObject({ code: 'UNKNOWN_PLAN' });
    const ws = await meter.createWorkspace({ workspaceId: 'ws', plan: 'enterprise', allotment: '250000.5' });
    expect(ws.balance.toString()).toBe('250000.5');
  });

  it('refuses a second workspace with the same id', async () => {
    const { meter } = harness();
    await meter.createWorkspace({ workspaceId: 'ws', plan: 'free' });
    await expect(meter.createWorkspace({ workspaceId: 'ws', plan: 'pro' })).rejects.toMatchObject({ code: 'WORKSPACE_EXISTS' });
    expect((await meter.getWorkspace('ws')).plan).toBe('free');
  });

  it('refuses bad ledger and usage queries', async () => {
    const { meter } = harness();
    await meter.createWorkspace({ workspaceId: 'ws', plan: 'free' });
    await expectInvalid(meter.ledger({ workspaceId: 'ws', limit: 0 }), 'limit');
    await expectInvalid(meter.ledger({ workspaceId: 'ws', limit: 1001 }), 'limit');
    await expectInvalid(meter.ledger({ workspaceId: 'ws', cursor: 'nope' }), 'cursor');
    await expectInvalid(meter.ledger({ workspaceId: 'ws', from: 'yesterday' }), 'from');
    await expectInvalid(
      meter.usage({ workspaceId: 'ws', from: '2026-02-01T00:00:00Z', to: '2026-01-01T00:00:00Z', groupBy: 'agent' }),
      'to',
    );
    await expectInvalid(
      meter.usage({ workspaceId: 'ws', from: '2026-01-01T00:00:00Z', to: '2026-02-01T00:00:00Z', groupBy: 'team' as never }),
      'groupBy',
    );
  });

  it('refuses bad options at construction', () => {
    expect(() => new CreditMeter({ holdTtlMs: -1 })).toThrow(expect.objectContaining({ field: 'holdTtlMs' }));
    expect(() => new CreditMeter({ mode: 'free' as never })).toThrow(expect.objectContaining({ field: 'mode' }));
    expect(() => new CreditMeter({ lowBalanceThresholds: [1.5] })).toThrow(expect.objectContaining({ field: 'lowBalanceThresholds.0' }));
    expect(() => new CreditMeter({ providers: { openai: {} as never } })).toThrow(expect.objectContaining({ field: 'providers.openai' }));
  });
});

describe('parseMeterOptions - validated, defaulted and frozen at construction', () => {
  it('fills every default and freezes the result', () => {
    const config = parseMeterOptions(undefined);
    expect(config).toMatchObject({
      storage: undefined,
      mode: 'cloud',
      models: DEFAULT_MODEL_PRICES,
      plans: DEFAULT_PLANS,
      holdTtlMs: DEFAULT_HOLD_TTL_MS,
      lowBalanceThresholds: DEFAULT_THRESHOLDS,
      lowBalanceLevels: [],
      onRecharge: undefined,
      onStorageFailure: 'refuse',
      storageTimeoutMs: undefined,
      byoKeys: undefined,
      clock: undefined,
    });
    expect(Object.isFrozen(config)).toBe(true);
    expect(Object.isFrozen(config.providers)).toBe(true);
    expect(Object.getPrototypeOf(config.providers)).toBeNull();
    expect(typeof config.onEventError).toBe('function');
    const first = config.generateReplyId();
    expect(first).toMatch(/^[A-Za-z0-9_-]{22}-1$/);
    expect(config.generateReplyId()).not.toBe(first);
  });

  it('sorts and deduplicates thresholds, copies providers', () => {
    const provider = { generate: async () => ({ output: 'x' }) };
    const providers = { openai: provider };
    const config = parseMeterOptions({
      lowBalanceThresholds: [1, 0.5, 0.5],
      lowBalanceLevels: [10, '100', 10],
      providers,
      holdTtlMs: 1000,
    });
    expect(config.lowBalanceThresholds).toEqual([0.5, 1]);
    expect(config.lowBalanceLevels).toEqual([100_000_000, 10_000_000]);
    expect(config.providers.openai).toBe(provider);
    expect(config.providers).not.toBe(providers);
    expect(config.holdTtlMs).toBe(1000);
  });

  it('reports every bad option at once, the first in field', () => {
    let caught: unknown;
    try {
      parseMeterOptions({ holdTTLMs: 5, mode: 'free', models: [], storage: {} });
    } catch (error) {
      caught = error;
    }
    expect(caught).toBeInstanceOf(InvalidInputError);
    const { field, issues, message } = caught as InvalidInputError;
    expect(field).toBe('holdTTLMs');
    expect(message).toContain('did you mean "holdTtlMs"?');
    expect(issues.map((issue) => issue.path)).toEqual(['holdTTLMs', 'mode', 'models', 'storage']);
  });

  it('accepts a store on the load/commit seam', () => {
    expect(parseMeterOptions({ storage: new MemoryStorage() }).storage).toBeInstanceOf(MemoryStorage);
  });

  it('checkedReplyIdGenerator checks every id it makes', () => {
    const ids = ['ok-1', '', 'ok-2'];
    const next = checkedReplyIdGenerator(() => ids.shift() as string);
    expect(next()).toBe('ok-1');
    expect(next).toThrow(expect.objectContaining({ code: 'INVALID_INPUT', field: 'generateReplyId' }));
    expect(next()).toBe('ok-2');
  });
});

describe('strict inputs - hints for near misses', () => {
  it.each([
    ['replyID', 'replyId'],
    ['expiresAT', 'expiresAt'],
    ['grantid', 'grantId'],
    ['modle', 'model'],
    ['workspace', 'workspaceId'],
  ])('%s → %s', (typo, key) => {
    expect(closestKey(typo, ['workspaceId', 'replyId', 'expiresAt', 'grantId', 'model', 'agentId'])).toBe(key);
  });

  it('gives no hint when nothing is close', () => {
    expect(closestKey('zzz', ['model', 'replyId'])).toBeUndefined();
    expect(closestKey('to', ['from', 'limit'])).toBeUndefined();
  });
});

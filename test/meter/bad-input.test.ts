/**
 * Malformed input at every public entry point: each case must fail with a CreditsError of
 * code INVALID_INPUT naming the field at fault, call no provider, and leave the store as it
 * was (the workspace summary and the whole ledger compared before and after).
 */
import { Decimal } from 'decimal.js';
import { describe, expect, it } from 'vitest';
import {
  CreditMeter,
  CreditsError,
  DEFAULT_MODEL_PRICES,
  DEFAULT_PLANS,
  defineModelPrices,
  definePlans,
  type LedgerEntry,
  type ReplyProvider,
} from '../../src/index.js';

const NOW = Date.parse('2026-01-15T12:00:00Z');
const ID_10KB = 'x'.repeat(10 * 1024);

interface Ctx {
  meter: CreditMeter;
  provider: ReplyProvider;
  calls: { count: number };
}

async function setup(extra: Record<string, unknown> = {}): Promise<Ctx> {
  const calls = { count: 0 };
  const provider: ReplyProvider = {
    async generate() {
      calls.count++;
      return { output: 'ok' };
    },
  };
  const meter = new CreditMeter({
    clock: () => new Date(NOW),
    providers: { openai: provider, anthropic: provider, bookbag: provider },
    ...extra,
  });
  await meter.createWorkspace({ workspaceId: 'ws', plan: 'free' });
  await meter.reserve({ ...ids, replyId: 'held' });
  return { meter, provider, calls };
}

async function snapshot(meter: CreditMeter): Promise<string> {
  const entries: LedgerEntry[] = [];
  let cursor: string | undefined;
  do {
    const page = await meter.ledger({ workspaceId: 'ws', limit: 1000, ...(cursor !== undefined && { cursor }) });
    entries.push(...page.entries);
    cursor = page.nextCursor;
  } while (cursor);
  return JSON.stringify({ workspace: await meter.getWorkspace('ws'), entries });
}

// ─── valid inputs, one per entry point; each case breaks one thing ─────────

const ids = { workspaceId: 'ws', agentId: 'agent', conversationId: 'conv', model: 'gpt-4o-mini' };
const replyInput = { ...ids, input: 'hello' };
const ref = { workspaceId: 'ws', replyId: 'held' };
const range = { from: '2026-01-01T00:00:00Z', to: '2026-02-01T00:00:00Z' };

type Entry =
  | 'options'
  | 'createWorkspace'
  | 'getWorkspace'
  | 'quote'
  | 'reply'
  | 'replyStream'
  | 'reserve'
  | 'settle'
  | 'release'
  | 'changePlan'
  | 'addCredits'
  | 'ledger'
  | 'usage'
  | 'defineModelPrices'
  | 'definePlans';

interface Case {
  entry: Entry;
  label: string;
  run: (ctx: Ctx) => unknown;
  field: string;
  /** A text the message must contain (a hint). */
  hint?: string;
}

const cases: Case[] = [];
const anyInput = (value: unknown) => value as never;

/** Calls an entry point with `input`; reply streams are iterated so that nothing is left pending. */
function call(entry: Entry, input: unknown): (ctx: Ctx) => unknown {
  return async ({ meter }) => {
    switch (entry) {
      case 'createWorkspace':
        return meter.createWorkspace(anyInput(input));
      case 'getWorkspace':
        return meter.getWorkspace(anyInput(input));
      case 'quote':
        return meter.quote(anyInput(input));
      case 'reply':
        return meter.reply(anyInput(input));
      case 'replyStream': {
        const stream = await meter.replyStream(anyInput(input));
        for await (const _chunk of stream) {
          // drain
        }
        return stream.result;
      }
      case 'reserve':
        return meter.reserve(anyInput(input));
      case 'settle':
        return meter.settle(anyInput(input));
      case 'release':
        return meter.release(anyInput(input));
      case 'changePlan':
        return meter.changePlan(anyInput(input));
      case 'addCredits':
        return meter.addCredits(anyInput(input));
      case 'ledger':
        return meter.ledger(anyInput(input));
      case 'usage':
        return meter.usage(anyInput(input));
      default:
        throw new Error(`no caller for ${entry}`);
    }
  };
}

function add(entry: Entry, label: string, input: unknown, field: string, hint?: string): void {
  cases.push({ entry, label, run: call(entry, input), field, ...(hint !== undefined && { hint }) });
}

// ─── ids ───────────────────────────────────────────────────────────────────

const BAD_IDS: Array<[string, unknown]> = [
  ['empty', ''],
  ['10 kB', ID_10KB],
  ['256 chars', 'x'.repeat(256)],
  ['__proto__', '__proto__'],
  ['constructor', 'constructor'],
  ['prototype', 'prototype'],
  ['NUL', 'a\u0000b'],
  ['newline', 'a\nb'],
  ['DEL', 'a\u007fb'],
  ['C1 control', 'a\u0085b'],
  ['line separator', 'a\u2028b'],
  ['lone surrogate', 'a\uD800b'],
  ['number', 42],
  ['null', null],
  ['object', { id: 'ws' }],
  ['array', ['ws']],
];

const ID_FIELDS: Array<[Entry, Record<string, unknown>, string[]]> = [
  ['reply', replyInput, ['workspaceId', 'agentId', 'conversationId', 'model', 'replyId']],
  ['replyStream', replyInput, ['workspaceId', 'agentId', 'conversationId', 'model', 'replyId']],
  ['reserve', ids, ['workspaceId', 'agentId', 'conversationId', 'model', 'replyId']],
  ['settle', ref, ['workspaceId', 'replyId', 'model']],
  ['release', ref, ['workspaceId', 'replyId']],
  ['createWorkspace', { workspaceId: 'ws2', plan: 'free' }, ['workspaceId', 'plan']],
  ['quote', { workspaceId: 'ws', model: 'gpt-4o-mini' }, ['workspaceId', 'model']],
  ['changePlan', { workspaceId: 'ws', plan: 'pro' }, ['workspaceId', 'plan']],
  ['addCredits', { workspaceId: 'ws', credits: 5, grantId: 'g1' }, ['workspaceId', 'grantId']],
  ['ledger', { workspaceId: 'ws' }, ['workspaceId', 'agentId']],
  ['usage', { workspaceId: 'ws', ...range, groupBy: 'agent' }, ['workspaceId']],
];

for (const [entry, base, fields] of ID_FIELDS) {
  for (const field of fields) {
    // Every bad id on the first field of each entry point, a spread of them on the others.
    const bad = field === fields[0] ? BAD_IDS : BAD_IDS.filter((_, i) => i % 4 === fields.indexOf(field) % 4);
    for (const [label, value] of bad) add(entry, `${field} = ${label}`, { ...base, [field]: value }, field);
  }
}
for (const [label, value] of BAD_IDS) {
  cases.push({ entry: 'getWorkspace', label: `id = ${label}`, run: call('getWorkspace', value), field: 'workspaceId' });
}

// ─── amounts ─────────────────────────────────────────────────────────────

const lookAlike = { s: 1, e: 0, d: [5], toStringTag: '[object Decimal]' };
const BAD_AMOUNTS: Array<[string, unknown]> = [
  ['NaN', Number.NaN],
  ['Infinity', Number.POSITIVE_INFINITY],
  ['-Infinity', Number.NEGATIVE_INFINITY],
  ['-1', -1],
  ['1e400 (a number)', Number('1e400')],
  ['"1e400"', '1e400'],
  ['"abc"', 'abc'],
  ['""', ''],
  ['1.0000001', 1.0000001],
  ['"1.0000001"', '1.0000001'],
  ['"2000000000" (above the cap)', '2000000000'],
  ['"0x10"', '0x10'],
  ['"NaN"', 'NaN'],
  ['null', null],
  ['{}', {}],
  ['[1]', [1]],
  ['true', true],
  ['10n', 10n],
  ['a Decimal look-alike', lookAlike],
  ['a look-alike with toString', { ...lookAlike, toString: () => '5' }],
  ['Decimal(NaN)', new Decimal(Number.NaN)],
  ['Decimal(-3)', new Decimal(-3)],
  ['Decimal(1e-7)', new Decimal('1e-7')],
];
for (const [label, value] of BAD_AMOUNTS) {
  add('addCredits', `credits = ${label}`, { workspaceId: 'ws', credits: value, grantId: 'g1' }, 'credits');
}
for (const [label, value] of BAD_AMOUNTS.filter((_, i) => i % 2 === 0)) {
  add('createWorkspace', `enterprise allotment = ${label}`, { workspaceId: 'ws2', plan: 'enterprise', allotment: value }, 'allotment');
}
for (const [label, value] of BAD_AMOUNTS.filter((_, i) => i % 2 === 1)) {
  add('changePlan', `enterprise allotment = ${label}`, { workspaceId: 'ws', plan: 'enterprise', allotment: value }, 'allotment');
}
add('addCredits', 'credits = 0', { workspaceId: 'ws', credits: 0, grantId: 'g1' }, 'credits');
add('createWorkspace', 'an allotment for a fixed plan', { workspaceId: 'ws2', plan: 'free', allotment: 5 }, 'allotment');
add('createWorkspace', 'no allotment for a custom plan', { workspaceId: 'ws2', plan: 'enterprise' }, 'allotment');

// ─── dates ───────────────────────────────────────────────────────────────

const BAD_DATES: Array<[string, unknown]> = [
  ['"yesterday"', 'yesterday'],
  ['month 13', '2026-13-01T00:00:00Z'],
  ['Feb 30', '2026-02-30T00:00:00Z'],
  ['no time', '2026-03-01'],
  ['no offset', '2026-03-01T00:00:00'],
  ['Invalid Date', new Date(Number.NaN)],
  ['a number', 1767225600000],
  ['before 1970', '1969-12-31T23:59:59Z'],
  ['after 9999', '+010000-01-01T00:00:00Z'],
  ['{}', {}],
  ['null', null],
];
for (const [label, value] of BAD_DATES) {
  add('addCredits', `expiresAt = ${label}`, { workspaceId: 'ws', credits: 5, grantId: 'g1', expiresAt: value }, 'expiresAt');
  add('ledger', `from = ${label}`, { workspaceId: 'ws', from: value }, 'from');
}
for (const [label, value] of BAD_DATES.filter((_, i) => i % 2 === 0)) {
  add('usage', `to = ${label}`, { workspaceId: 'ws', from: range.from, to: value, groupBy: 'agent' }, 'to');
  add('createWorkspace', `startsAt = ${label}`, { workspaceId: 'ws2', plan: 'free', startsAt: value }, 'startsAt');
}
add(
  'addCredits',
  'expiresAt in the past',
  { workspaceId: 'ws', credits: 5, grantId: 'g1', expiresAt: '2026-01-01T00:00:00Z' },
  'expiresAt',
);
add('createWorkspace', 'startsAt in the future', { workspaceId: 'ws2', plan: 'free', startsAt: '2027-01-01T00:00:00Z' }, 'startsAt');
add('ledger', 'to before from', { workspaceId: 'ws', from: range.to, to: range.from }, 'to');
add('usage', 'to before from', { workspaceId: 'ws', from: range.to, to: range.from, groupBy: 'agent' }, 'to');

// ─── other fields ────────────────────────────────────────────────────────

for (const [label, limit] of [
  ['0', 0],
  ['1001', 1001],
  ['1.5', 1.5],
  ['"10"', '10'],
  ['NaN', Number.NaN],
  ['-1', -1],
] as const) {
  add('ledger', `limit = ${label}`, { workspaceId: 'ws', limit }, 'limit');
}
for (const [label, cursor] of [
  ['"nope"', 'nope'],
  ['a number', 3],
  ['21 digits', '1'.repeat(21)],
  ['""', ''],
] as const) {
  add('ledger', `cursor = ${label}`, { workspaceId: 'ws', cursor }, 'cursor');
}
add('usage', 'groupBy = "team"', { workspaceId: 'ws', ...range, groupBy: 'team' }, 'groupBy');
add('usage', 'no groupBy', { workspaceId: 'ws', ...range }, 'groupBy');
add('usage', 'interval = "hour"', { workspaceId: 'ws', ...range, groupBy: 'agent', interval: 'hour' }, 'interval');
add('usage', 'no from', { workspaceId: 'ws', to: range.to, groupBy: 'agent' }, 'from');
add('reply', 'signal = {}', { ...replyInput, signal: {} }, 'signal');
add('reply', 'signal = "abort"', { ...replyInput, signal: 'abort' }, 'signal');
add('replyStream', 'signal = { aborted: false }', { ...replyInput, signal: { aborted: false } }, 'signal');
add('reply', 'provider = {}', { ...replyInput, provider: {} }, 'provider');
add('reply', 'provider = 5', { ...replyInput, provider: 5 }, 'provider');
add('replyStream', 'provider.stream = 5', { ...replyInput, provider: { generate: async () => ({ output: 'x' }), stream: 5 } }, 'provider');
add('settle', 'usage.inputTokens = -1', { ...ref, usage: { inputTokens: -1 } }, 'usage.inputTokens');
add('settle', 'usage.outputTokens = 1.5', { ...ref, usage: { outputTokens: 1.5 } }, 'usage.outputTokens');
add('settle', 'usage = "lots"', { ...ref, usage: 'lots' }, 'usage');

// ─── not an object at all ──────────────────────────────────────────────────

for (const entry of [
  'reply',
  'reserve',
  'settle',
  'release',
  'createWorkspace',
  'quote',
  'changePlan',
  'addCredits',
  'ledger',
  'usage',
] as const) {
  add(entry, 'input = null', null, '(input)');
  add(entry, 'input = "ws"', 'ws', '(input)');
}
add('replyStream', 'input = []', [], '(input)');

// ─── unknown keys (typos silently dropped before) and prototype keys ─────────

add('reply', 'replyID (a typo)', { ...replyInput, replyID: 'r-1' }, 'replyID', 'did you mean "replyId"?');
add('replyStream', 'replyID (a typo)', { ...replyInput, replyID: 'r-1' }, 'replyID', 'did you mean "replyId"?');
add('reserve', 'replyID (a typo)', { ...ids, replyID: 'r-1' }, 'replyID', 'did you mean "replyId"?');
add('reply', 'signl (a typo)', { ...replyInput, signl: new AbortController().signal }, 'signl', 'did you mean "signal"?');
add(
  'addCredits',
  'expiresAT (a typo)',
  { workspaceId: 'ws', credits: 5, grantId: 'g1', expiresAT: '2027-01-01T00:00:00Z' },
  'expiresAT',
  'did you mean "expiresAt"?',
);
add('addCredits', 'grant_id', { workspaceId: 'ws', credits: 5, grantId: 'g1', grant_id: 'g2' }, 'grant_id', 'did you mean "grantId"?');
add(
  'createWorkspace',
  'startAt',
  { workspaceId: 'ws2', plan: 'free', startAt: '2026-01-01T00:00:00Z' },
  'startAt',
  'did you mean "startsAt"?',
);
add(
  'changePlan',
  'allotement',
  { workspaceId: 'ws', plan: 'enterprise', allotment: 5, allotement: 6 },
  'allotement',
  'did you mean "allotment"?',
);
add('quote', 'modle', { workspaceId: 'ws', model: 'gpt-4o', modle: 'x' }, 'modle', 'did you mean "model"?');
add('settle', 'modle', { ...ref, modle: 'gpt-4o' }, 'modle', 'did you mean "model"?');
add('release', 'force', { ...ref, force: true }, 'force');
add('ledger', 'limt', { workspaceId: 'ws', limt: 5 }, 'limt', 'did you mean "limit"?');
add('usage', 'groupby', { workspaceId: 'ws', ...range, groupBy: 'agent', groupby: 'model' }, 'groupby', 'did you mean "groupBy"?');
add('reserve', 'input (a reply field)', { ...ids, input: 'x' }, 'input');
for (const key of ['__proto__', 'constructor', 'prototype']) {
  const polluted = () => JSON.parse(`{"${key}":{"polluted":true}}`) as Record<string, unknown>;
  add('reply', `key ${key}`, Object.assign(polluted(), replyInput), key);
  add('addCredits', `key ${key}`, Object.assign(polluted(), { workspaceId: 'ws', credits: 5, grantId: 'g1' }), key);
  add('createWorkspace', `key ${key}`, Object.assign(polluted(), { workspaceId: 'ws2', plan: 'free' }), key);
}
add('settle', 'usage.tokens', { ...ref, usage: { tokens: 5 } }, 'usage.tokens');

// ─── constructor options ─────────────────────────────────────────────────

function option(label: string, options: unknown, field: string, hint?: string): void {
  cases.push({
    entry: 'options',
    label,
    run: () => new CreditMeter(options as never),
    field,
    ...(hint !== undefined && { hint }),
  });
}
const goodProvider = { generate: async () => ({ output: 'x' }) };
option('options = "abc"', 'abc', 'options');
option('options = null', null, 'options');
option('options = []', [], 'options');
option('an unknown option', { holdTTLMs: 1000 }, 'holdTTLMs', 'did you mean "holdTtlMs"?');
option('an unknown option (modes)', { modes: 'cloud' }, 'modes', 'did you mean "mode"?');
option('a prototype key', JSON.parse('{"__proto__":{"polluted":true}}'), '__proto__');
option('mode = "free"', { mode: 'free' }, 'mode');
option('onStorageFailure = "maybe"', { onStorageFailure: 'maybe' }, 'onStorageFailure');
option('models = an array', { models: [...DEFAULT_MODEL_PRICES.models] }, 'models', 'defineModelPrices');
option('models = {}', { models: {} }, 'models');
option('plans = "abc"', { plans: 'abc' }, 'plans');
option('plans = an array', { plans: [...DEFAULT_PLANS.plans] }, 'plans', 'definePlans');
option('storage = {}', { storage: {} }, 'storage');
option('storage = "memory"', { storage: 'memory' }, 'storage');
option('storage without load/commit', { storage: { migrate: async () => {}, close: async () => {} } }, 'storage');
option('lowBalanceThresholds = 5', { lowBalanceThresholds: 5 }, 'lowBalanceThresholds');
option('lowBalanceThresholds = [0]', { lowBalanceThresholds: [0] }, 'lowBalanceThresholds.0');
option('lowBalanceThresholds = [0.5, 1.5]', { lowBalanceThresholds: [0.5, 1.5] }, 'lowBalanceThresholds.1');
option('lowBalanceThresholds = [NaN]', { lowBalanceThresholds: [Number.NaN] }, 'lowBalanceThresholds.0');
option('lowBalanceThresholds = ["0.8"]', { lowBalanceThresholds: ['0.8'] }, 'lowBalanceThresholds.0');
option('lowBalanceLevels = 5', { lowBalanceLevels: 5 }, 'lowBalanceLevels');
option('lowBalanceLevels = ["abc"]', { lowBalanceLevels: ['abc'] }, 'lowBalanceLevels.0');
option('lowBalanceLevels = [10, -1]', { lowBalanceLevels: [10, -1] }, 'lowBalanceLevels.1');
for (const [label, value] of [
  ['-1', -1],
  ['0', 0],
  ['0.5', 0.5],
  ['NaN', Number.NaN],
  ['"1000"', '1000'],
  ['10 (below 50 ms)', 10],
  ['8 days', 8 * 86_400_000],
  ['1e20 (an Invalid Date)', 1e20],
] as const) {
  option(`holdTtlMs = ${label}`, { holdTtlMs: value }, 'holdTtlMs');
}
for (const [label, value] of [
  ['0', 0],
  ['Infinity', Number.POSITIVE_INFINITY],
  ['1e10', 1e10],
  ['"20"', '20'],
] as const) {
  option(`storageTimeoutMs = ${label}`, { storageTimeoutMs: value }, 'storageTimeoutMs');
}
option('providers = a Map', { providers: new Map([['openai', goodProvider]]) }, 'providers');
option('providers = an array', { providers: [goodProvider] }, 'providers');
option('providers.openai = {}', { providers: { openai: {} } }, 'providers.openai');
option('providers.openai.generate = 1', { providers: { openai: { generate: 1 } } }, 'providers.openai');
option('providers.openai.stream = 5', { providers: { openai: { ...goodProvider, stream: 5 } } }, 'providers.openai');
for (const key of ['byoKeys', 'clock', 'onEventError', 'generateReplyId', 'onRecharge']) option(`${key} = "x"`, { [key]: 'x' }, key);

// generateReplyId's output is checked on every call, before anything is held.
for (const [label, id] of [
  ['""', ''],
  ['42', 42],
  ['__proto__', '__proto__'],
  ['a NUL', 'a\u0000b'],
  ['10 kB', ID_10KB],
] as const) {
  cases.push({
    entry: 'reply',
    label: `generateReplyId returns ${label}`,
    field: 'generateReplyId',
    run: async ({ meter, provider }) => {
      // A second meter on the first one's store, whose generator misbehaves.
      const bad = new CreditMeter({
        storage: meter.storage,
        clock: () => new Date(NOW),
        providers: { openai: provider },
        generateReplyId: () => id as string,
      });
      return bad.reply(replyInput);
    },
  });
}

// ─── defineModelPrices / definePlans ──────────────────────────────────────

const model = { id: 'm', name: 'M', provider: 'openai', credits: 1, providerBacked: true };
function prices(label: string, entries: unknown, field: string, options?: unknown): void {
  cases.push({ entry: 'defineModelPrices', label, run: () => defineModelPrices(entries as never, options as never), field });
}
prices('entries = "abc"', 'abc', 'models');
prices('entries = []', [], 'models');
prices('credits = -1', [{ ...model, credits: -1 }], 'models.0.credits');
prices('credits = 1.0000001', [{ ...model, credits: 1.0000001 }], 'models.0.credits');
prices('credits = NaN', [{ ...model, credits: Number.NaN }], 'models.0.credits');
prices('credits = a look-alike', [{ ...model, credits: lookAlike }], 'models.0.credits');
prices('id = ""', [{ ...model, id: '' }], 'models.0.id');
prices('id = __proto__', [{ ...model, id: '__proto__' }], 'models.0.id');
prices('a duplicate id', [model, model], 'models.1.id');
prices('providerBacked = "yes"', [{ ...model, providerBacked: 'yes' }], 'models.0.providerBacked');
prices('an unknown key', [{ ...model, cost: 2 }], 'models.0.cost');
prices('version = ""', [model], 'options.version', { version: '' });
prices('an unknown option', [model], 'options.versoin', { versoin: 'v1' });
const plan = { id: 'p', name: 'P', monthlyCredits: 100 };
function catalog(label: string, entries: unknown, field: string): void {
  cases.push({ entry: 'definePlans', label, run: () => definePlans(entries as never), field });
}
catalog('entries = {}', {}, 'plans');
catalog('monthlyCredits = -5', [{ ...plan, monthlyCredits: -5 }], 'plans.0.monthlyCredits');
catalog('monthlyCredits = "abc"', [{ ...plan, monthlyCredits: 'abc' }], 'plans.0.monthlyCredits');
catalog('rolloverCap = Infinity', [{ ...plan, rolloverCap: Number.POSITIVE_INFINITY }], 'plans.0.rolloverCap');
catalog('a duplicate id', [plan, plan], 'plans.1.id');
catalog('an unknown key', [{ ...plan, rollover: 10 }], 'plans.0.rollover');

// ─── the run ─────────────────────────────────────────────────────────────

describe('bad input - INVALID_INPUT naming the field, no provider call, the store unchanged', () => {
  it('covers every entry point with at least 100 cases', () => {
    expect(cases.length).toBeGreaterThanOrEqual(100);
    const entries = new Set(cases.map((c) => c.entry));
    for (const entry of [
      'options',
      'createWorkspace',
      'getWorkspace',
      'quote',
      'reply',
      'replyStream',
      'reserve',
      'settle',
      'release',
      'changePlan',
      'addCredits',
      'ledger',
      'usage',
      'defineModelPrices',
      'definePlans',
    ] as const) {
      expect(entries.has(entry), entry).toBe(true);
    }
  });

  it.each(cases.map((c) => [`${c.entry} - ${c.label}`, c] as const))('%s', async (_name, testCase) => {
    const ctx = await setup();
    const before = await snapshot(ctx.meter);
    let caught: unknown;
    try {
      await testCase.run(ctx);
    } catch (error) {
      caught = error;
    }
    expect(caught, 'the call must fail').toBeDefined();
    expect(caught, String(caught)).toBeInstanceOf(CreditsError);
    expect(CreditsError.is(caught)).toBe(true);
    expect((caught as CreditsError).code, String(caught)).toBe('INVALID_INPUT');
    expect((caught as { field?: string }).field).toBe(testCase.field);
    expect((caught as Error).message).toContain(testCase.field === '(input)' ? 'Invalid' : testCase.field);
    if (testCase.hint !== undefined) expect((caught as Error).message).toContain(testCase.hint);
    expect(ctx.calls.count).toBe(0);
    expect(await snapshot(ctx.meter)).toBe(before);
    expect(({} as Record<string, unknown>).polluted).toBeUndefined();
  });
});

import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { CreditMeter } from '../../src/index.js';
import {
  LEDGER_COLUMNS,
  type LedgerRow,
  MemoryStorage,
  type PackedLedgerRow,
  type PackedRecord,
  packLedgerRow,
  packRecord,
  type RecordValue,
  type StoredRecord,
  unpackLedgerRow,
  unpackRecord,
  type WorkspaceCommit,
} from '../../src/storage/index.js';
import { overriding } from '../../src/testing/fixtures.js';

/** Through JSON, as a store keeps it. */
const stored = <T>(value: T): T => JSON.parse(JSON.stringify(value)) as T;

/** Every record and ledger row a meter commits while it goes through each kind of change. */
async function whatTheCoreWrites(): Promise<{ records: StoredRecord[]; rows: LedgerRow[] }> {
  const records: StoredRecord[] = [];
  const rows: LedgerRow[] = [];
  const memory = new MemoryStorage();
  const storage = overriding(memory, {
    commit: (commits: readonly WorkspaceCommit[]) => {
      for (const commit of commits) {
        records.push(...commit.records);
        rows.push(...commit.ledger);
      }
      return memory.commit(commits);
    },
  });
  let now = Date.parse('2026-11-27T10:00:00Z');
  const meter = new CreditMeter({ storage, clock: () => new Date(now) });
  const workspaceId = 'ws_pack';
  await meter.createWorkspace({ workspaceId, plan: 'hobby' });
  await meter.addCredits({ workspaceId, credits: 50, grantId: 'topup-1', expiresAt: '2027-01-01T00:00:00Z' });
  const held = await meter.reserve({ workspaceId, agentId: 'agent-é', conversationId: 'c 1', model: 'gpt-4o-mini' });
  await meter.settle({ workspaceId, replyId: held.replyId, usage: { inputTokens: 12, outputTokens: 34 } });
  await meter.refund({ workspaceId, replyId: held.replyId, refundId: 'refund-1', reason: 'wrong answer' });
  await meter.adjust({ workspaceId, adjustmentId: 'adjust-1', credits: -2, reason: 'goodwill 🎁' });
  const released = await meter.reserve({ workspaceId, agentId: 'agent-é', conversationId: 'c 2', model: 'gpt-4o-mini' });
  await meter.release({ workspaceId, replyId: released.replyId });
  await meter.reserve({ workspaceId, agentId: 'agent-2', conversationId: 'c 3', model: 'gpt-4o-mini' });
  now += 86_400_000; // the hold lapses, a new day is marked
  await meter.reserve({ workspaceId, agentId: 'agent-2', conversationId: 'c 4', model: 'gpt-4o-mini' });
  return { records, rows };
}

describe('packRecord / unpackRecord', () => {
  it('every record the core writes packs to an array and comes back equal through JSON', async () => {
    const { records } = await whatTheCoreWrites();
    const types = new Set(records.map(({ value }) => value.type));
    expect([...types].sort()).toEqual(['adjustment', 'ledgerDay', 'refund', 'reply', 'topup']);
    const statuses = new Set(records.flatMap(({ value }) => (value.type === 'reply' ? [value.status] : [])));
    expect([...statuses].sort()).toEqual(['expired', 'held', 'released', 'settled']);
    for (const { value } of records) {
      const packed = packRecord(value);
      expect(Array.isArray(packed), value.type).toBe(true);
      expect(unpackRecord(stored(packed))).toStrictEqual(value);
    }
  });

  it('a reply record packs to under half the length of its JSON object', async () => {
    const { records } = await whatTheCoreWrites();
    for (const { value } of records.filter((record) => record.value.type === 'reply')) {
      expect(JSON.stringify(packRecord(value)).length).toBeLessThan(JSON.stringify(value).length / 2);
    }
  });

  it('a value stored whole (before packing) reads back as it is', async () => {
    const { records } = await whatTheCoreWrites();
    for (const { value } of records) expect(unpackRecord(stored(value))).toStrictEqual(value);
  });

  it('lossless for any value: one that is not exactly a known record shape is kept whole', () => {
    const field = fc.constantFrom('replyId', 'amount', 'allocations', 'paidFrom', 'grantId', 'day', 'firstSeq', 'reason', 'extra');
    const value = fc.record({
      type: fc.constantFrom('reply', 'topup', 'refund', 'adjustment', 'ledgerDay', 'toString', 'other'),
      fields: fc.dictionary(field, fc.oneof(fc.jsonValue(), fc.array(fc.record({ grantId: fc.string(), amount: fc.integer() })))),
    });
    fc.assert(
      fc.property(value, ({ type, fields }) => {
        const original = stored({ ...fields, type }) as unknown as RecordValue;
        expect(unpackRecord(stored(packRecord(original)))).toStrictEqual(original);
      }),
      { numRuns: 2000 },
    );
  });

  it('a record whose allocations are not plain { grantId, amount } pairs is kept whole', async () => {
    const { records } = await whatTheCoreWrites();
    const reply = records.find(({ value }) => value.type === 'reply' && value.paidFrom.length > 0)!.value;
    const odd = { ...reply, paidFrom: [{ grantId: 'g', amount: 1, note: 'x' }] } as unknown as RecordValue;
    expect(packRecord(odd)).toBe(odd);
    expect(packRecord({ ...reply, agentId: undefined } as unknown as RecordValue)).not.toBeInstanceOf(Array);
  });

  it('an array of a type this release does not know is refused, not misread', () => {
    expect(() => unpackRecord(['invoice', 'x', 1] as unknown as PackedRecord)).toThrow(/unknown record type "invoice"/);
    expect(() => unpackRecord(['toString', 'x'] as unknown as PackedRecord)).toThrow(/unknown record type "toString"/);
  });
});

describe('packLedgerRow / unpackLedgerRow', () => {
  it('every row the core writes packs to its columns and comes back equal through JSON', async () => {
    const { rows } = await whatTheCoreWrites();
    expect(new Set(rows.map((row) => row.kind)).size).toBeGreaterThanOrEqual(5);
    for (const row of rows) {
      const packed = packLedgerRow(row) as PackedLedgerRow;
      expect(packed).toHaveLength(LEDGER_COLUMNS.length);
      expect(JSON.stringify(packed).length).toBeLessThan(JSON.stringify(row).length * 0.6);
      expect(unpackLedgerRow(stored(packed), row.workspaceId)).toStrictEqual(row);
      expect(unpackLedgerRow(stored(row), 'ignored for a whole row')).toStrictEqual(row);
    }
  });

  it('a row with a missing or an extra field is kept whole', async () => {
    const [row] = (await whatTheCoreWrites()).rows;
    const extra = { ...row!, note: 'x' } as LedgerRow;
    const missing = { ...row!, reason: undefined } as unknown as LedgerRow;
    expect(packLedgerRow(extra)).toBe(extra);
    expect(packLedgerRow(missing)).toBe(missing);
  });
});

/**
 * Compact forms of what a store keeps as JSON: a record value or a ledger row as an array of
 * its fields in a fixed order, without the field names. Optional for a store; the shipped ones
 * use it because a charge writes its reply record twice and a ledger row once, and the names
 * are most of those bytes.
 */
import { LEDGER_COLUMNS } from '../core/ledger-row.js';
import type { Allocation, LedgerRow, StoredRecord } from '../core/state.js';

/** The value of a {@link StoredRecord}: a reply, top-up, refund, adjustment or ledger-day record. */
export type RecordValue = StoredRecord['value'];

/**
 * A record value packed by {@link packRecord}: its `type`, then its fields in a fixed order, with
 * each list of allocations flattened to `grantId, amount, grantId, amount, …`. Plain JSON.
 */
export type PackedRecord = [type: RecordValue['type'], ...fields: unknown[]];

type FieldsOf<T extends RecordValue['type']> = Exclude<keyof Extract<RecordValue, { type: T }>, 'type'>;

/**
 * Each type's fields in packed order. Append only: an array already stored is read by position.
 * The `satisfies` clause and {@link Complete} make leaving a field out a compile error.
 */
const FIELDS = {
  reply: [
    'replyId',
    'workspaceId',
    'agentId',
    'conversationId',
    'model',
    'heldModel',
    'route',
    'amount',
    'priceVersion',
    'status',
    'createdAt',
    'expiresAt',
    'finishedAt',
    'entrySeq',
    'allocations',
    'paidFrom',
    'refunded',
    'refusedFor',
    'writtenBy',
  ],
  topup: ['grantId', 'amount', 'expiresAt', 'createdAt'],
  refund: ['refundId', 'replyId', 'amount', 'reason', 'createdAt'],
  adjustment: ['adjustmentId', 'amount', 'reason', 'expiresAt', 'createdAt'],
  ledgerDay: ['day', 'firstSeq'],
} as const satisfies { [T in RecordValue['type']]: readonly FieldsOf<T>[] };

type Complete = { [T in keyof typeof FIELDS]: Exclude<FieldsOf<T>, (typeof FIELDS)[T][number]> };
// A field a record type gained but FIELDS lacks turns `never` into its name here, and this fails.
const complete: { [T in keyof Complete]: Complete[T] extends never ? true : false } = {
  reply: true,
  topup: true,
  refund: true,
  adjustment: true,
  ledgerDay: true,
};
void complete;

const ALLOCATION_FIELDS: ReadonlySet<string> = new Set(['allocations', 'paidFrom']);

/**
 * An object with `fields` (all null) made by `JSON.parse`, to spread an unpacked value from: a
 * copy of it has every field in place from the start. Built field by field instead, an object
 * keeps most fields out of line, and the core's own `{ ...record }` of it was 4× slower (a
 * third of the throughput of four app servers on one SQLite file).
 */
const template = (fields: readonly string[], first: Record<string, unknown>): Record<string, unknown> =>
  JSON.parse(JSON.stringify({ ...first, ...Object.fromEntries(fields.map((field) => [field, null])) })) as Record<string, unknown>;
const TEMPLATES = Object.fromEntries(Object.entries(FIELDS).map(([type, fields]) => [type, template(fields, { type })])) as Record<
  RecordValue['type'],
  Record<string, unknown>
>;
const ROW_TEMPLATE = template(
  LEDGER_COLUMNS.map(({ field }) => field),
  { workspaceId: '' },
);
// Per type, whether each packed field is a list of allocations: looked up once, not per record.
const FLATTENED = Object.fromEntries(
  Object.entries(FIELDS).map(([type, fields]) => [type, fields.map((field: string) => ALLOCATION_FIELDS.has(field))]),
) as unknown as Record<RecordValue['type'], readonly boolean[]>;

/**
 * Packs a record value into an array of its fields, for a store that keeps records as JSON: a
 * reply record packs to about 40 % of its JSON object's length, and a charge writes its record
 * twice (at the hold and at the settle), so a store writes and parses less per charge.
 * {@link unpackRecord} reverses it. Lossless by construction: a value that is not exactly one of
 * the record shapes the core writes (a hand-made one in a test, say) comes back whole, since a
 * store must return any value unchanged. Optional: a store may keep values any way it likes.
 *
 * @example
 * ```ts
 * await db.run('INSERT INTO records (key, value) VALUES (?, ?)', record.key, JSON.stringify(packRecord(record.value)));
 * ```
 */
export function packRecord(value: RecordValue): PackedRecord | RecordValue {
  const fields: readonly string[] | undefined = Object.hasOwn(FIELDS, value.type) ? FIELDS[value.type] : undefined;
  if (fields === undefined || Object.keys(value).length !== fields.length + 1) return value;
  const flattened = FLATTENED[value.type];
  const item = value as unknown as Record<string, unknown>;
  const packed: PackedRecord = [value.type];
  for (let i = 0; i < fields.length; i++) {
    const field = item[fields[i]!];
    const flat = flattened[i] ? flatten(field) : field;
    if (flat === undefined) return value;
    packed.push(flat);
  }
  return packed;
}

/**
 * The record value {@link packRecord} packed, as a new object. A value that is not an array is
 * returned as it is, so records a store wrote as whole JSON objects stay readable beside packed
 * ones. Throws on a type it does not know (a newer release wrote it).
 */
export function unpackRecord(stored: PackedRecord | RecordValue): RecordValue {
  if (!Array.isArray(stored)) return stored;
  const [type] = stored;
  const fields: readonly string[] | undefined = Object.hasOwn(FIELDS, type) ? FIELDS[type] : undefined;
  if (fields === undefined) throw new Error(`unknown record type ${JSON.stringify(type)}: a newer release wrote it`);
  const value = { ...TEMPLATES[type] };
  const flattened = FLATTENED[type];
  for (let i = 0; i < fields.length; i++)
    value[fields[i]!] = flattened[i] ? unflatten(stored[i + 1] as (string | number)[]) : stored[i + 1];
  return value as unknown as RecordValue;
}

/** `grantId, amount, …`, or undefined when `allocations` is not a list of exactly such pairs. */
function flatten(allocations: unknown): (string | number)[] | undefined {
  if (!Array.isArray(allocations)) return undefined;
  const flat: (string | number)[] = [];
  for (const allocation of allocations as Record<string, unknown>[]) {
    const { grantId, amount } = allocation;
    if (typeof grantId !== 'string' || typeof amount !== 'number' || Object.keys(allocation).length !== 2) return undefined;
    flat.push(grantId, amount);
  }
  return flat;
}

function unflatten(flat: readonly (string | number)[]): Allocation[] {
  const allocations: Allocation[] = [];
  for (let i = 0; i < flat.length; i += 2) allocations.push({ grantId: flat[i] as string, amount: flat[i + 1] as number });
  return allocations;
}

/** A ledger row packed by {@link packLedgerRow}: its fields in the order of `LEDGER_COLUMNS`, without `workspaceId`. */
export type PackedLedgerRow = (string | number | null)[];

/**
 * Packs a ledger row into its fields in the order of `LEDGER_COLUMNS` (about 45 % of its JSON
 * object's length); {@link unpackLedgerRow} reverses it. The workspace is left out: a store
 * keeps rows per workspace. A row with other fields than a ledger row's comes back whole.
 */
export function packLedgerRow(row: LedgerRow): PackedLedgerRow | LedgerRow {
  if (Object.keys(row).length !== LEDGER_COLUMNS.length + 1) return row;
  const packed: PackedLedgerRow = [];
  for (const { field } of LEDGER_COLUMNS) {
    if (row[field] === undefined) return row;
    packed.push(row[field]);
  }
  return packed;
}

/**
 * The ledger row {@link packLedgerRow} packed, as a new object of `workspaceId`; a row that is not
 * an array (stored whole, before packing) is returned as it is.
 */
export function unpackLedgerRow(stored: PackedLedgerRow | LedgerRow, workspaceId: string): LedgerRow {
  if (!Array.isArray(stored)) return stored;
  const row: Record<string, unknown> = { ...ROW_TEMPLATE, workspaceId };
  for (let i = 0; i < LEDGER_COLUMNS.length; i++) row[LEDGER_COLUMNS[i]!.field] = stored[i];
  return row as unknown as LedgerRow;
}

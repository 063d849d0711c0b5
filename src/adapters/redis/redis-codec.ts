/**
 * Conversions between the contract's records and what the Redis scripts store and return:
 * flat hash replies (`[field, value, ...]`), JSON reply records, encoded grants and JSON
 * ledger rows. Numbers travel as decimal strings; `-0` is kept as `-0` so every row matches
 * the memory store's.
 */
import type {
  GrantKind,
  GrantRecord,
  LedgerKind,
  LedgerRow,
  LedgerRowInput,
  ReplyRecord,
  ReplyStatus,
  Route,
  WorkspaceRecord,
  WorkspaceState,
} from '../../storage/storage.js';

/** A number as the scripts expect it: decimal digits, `-0` kept. */
export function num(value: number): string {
  return Object.is(value, -0) ? '-0' : String(value);
}

/** An optional number: the empty string stands for null. */
export function optNum(value: number | null): string {
  return value === null ? '' : num(value);
}

function fields(flat: unknown): Map<string, string> {
  const map = new Map<string, string>();
  if (!Array.isArray(flat)) return map;
  for (let i = 0; i + 1 < flat.length; i += 2) map.set(String(flat[i]), String(flat[i + 1]));
  return map;
}

function required(map: Map<string, string>, name: string): string {
  const value = map.get(name);
  if (value === undefined) throw new Error(`stored record lacks field ${name}`);
  return value;
}

function requiredNumber(map: Map<string, string>, name: string): number {
  return Number(required(map, name));
}

/** The hash fields of a workspace record, null fields left out. */
export function workspacePairs(record: WorkspaceRecord): string[] {
  const pairs = [
    'workspaceId',
    record.workspaceId,
    'plan',
    record.plan,
    'allotment',
    num(record.allotment),
    'anchor',
    num(record.anchor),
    'periodIndex',
    num(record.periodIndex),
    'periodStart',
    num(record.periodStart),
    'periodEnd',
    num(record.periodEnd),
    'usedThisPeriod',
    num(record.usedThisPeriod),
    'version',
    num(record.version),
    'createdAt',
    num(record.createdAt),
  ];
  if (record.pendingPlan !== null) pairs.push('pendingPlan', record.pendingPlan);
  if (record.pendingAllotment !== null) pairs.push('pendingAllotment', num(record.pendingAllotment));
  return pairs;
}

/** A workspace record from its hash. */
export function decodeWorkspace(flat: unknown): WorkspaceRecord {
  const map = fields(flat);
  const pendingAllotment = map.get('pendingAllotment');
  return {
    workspaceId: required(map, 'workspaceId'),
    plan: required(map, 'plan'),
    allotment: requiredNumber(map, 'allotment'),
    pendingPlan: map.get('pendingPlan') ?? null,
    pendingAllotment: pendingAllotment === undefined ? null : Number(pendingAllotment),
    anchor: requiredNumber(map, 'anchor'),
    periodIndex: requiredNumber(map, 'periodIndex'),
    periodStart: requiredNumber(map, 'periodStart'),
    periodEnd: requiredNumber(map, 'periodEnd'),
    usedThisPeriod: requiredNumber(map, 'usedThisPeriod'),
    version: requiredNumber(map, 'version'),
    createdAt: requiredNumber(map, 'createdAt'),
  };
}

/**
 * A reply record from its stored form: a JSON array of strings in the order replyId,
 * workspaceId, agentId, conversationId, model, route, amount, priceVersion, status,
 * createdAt, expiresAt, finishedAt, entryId, alloc ('' for an absent finishedAt or entryId).
 */
export function decodeReply(json: unknown): ReplyRecord {
  if (typeof json !== 'string') throw new Error('stored reply record is missing');
  const cells = JSON.parse(json) as string[];
  if (!Array.isArray(cells) || cells.length < 13) throw new Error('stored reply record is malformed');
  const finishedAt = cells[11]!;
  const entryId = cells[12]!;
  return {
    replyId: cells[0]!,
    workspaceId: cells[1]!,
    agentId: cells[2]!,
    conversationId: cells[3]!,
    model: cells[4]!,
    route: cells[5] as Route,
    amount: Number(cells[6]),
    priceVersion: cells[7]!,
    status: cells[8] as ReplyStatus,
    createdAt: Number(cells[9]),
    expiresAt: Number(cells[10]),
    finishedAt: finishedAt === '' ? null : Number(finishedAt),
    entryId: entryId === '' ? null : entryId,
  };
}

/** True when a flat hash reply holds no fields. */
export function isEmptyHash(flat: unknown): boolean {
  return !Array.isArray(flat) || flat.length === 0;
}

/** A grant from its stored encoding `kind|amount|remaining|expiresAt|createdAt`. */
export function decodeGrant(grantId: string, encoded: string): GrantRecord {
  const [kind = '', amount = '', remaining = '', expiresAt = '', createdAt = ''] = encoded.split('|');
  return {
    grantId,
    kind: kind as GrantKind,
    amount: Number(amount),
    remaining: Number(remaining),
    expiresAt: expiresAt === '' ? null : Number(expiresAt),
    createdAt: Number(createdAt),
  };
}

/** The script arguments of a grant: id, kind, amount, remaining, expiresAt, createdAt. */
export function grantArgs(grant: GrantRecord): string[] {
  return [grant.grantId, grant.kind, num(grant.amount), num(grant.remaining), optNum(grant.expiresAt), num(grant.createdAt)];
}

/** A ledger row without its id, as the JSON array the scripts complete with the id. */
export function encodeEntry(entry: LedgerRowInput): string {
  return JSON.stringify([
    entry.workspaceId,
    entry.kind,
    num(entry.amount),
    num(entry.at),
    entry.replyId,
    entry.agentId,
    entry.conversationId,
    entry.model,
    entry.route,
    entry.priceVersion,
    entry.grantId,
    entry.plan,
  ]);
}

type Cell = string | null;

/** A ledger row from its stored JSON array. */
export function decodeRow(json: unknown): LedgerRow {
  const cells = JSON.parse(String(json)) as Cell[];
  const text = (i: number): string | null => cells[i] ?? null;
  return {
    id: String(cells[0]),
    workspaceId: String(cells[1]),
    kind: String(cells[2]) as LedgerKind,
    amount: Number(cells[3]),
    at: Number(cells[4]),
    replyId: text(5),
    agentId: text(6),
    conversationId: text(7),
    model: text(8),
    route: text(9) as Route | null,
    priceVersion: text(10),
    grantId: text(11),
    plan: text(12),
  };
}

/** A workspace state from a script's `{ hash, grants, available, held }` reply. */
export function decodeState(reply: unknown): WorkspaceState {
  const [flat, grantList, available, held] = reply as [unknown, string[], string, string];
  const grants: GrantRecord[] = [];
  for (let i = 0; i + 1 < grantList.length; i += 2) grants.push(decodeGrant(grantList[i]!, grantList[i + 1]!));
  return { workspace: decodeWorkspace(flat), grants, available: Number(available), held: Number(held) };
}

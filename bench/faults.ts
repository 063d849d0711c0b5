/**
 * App servers charging one workspace while the store's server drops their connections: every
 * `every` ms it kills a few of them (PostgreSQL `pg_terminate_backend`, Redis `CLIENT KILL`,
 * MariaDB `KILL`), as a restart or a failover would. `servers` meters, each with its own pool
 * or client, `in flight` charges each (reserve, then settle; a failed settle is released), for
 * `seconds`. Prints the kills, the charges and the failed calls by code, then checks what a
 * dropped connection must never do to the books:
 *
 * - every ledger `reply` row is a settle its caller saw succeed, and the other way round;
 * - every `reply.charged` event is one of those, announced once;
 * - balance + held = the ledger sum, and once every hold has lapsed, nothing is held.
 *
 *   npx tsx bench/faults.ts [store] [servers] [in flight] [seconds] [every]
 *
 * `store` is postgres (default), redis, redis-cluster or mysql, at `DATABASE_URL`, `REDIS_URL`,
 * `REDIS_CLUSTER_NODES` or `MYSQL_URL`. Exit code 1 when a check fails.
 */
import { Redis } from 'ioredis';
import mysql from 'mysql2/promise';
import pg from 'pg';
import { CreditMeter } from '../src/index.js';
import { addressFromEnv, connect, type StoreName } from './lib/stores.js';
import { createWorkspace, instantProvider, MODEL } from './lib/workload.js';

const store = (process.argv[2] ?? 'postgres') as StoreName;
const servers = Number(process.argv[3] ?? 6);
const inFlight = Number(process.argv[4] ?? 32);
const seconds = Number(process.argv[5] ?? 6);
const every = Number(process.argv[6] ?? 40);
// Holds that a failed call left behind lapse this soon, so the end check can see them all back.
const HOLD_TTL_MS = 2_000;

/** Kills a few of the connections the store's server holds, never its own. */
async function killer(): Promise<{ kill(): Promise<void>; close(): Promise<void> }> {
  const address = addressFromEnv(store, '');
  switch (store) {
    case 'postgres': {
      const admin = new pg.Client({ connectionString: address });
      await admin.connect();
      const sql = `SELECT pg_terminate_backend(pid) FROM (SELECT pid FROM pg_stat_activity WHERE pid <> pg_backend_pid()
        AND datname = current_database() AND backend_type = 'client backend' ORDER BY random() LIMIT 2) t`;
      return { kill: async () => void (await admin.query(sql)), close: () => admin.end() };
    }
    case 'mysql': {
      const admin = await mysql.createConnection(address);
      const sql = 'SELECT id FROM information_schema.processlist WHERE id <> CONNECTION_ID() AND db = DATABASE() ORDER BY RAND() LIMIT 2';
      return {
        kill: async () => {
          for (const { id } of (await admin.query(sql))[0] as { id: number }[])
            await admin.query(`KILL ${Number(id)}`).catch(() => undefined);
        },
        close: () => admin.end(),
      };
    }
    case 'redis':
    case 'redis-cluster': {
      const nodes = store === 'redis' ? [address] : address.split(',').map((node) => `redis://${node}`);
      const admins = nodes.map((url) => new Redis(url));
      return {
        kill: async () => {
          const admin = admins[Math.floor(Math.random() * admins.length)]!;
          const own = String(await admin.client('ID'));
          const ids = String(await admin.client('LIST'))
            .split('\n')
            .map((line) => /\bid=(\d+)/.exec(line)?.[1])
            .filter((id): id is string => id !== undefined && id !== own);
          const id = ids[Math.floor(Math.random() * ids.length)];
          if (id) await admin.client('KILL', 'ID', id).catch(() => undefined);
        },
        close: async () => {
          for (const admin of admins) admin.disconnect();
        },
      };
    }
    default:
      throw new Error(`faults: ${store} has no server to drop connections of; use postgres, redis, redis-cluster or mysql`);
  }
}

const address = addressFromEnv(store, '');
const connections = await Promise.all(Array.from({ length: servers }, () => connect(store, address)));
const meters = connections.map(
  ({ storage }) =>
    new CreditMeter({ storage, holdTtlMs: HOLD_TTL_MS, providers: { openai: instantProvider }, onEventError: () => undefined }),
);
const announced = new Map<string, number>();
for (const meter of meters) meter.on('reply.charged', ({ replyId }) => void announced.set(replyId, (announced.get(replyId) ?? 0) + 1));
const workspaceId = `faults-${Date.now()}`;
await createWorkspace(meters[0]!, workspaceId);
const faults = await killer();

const settled = new Set<string>();
const errors = new Map<string, number>();
let kills = 0;
const until = performance.now() + seconds * 1000;
const killing = (async () => {
  while (performance.now() < until) {
    await new Promise((resolve) => setTimeout(resolve, every));
    await faults.kill().catch(() => undefined);
    kills++;
  }
})();
await Promise.all(
  meters.flatMap((meter, m) =>
    Array.from({ length: inFlight }, async (_, w) => {
      for (let n = 0; performance.now() < until; n++) {
        const replyId = `f-${m}-${w}-${n}`;
        try {
          await meter.reserve({ workspaceId, agentId: 'agent', conversationId: `c-${m}`, model: MODEL, replyId });
          await meter.settle({ workspaceId, replyId }).catch(async (error: unknown) => {
            await meter.release({ workspaceId, replyId }).catch(() => undefined);
            throw error;
          });
          settled.add(replyId);
        } catch (error) {
          const code = (error as { code?: string }).code ?? String(error);
          errors.set(code, (errors.get(code) ?? 0) + 1);
        }
      }
    }),
  ),
);
await killing;
await faults.close();
// Every hold a failed call left behind lapses back into the balance.
await new Promise((resolve) => setTimeout(resolve, HOLD_TTL_MS + 100));

const storage = connections[0]!.storage;
const problems: string[] = [];
const rows = new Set<string>();
let sum = 0;
for (let afterSeq: number | undefined; ; ) {
  const page = await storage.ledger({ workspaceId, limit: 10_000, ...(afterSeq !== undefined && { afterSeq }) });
  for (const row of page) {
    sum += row.amount;
    if (row.kind !== 'reply') continue;
    if (rows.has(row.replyId!)) problems.push(`reply ${row.replyId} charged twice`);
    rows.add(row.replyId!);
    if (!settled.has(row.replyId!)) problems.push(`reply ${row.replyId} charged, but its settle failed`);
  }
  if (page.length < 10_000) break;
  afterSeq = page[page.length - 1]!.seq;
}
for (const replyId of settled) if (!rows.has(replyId)) problems.push(`reply ${replyId} settled without a ledger row`);
for (const [replyId, count] of announced) if (count !== 1 || !rows.has(replyId)) problems.push(`reply.charged ×${count} for ${replyId}`);
if (announced.size !== rows.size) problems.push(`${announced.size} reply.charged events for ${rows.size} reply rows`);
const summary = await meters[0]!.getWorkspace(workspaceId);
const [balance, held] = [summary.balance, summary.held].map((credits) => Math.round(Number(credits) * 1e6));
if (balance! + held! !== sum) problems.push(`balance + held = ${balance! + held!}, ledger sum ${sum} (micro-credits)`);
if (held !== 0) problems.push(`${held} micro-credits still held after every hold lapsed`);

const failed = [...errors].map(([code, count]) => `${code} ×${count}`).join(', ') || 'none';
console.log(
  `${store}, ${servers} servers × ${inFlight} in flight, ${kills} kills in ${seconds} s: ${settled.size.toLocaleString('en-US')} charges, failed calls: ${failed}`,
);
console.log(
  problems.length === 0
    ? 'Check: every reply row is one settle that succeeded and one reply.charged; balance + held = ledger sum; nothing held.'
    : `Check FAILED: ${problems.slice(0, 10).join('; ')}${problems.length > 10 ? ` (${problems.length} in all)` : ''}`,
);
await Promise.all(connections.map((connection) => connection.close()));
if (problems.length > 0) process.exitCode = 1;

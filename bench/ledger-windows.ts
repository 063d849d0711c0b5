/**
 * Ledger pages from an instant days into a workspace's history, through the meter (which starts
 * them at the day mark of `from`) and from the store alone (the same query without that start):
 *
 *   npx tsx bench/ledger-windows.ts [store] [replies]
 *
 * `store` is memory, sqlite (default, a temporary file), postgres, redis or mysql; the servers
 * come from `DATABASE_URL`, `REDIS_URL` or `MYSQL_URL`. `replies` (default 100,000) are charged
 * through the meter over 20 days of a fake clock, 256 in flight, so every row and day mark is
 * what production writes. PostgreSQL is analyzed after seeding, as autovacuum would be.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import { CreditMeter } from '../src/index.js';
import { concurrent, latency } from './lib/harness.js';
import { addressFromEnv, connect, type StoreName } from './lib/stores.js';
import { AGENTS, CONVERSATIONS, MODEL } from './lib/workload.js';

const store = (process.argv[2] ?? 'sqlite') as StoreName;
const replies = Number(process.argv[3] ?? 100_000);
const DAY = 86_400_000;
const START = Date.UTC(2026, 0, 1);
const SPAN = 20 * DAY;
const dir = mkdtempSync(join(tmpdir(), 'credits-windows-'));
const at = addressFromEnv(store, dir);
const connection = await connect(store, at);
let now = START;
const meter = new CreditMeter({ storage: connection.storage, clock: () => new Date(now) });
const workspaceId = `windows-${Date.now()}`;
await meter.createWorkspace({ workspaceId, plan: 'enterprise', allotment: 1_000_000_000 });
let next = 0;
const seeded = performance.now();
const run = await concurrent(
  async () => {
    const i = next++;
    now = START + Math.floor((i / replies) * SPAN);
    const hold = await meter.reserve({ workspaceId, agentId: AGENTS[i & 7]!, conversationId: CONVERSATIONS[i & 255]!, model: MODEL });
    await meter.settle({ workspaceId, replyId: hold.replyId });
  },
  256,
  { count: replies },
);
if (run.errors > 0) throw new Error(`seeding: ${String(run.firstError)}`);
console.log(`${store}: ${replies.toLocaleString('en-US')} replies over 20 days in ${((performance.now() - seeded) / 1000).toFixed(1)} s`);
if (store === 'postgres') {
  const client = new pg.Client({ connectionString: at });
  await client.connect();
  await client.query('ANALYZE');
  await client.end();
}
console.log('| from | store alone | through the meter | ratio |');
console.log('| --- | ---: | ---: | ---: |');
for (const [label, from] of [
  ['day 1, 01:00', START + 3_600_000],
  ['day 11, 01:00', START + SPAN / 2 + 3_600_000],
  ['day 20, 02:00', START + SPAN - DAY + 7_200_000],
  ['day 20, 23:00 (the last hour)', START + SPAN - 3_600_000],
] as const) {
  const alone = await latency(() => connection.storage.ledger({ workspaceId, from, limit: 101 }), 10);
  const metered = await latency(() => meter.ledger({ workspaceId, from: new Date(from), limit: 100 }), 10);
  console.log(`| ${label} | ${alone.toFixed(2)} ms | ${metered.toFixed(2)} ms | ${(alone / metered).toFixed(1)}× |`);
}
await connection.close();
rmSync(dir, { recursive: true, force: true });

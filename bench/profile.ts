/**
 * One store's reserve + settle loop, alone, for a CPU profile:
 *
 *   node --cpu-prof --cpu-prof-dir=<dir> --import tsx bench/profile.ts [store] [seconds] [in flight]
 *   npx tsx bench/lib/profile-summary.ts <dir>/<file>.cpuprofile
 *
 * `store` is memory (default), sqlite, postgres, redis or mysql; the durable stores use
 * `DATABASE_URL`, `REDIS_URL` or `MYSQL_URL`, SQLite a temporary file. `in flight` 1 (default)
 * runs sequentially; more runs that many workers on one hot workspace. Prints the rate it
 * reached; the profile shows where the time of one charge goes.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { concurrent, sequential } from './lib/harness.js';
import { addressFromEnv, connect, type StoreName } from './lib/stores.js';
import { createWorkspace, newMeter, reserveSettle, Tally } from './lib/workload.js';

const store = (process.argv[2] ?? 'memory') as StoreName;
const seconds = Number(process.argv[3] ?? 5);
const inFlight = Number(process.argv[4] ?? 1);
const dir = mkdtempSync(join(tmpdir(), 'credits-profile-'));
const at = addressFromEnv(store, dir);
const connection = await connect(store, at);
const meter = newMeter(connection.storage);
const workspaceId = `hot-${Date.now()}`;
await createWorkspace(meter, workspaceId);
const op = reserveSettle(meter, () => workspaceId, new Tally());
const run = (ms: number) => (inFlight === 1 ? sequential(op, { ms }) : concurrent(op, inFlight, { ms }));
await run(300);
const result = await run(seconds * 1000);
console.log(
  `${store} reserve+settle, ${inFlight} in flight: ${Math.round(result.perSec).toLocaleString('en-US')}/s over ${(result.ms / 1000).toFixed(1)} s (${result.errors} errors)`,
);
await connection.close();
rmSync(dir, { recursive: true, force: true });

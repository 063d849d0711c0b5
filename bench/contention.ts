/**
 * Many app servers on one hot workspace: `servers` meters, each with its own connection to the
 * store, `in flight` charges each, reserve + settle without pause for `seconds`. Prints the rate
 * and every error by code; a store without `lock` shows here whether lost races end in
 * `STORAGE_ERROR` ("the workspace kept changing"). The meters share this process's event loop,
 * which lengthens each one's window between load and commit: harsher than separate servers.
 *
 *   npx tsx bench/contention.ts [store] [servers] [in flight] [seconds]
 *
 * `store` is redis (default), redis-cluster, postgres, mysql or sqlite, at `REDIS_URL`,
 * `REDIS_CLUSTER_NODES`, `DATABASE_URL` or `MYSQL_URL` (SQLite: a temporary file). Ends with the
 * books check of every bench run.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fmtMs } from './lib/harness.js';
import { addressFromEnv, connect, type StoreName } from './lib/stores.js';
import { verifyWorkspace } from './lib/verify.js';
import { createWorkspace, MODEL_MICROS, newMeter, reserveSettle, Tally } from './lib/workload.js';

const store = (process.argv[2] ?? 'redis') as StoreName;
const servers = Number(process.argv[3] ?? 32);
const inFlight = Number(process.argv[4] ?? 16);
const seconds = Number(process.argv[5] ?? 10);
const dir = mkdtempSync(join(tmpdir(), 'credits-contention-'));
const address = addressFromEnv(store, dir);
const connections = await Promise.all(Array.from({ length: servers }, () => connect(store, address)));
const meters = connections.map((connection) => newMeter(connection.storage));
const workspaceId = `contention-${Date.now()}`;
await createWorkspace(meters[0]!, workspaceId);

const tally = new Tally();
const errors = new Map<string, number>();
// Milliseconds each charge (reserve + settle) took, the lost races and waits included.
const took: number[] = [];
const started = performance.now();
const until = started + seconds * 1000;
await Promise.all(
  meters.flatMap((meter, m) =>
    Array.from({ length: inFlight }, async (_, w) => {
      const charge = reserveSettle(meter, () => workspaceId, tally);
      while (performance.now() < until) {
        const at = performance.now();
        try {
          await charge(m * inFlight + w);
          took.push(performance.now() - at);
        } catch (error) {
          const code = (error as { code?: string }).code ?? String(error);
          errors.set(code, (errors.get(code) ?? 0) + 1);
        }
      }
    }),
  ),
);
const charged = tally.get(workspaceId);
const perSec = (charged / (performance.now() - started)) * 1000;
const failed = [...errors].map(([code, count]) => `${code} ×${count}`).join(', ') || 'none';
took.sort((a, b) => a - b);
const quantile = (q: number) => fmtMs(took[Math.min(took.length - 1, Math.floor(q * took.length))] ?? 0);
console.log(
  `${store}, ${servers} servers × ${inFlight} in flight, one hot workspace: ${Math.round(perSec).toLocaleString('en-US')} charges/s, ` +
    `a charge p50 ${quantile(0.5)} ms, p99 ${quantile(0.99)} ms, max ${quantile(1)} ms (${took.filter((ms) => ms > 1000).length} over 1 s); errors: ${failed}`,
);
const check = await verifyWorkspace(meters[0]!, connections[0]!.storage, workspaceId, charged, charged * MODEL_MICROS);
console.log(
  check.ok
    ? 'Check: balance + held = ledger sum, no negative balance, exactly the charges counted.'
    : `Check FAILED: ${check.problems.join('; ')}`,
);
await Promise.all(connections.map((connection) => connection.close()));
if (!check.ok) process.exitCode = 1;
rmSync(dir, { recursive: true, force: true });

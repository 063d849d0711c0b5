/**
 * Charge-path benchmark of @bookbag/credits against rate-limiter-flexible on the same store.
 *
 *   npm run bench                                   # every store, every part
 *   npm run bench -- --store sqlite                 # one store
 *   npm run bench -- --quick                        # a smoke run of every part (about 2 minutes)
 *
 * Options:
 *   --store memory|sqlite|postgres|redis|redis-cluster|mysql|all
 *                                (default all; may be given several times or comma-separated)
 *   --skip throughput,processes,realistic,history    parts to leave out
 *   --rounds <n>                 rounds per throughput scenario, the median is reported (default 3)
 *   --seconds <s>                measured seconds per throughput scenario and round (default 1 memory, 2 others)
 *   --concurrency <n>            in-flight charges on the durable stores, per process (default 512)
 *   --processes <n>              app-server processes in the multi-process and realistic runs (default 4)
 *   --realistic-seconds <s>      length of the realistic run per store (default 25)
 *   --realistic-inflight <n,…>   replies in flight per process in the realistic run, one run each (default 1000,250)
 *   --history-rows <n>           ledger rows of the heavy workspace (default 1000000)
 *   --history-holds <n>          open holds on the heavy workspace (default 10000)
 *   --json <file>                also write the results as JSON
 *   --quick                      short runs, small history, to check the script works
 *
 * Servers (PostgreSQL, Redis, a Redis Cluster of three masters, MariaDB) are started on
 * loopback by the test setup's starters in test/servers/, in temporary directories removed
 * afterwards, unless DATABASE_URL, REDIS_URL, REDIS_CLUSTER_NODES or MYSQL_URL names one.
 * Every run ends with a correctness check; the exit code is 1 if any check fails.
 */
import { writeFileSync } from 'node:fs';
import { loadavg } from 'node:os';
import { parseArgs } from 'node:util';
import { type Fleet, startFleet } from './lib/fleet.js';
import { fmtInt, fmtMs, fmtRatio, median, table } from './lib/harness.js';
import { type HistoryResult, measureHistory } from './lib/history.js';
import { machine } from './lib/machine.js';
import { type MultiProcessResult, measureMultiProcess } from './lib/multi-process.js';
import { measureRealistic, type RealisticResult } from './lib/realistic.js';
import { openStore, type Server, STORE_NAMES, type StoreContext, type StoreName, StoreUnavailable, startServer } from './lib/stores.js';
import { measureThroughput, type ThroughputResult } from './lib/throughput.js';

const PARTS = ['throughput', 'processes', 'realistic', 'history'] as const;
type Part = (typeof PARTS)[number];

const { values } = parseArgs({
  options: {
    store: { type: 'string', multiple: true },
    skip: { type: 'string', multiple: true },
    rounds: { type: 'string' },
    seconds: { type: 'string' },
    concurrency: { type: 'string' },
    processes: { type: 'string' },
    'realistic-seconds': { type: 'string' },
    'realistic-inflight': { type: 'string' },
    'history-rows': { type: 'string' },
    'history-holds': { type: 'string' },
    json: { type: 'string' },
    quick: { type: 'boolean', default: false },
  },
  strict: true,
});

function storeList(raw: string[] | undefined, fallback: readonly StoreName[]): StoreName[] {
  if (!raw || raw.length === 0) return [...fallback];
  const names = raw
    .flatMap((v) => v.split(','))
    .map((v) => v.trim().toLowerCase())
    .filter(Boolean);
  if (names.includes('all')) return [...STORE_NAMES];
  for (const name of names) {
    if (!(STORE_NAMES as readonly string[]).includes(name)) {
      console.error(`unknown store "${name}": use ${STORE_NAMES.join(', ')} or all`);
      process.exit(2);
    }
  }
  return STORE_NAMES.filter((s) => names.includes(s));
}

function positive(raw: string | undefined, fallback: number, name: string): number {
  if (raw === undefined) return fallback;
  const value = Number(raw);
  if (!(value > 0) || !Number.isFinite(value)) {
    console.error(`--${name} must be a positive number`);
    process.exit(2);
  }
  return value;
}

const quick = values.quick;
const stores = storeList(values.store, STORE_NAMES);
const skipped = new Set((values.skip ?? []).flatMap((v) => v.split(',')).map((v) => v.trim()));
for (const part of skipped)
  if (!(PARTS as readonly string[]).includes(part)) {
    console.error(`unknown part "${part}": use ${PARTS.join(', ')}`);
    process.exit(2);
  }
const runs = (part: Part) => !skipped.has(part);
const rounds = Math.round(positive(values.rounds, quick ? 1 : 3, 'rounds'));
const seconds = values.seconds === undefined ? undefined : positive(values.seconds, 1, 'seconds');
const concurrency = Math.round(positive(values.concurrency, 512, 'concurrency'));
const processes = Math.round(positive(values.processes, 4, 'processes'));
const realisticSeconds = positive(values['realistic-seconds'], quick ? 3 : 25, 'realistic-seconds');
// Two loads by default: one past what the databases here serve (the queue shows), one they sustain.
const realisticInflights = (values['realistic-inflight'] ?? (quick ? '250' : '1000,250'))
  .split(',')
  .map((n) => Math.round(positive(n, 1000, 'realistic-inflight')));
const historyRows = Math.round(positive(values['history-rows'], quick ? 20_000 : 1_000_000, 'history-rows'));
const historyHolds = Math.round(positive(values['history-holds'], quick ? 1_000 : 10_000, 'history-holds'));

const startedAt = performance.now();
const log = (line: string) => console.error(`[${((performance.now() - startedAt) / 1000).toFixed(0).padStart(4)} s] ${line}`);
const box = machine();
log(`machine: ${box.cpus} CPUs (${box.cpuModel}), ${box.memoryGiB} GiB, Node ${box.node}, ${box.os}; load ${box.loadAverage.join(' ')}`);

const throughput: ThroughputResult[] = [];
const multi: MultiProcessResult[] = [];
const realistic: RealisticResult[] = [];
const history: HistoryResult[] = [];
const unavailable: { store: StoreName; why: string }[] = [];
const failures: string[] = [];
const loads: { store: StoreName; load: number[] }[] = [];
// Every server starts at once, up front (an idle server costs next to nothing); each store is then measured alone.
log(`starting servers for ${stores.join(', ')}`);
const servers = new Map<StoreName, Promise<Server>>();
for (const name of stores) {
  const server = startServer(name);
  server.catch(() => undefined); // awaited (and reported) in its turn
  servers.set(name, server);
}
const opened = new Set<StoreName>();
try {
  for (const name of stores) {
    opened.add(name);
    log(`${name}: starting`);
    let ctx: StoreContext;
    try {
      ctx = await openStore(name, await servers.get(name)!);
    } catch (error) {
      if (!(error instanceof StoreUnavailable)) throw error;
      log(`${name}: skipped: ${error.message}`);
      unavailable.push({ store: name, why: error.message });
      continue;
    }
    loads.push({ store: name, load: loadavg().map((l) => Math.round(l * 100) / 100) });
    // One failing part is reported and the run goes on with the next.
    const part = async (label: Part, go: () => Promise<void>) => {
      if (!runs(label)) return;
      try {
        await go();
      } catch (error) {
        const message = `${name} ${label}: ${error instanceof Error ? error.message : String(error)}`;
        log(`  FAILED ${message}`);
        failures.push(message);
      }
    };
    try {
      await part('throughput', async () => {
        const measureMs = (seconds ?? (ctx.durable ? 2 : 1)) * 1000 * (quick ? 0.25 : 1);
        throughput.push(
          await measureThroughput(ctx, {
            rounds,
            measureMs,
            warmupMs: quick ? 100 : ctx.durable ? 500 : 300,
            concurrency,
            batch: 256,
            workspaces: 16,
            log,
          }),
        );
      });
      let fleet: Fleet | undefined;
      if (ctx.durable && (runs('processes') || runs('realistic'))) fleet = startFleet(processes);
      try {
        await part('processes', async () => {
          if (!fleet) return;
          multi.push(await measureMultiProcess(ctx, { fleet, concurrency, ms: quick ? 1000 : 3000, rounds: quick ? 1 : 2, log }));
        });
        await part('realistic', async () => {
          if (!fleet) return;
          for (const inflight of realisticInflights) {
            realistic.push(
              await measureRealistic(ctx, {
                workspaces: quick ? 2_000 : 10_000,
                zipf: 1,
                fleet,
                concurrency: inflight,
                ms: realisticSeconds * 1000,
                minLatencyMs: 200,
                maxLatencyMs: 2000,
                allotment: 1_000,
                log,
              }),
            );
          }
        });
      } finally {
        await fleet?.close();
      }
      await part('history', async () => {
        history.push(
          await measureHistory(ctx, {
            rows: historyRows,
            holds: historyHolds,
            concurrency,
            ms: quick ? 300 : ctx.durable ? 2000 : 1000,
            runs: quick ? 1 : 3,
            warmUp: !quick,
            log,
          }),
        );
      });
    } finally {
      await ctx.close();
    }
  }
} finally {
  // Servers of stores never reached (a failure above) are stopped too.
  await Promise.allSettled(stores.filter((name) => !opened.has(name)).map(async (name) => (await servers.get(name)!).stop()));
}
const totalSeconds = (performance.now() - startedAt) / 1000;
const loadAfter = loadavg().map((l) => Math.round(l * 100) / 100);

// ─── report ─────────────────────────────────────────────────────────────────

const out: string[] = [];
out.push(
  `Machine: ${box.cpus} CPUs (${box.cpuModel}), ${box.memoryGiB} GiB RAM, Node ${box.node}, ${box.os}.`,
  `Load average (1/5/15 min) before: ${box.loadAverage.join(' / ')}; after: ${loadAfter.join(' / ')}; ` +
    `at each store's start: ${loads.map((l) => `${l.store} ${l.load[0]}`).join(', ')}. Total time ${totalSeconds.toFixed(0)} s.`,
  '',
);
for (const u of unavailable) out.push(`**${u.store}: not measured**: ${u.why}.`, '');
for (const result of throughput) {
  const byId = new Map(result.scenarios.map((s) => [s.id, s]));
  const raw = byId.get('raw-map')!.perSec;
  out.push(`### ${result.store}`, '', `Store: ${result.setup}. Peer: ${result.peerSetup}.`, '');
  out.push(
    table(
      ['scenario', 'ops/s (median)', 'rounds', 'ours / peer', 'vs raw Map', 'CPU cores: bench / server'],
      result.scenarios.map((s) => {
        const peer = s.peer === undefined ? undefined : byId.get(s.peer);
        return [
          `${s.kind === 'ours' ? '**ours**' : s.kind === 'peer' ? 'peer' : 'raw'}: ${s.label}`,
          fmtInt(s.perSec) + (s.errors > 0 ? ` (${s.errors} errors)` : ''),
          s.rounds.map(fmtInt).join(' / '),
          peer ? fmtRatio(s.perSec / peer.perSec) : '',
          s.id === 'raw-map' ? '1×' : fmtRatio(s.perSec / raw),
          s.clientCores === undefined
            ? ''
            : `${s.clientCores.toFixed(2)} / ${Number.isNaN(s.serverCores) ? '–' : s.serverCores!.toFixed(2)}`,
        ];
      }),
    ),
    '',
  );
  const failed = result.checks.filter((c) => !c.ok);
  const peerFailed = result.peerChecks.filter((c) => !c.ok);
  const charges = result.checks.reduce((n, c) => n + c.charges, 0);
  out.push(
    `Check: ${result.checks.length} workspaces, ${fmtInt(charges)} charges; ` +
      (failed.length === 0
        ? 'every balance + held = ledger sum, no negative balance, exactly the expected charges.'
        : `FAILED: ${failed.map((c) => `${c.workspaceId}: ${c.problems.join('; ')}`).join(' | ')}`) +
      ` Peer: ${result.peerChecks.length} keys, ` +
      (peerFailed.length === 0
        ? 'consumed points = successful consume() calls.'
        : `FAILED on ${peerFailed.map((c) => `${c.key} (${c.consumed} vs ${c.expected})`).join(', ')}`),
    '',
  );
}
if (multi.length > 0) {
  out.push(`### ${processes} app-server processes, one hot workspace`, '');
  out.push(
    table(
      ['store', 'in flight', 'peer consume()/s', '**ours** reserve+settle/s', 'ours / peer', 'rounds (ours)', 'check'],
      multi.map((m) => [
        m.store,
        `${m.processes} × ${m.concurrency}`,
        fmtInt(median(m.peer)),
        fmtInt(median(m.ours)) + (m.errors > 0 ? ` (${m.errors} errors: ${m.firstError})` : ''),
        fmtRatio(median(m.ours) / median(m.peer)),
        m.ours.map(fmtInt).join(' / '),
        m.checks.every((c) => c.ok) && m.peerChecks.every((c) => c.ok) ? 'ok' : `FAILED: ${m.checks.flatMap((c) => c.problems).join('; ')}`,
      ]),
    ),
    '',
  );
}
if (realistic.length > 0) {
  out.push('### Realistic run', '');
  out.push(
    table(
      [
        'store',
        'workspaces',
        'processes × in flight',
        'seconds',
        'replies/s',
        'meter adds p50',
        'p99',
        'max',
        'refused',
        'dry workspaces',
        'CPU cores: apps / server',
        'errors',
        'check',
      ],
      realistic.map((r) => [
        r.store,
        fmtInt(r.workspaces),
        `${r.processes} × ${r.concurrency}`,
        String(r.seconds),
        fmtInt(r.repliesPerSec),
        `${fmtMs(r.addedP50Ms)} ms`,
        `${fmtMs(r.addedP99Ms)} ms`,
        `${fmtMs(r.addedMaxMs)} ms`,
        fmtInt(r.refused),
        fmtInt(r.dryWorkspaces),
        `${r.appCores.toFixed(2)} / ${Number.isNaN(r.serverCores) ? '–' : r.serverCores.toFixed(2)}`,
        r.errors > 0 ? `${r.errors}: ${r.firstError}` : '0',
        r.failedChecks.length === 0
          ? `ok (${fmtInt(r.checkedWorkspaces)} workspaces)`
          : `FAILED: ${r.failedChecks
              .slice(0, 3)
              .map((c) => `${c.workspaceId}: ${c.problems.join('; ')}`)
              .join(' | ')}`,
      ]),
    ),
    '',
  );
}
if (history.length > 0) {
  out.push('### Cost against history and holds in flight', '');
  out.push(
    table(
      [
        'store',
        'workspace',
        'ledger rows (when queried)',
        'open holds',
        'reserve+settle/s',
        'usage by agent',
        'usage by model per day',
        'ledger first page',
        'ledger recent page',
        'ledger page for one agent',
      ],
      history.flatMap((h) =>
        h.rows.map((r) => [
          `${h.store} (${h.mode})`,
          r.workspace,
          fmtInt(r.ledgerRows),
          fmtInt(r.openHolds),
          fmtInt(r.chargePerSec),
          `${fmtMs(r.usageByAgentMs)} ms`,
          `${fmtMs(r.usageByModelPerDayMs)} ms`,
          `${fmtMs(r.ledgerFirstPageMs)} ms`,
          `${fmtMs(r.ledgerRecentPageMs)} ms`,
          `${fmtMs(r.ledgerAgentPageMs)} ms`,
        ]),
      ),
    ),
    '',
  );
  for (const h of history)
    out.push(
      `Check ${h.store}: seeded in ${h.seedSeconds.toFixed(1)} s, holds opened in ${h.holdSeconds.toFixed(1)} s; ` +
        (h.checks.every((c) => c.ok)
          ? 'after releasing the holds, balance + held = ledger sum and the exact charges on both workspaces.'
          : `FAILED: ${h.checks.flatMap((c) => c.problems).join('; ')}`),
    );
  out.push('');
}
for (const f of failures) out.push(`**FAILED**: ${f}`, '');
console.log(out.join('\n'));

if (values.json) {
  writeFileSync(
    values.json,
    JSON.stringify({ machine: box, loadAfter, loads, totalSeconds, throughput, multi, realistic, history, unavailable, failures }, null, 2),
  );
}
const ok =
  failures.length === 0 &&
  throughput.every((t) => t.checks.every((c) => c.ok) && t.peerChecks.every((c) => c.ok)) &&
  multi.every((m) => m.checks.every((c) => c.ok) && m.peerChecks.every((c) => c.ok)) &&
  realistic.every((r) => r.failedChecks.length === 0 && r.errors === 0) &&
  history.every((h) => h.checks.every((c) => c.ok));
if (!ok) {
  console.error('A check FAILED.');
  process.exitCode = 1;
}

/**
 * Charge-path benchmark of @bookbag/credits against rate-limiter-flexible on the same store.
 *
 *   npm run bench                                   # every store, throughput only
 *   npm run bench -- --store sqlite                 # one store
 *   npm run bench -- --store all --ledger-growth    # plus ledger growth (10⁴ → 10⁶ rows)
 *
 * Options:
 *   --store memory|sqlite|postgres|redis|all   (default all; may be given several times or comma-separated)
 *   --ledger-growth              also measure cost against ledger size
 *   --growth-store <list>        stores for the growth part, each optionally with its largest size,
 *                                e.g. memory,sqlite,postgres:100000 (default memory,sqlite,postgres among --store)
 *   --growth-max <n>             largest ledger size where --growth-store gives none (default 1000000)
 *   --rounds <n>                 rounds per scenario, the median is reported (default 3)
 *   --seconds <s>                measured seconds per scenario and round (default 1 for memory, 2 for the others)
 *   --concurrency <n>            in-flight charges on the durable stores (default 512)
 *   --json <file>                also write the results as JSON
 *   --quick                      short runs to check the script works
 *
 * PostgreSQL and Redis are started on loopback in temporary directories and removed afterwards.
 * Every run ends with a correctness check; the exit code is 1 if any check fails.
 */
import { writeFileSync } from 'node:fs';
import { loadavg } from 'node:os';
import { parseArgs } from 'node:util';
import { fmtInt, fmtMs, fmtRatio, table } from './lib/harness.js';
import { measureGrowth, type GrowthResult } from './lib/growth.js';
import { machine } from './lib/machine.js';
import { openStore, STORE_NAMES, type StoreName } from './lib/stores.js';
import { measureThroughput, type ThroughputResult } from './lib/throughput.js';

const { values } = parseArgs({
  options: {
    store: { type: 'string', multiple: true },
    'ledger-growth': { type: 'boolean', default: false },
    'growth-store': { type: 'string', multiple: true },
    'growth-max': { type: 'string' },
    rounds: { type: 'string' },
    seconds: { type: 'string' },
    concurrency: { type: 'string' },
    json: { type: 'string' },
    quick: { type: 'boolean', default: false },
  },
  strict: true,
});

function storeList(raw: string[] | undefined, fallback: readonly StoreName[]): StoreName[] {
  if (!raw || raw.length === 0) return [...fallback];
  const names = raw.flatMap((v) => v.split(',')).map((v) => v.trim().toLowerCase()).filter(Boolean);
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
// --growth-store takes names, each optionally with its own largest size: "memory,sqlite,postgres:100000".
const growthMaxDefault = positive(values['growth-max'], quick ? 100_000 : 1_000_000, 'growth-max');
const growthLimits = new Map<StoreName, number>();
for (const item of (values['growth-store'] ?? ['memory,sqlite,postgres']).flatMap((v) => v.split(','))) {
  const [name = '', max] = item.trim().toLowerCase().split(':');
  for (const store of storeList([name], [])) growthLimits.set(store, max === undefined ? growthMaxDefault : positive(max, 1, 'growth-store'));
}
const growthStores = values['ledger-growth'] ? stores.filter((s) => growthLimits.has(s)) : [];
const sizesFor = (store: StoreName) => [10_000, 100_000, 1_000_000].filter((s) => s <= (growthLimits.get(store) ?? growthMaxDefault));
const rounds = Math.round(positive(values.rounds, quick ? 1 : 3, 'rounds'));
const seconds = values.seconds === undefined ? undefined : positive(values.seconds, 1, 'seconds');
const concurrency = Math.round(positive(values.concurrency, 512, 'concurrency'));

const log = (line: string) => console.error(line);
const box = machine();
log(`machine: ${box.cpus} CPUs (${box.cpuModel}), ${box.memoryGiB} GiB, Node ${box.node}, ${box.os}; load ${box.loadAverage.join(' ')}`);
const startedAt = performance.now();

const throughput: ThroughputResult[] = [];
const growth: GrowthResult[] = [];
for (const name of stores) {
  log(`${name}: starting`);
  const ctx = await openStore(name);
  try {
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
    if (growthStores.includes(name)) growth.push(await measureGrowth(ctx, { sizes: sizesFor(name), concurrency, log }));
  } finally {
    await ctx.close();
  }
}
const totalSeconds = (performance.now() - startedAt) / 1000;
const loadAfter = loadavg().map((l) => Math.round(l * 100) / 100);

// ─── report ─────────────────────────────────────────────────────────────────

const out: string[] = [];
out.push(
  `Machine: ${box.cpus} CPUs (${box.cpuModel}), ${box.memoryGiB} GiB RAM, Node ${box.node}, ${box.os}.`,
  `Load average (1/5/15 min) before: ${box.loadAverage.join(' / ')}; after: ${loadAfter.join(' / ')}. Total time ${totalSeconds.toFixed(0)} s.`,
  '',
);
for (const result of throughput) {
  const byId = new Map(result.scenarios.map((s) => [s.id, s]));
  const raw = byId.get('raw-map')!.perSec;
  out.push(`### ${result.store}`, '', `Store: ${result.setup}. Peer: ${result.peerSetup}.`, '');
  out.push(
    table(
      ['scenario', 'ops/s (median)', 'rounds', 'ours / peer', 'vs raw Map'],
      result.scenarios.map((s) => {
        const peer = s.peer === undefined ? undefined : byId.get(s.peer);
        return [
          `${s.kind === 'ours' ? '**ours**' : s.kind === 'peer' ? 'peer' : 'raw'}: ${s.label}`,
          fmtInt(s.perSec) + (s.errors > 0 ? ` (${s.errors} errors)` : ''),
          s.rounds.map(fmtInt).join(' / '),
          peer ? fmtRatio(s.perSec / peer.perSec) : '',
          s.id === 'raw-map' ? '1×' : fmtRatio(s.perSec / raw),
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
      (peerFailed.length === 0 ? 'consumed points = successful consume() calls.' : `FAILED on ${peerFailed.map((c) => `${c.key} (${c.consumed} vs ${c.expected})`).join(', ')}`),
    '',
  );
}
if (growth.length > 0) {
  out.push('### Ledger growth', '');
  out.push(
    table(
      ['store', 'ledger rows', 'charges/s', 'usage by agent', 'usage by conversation', 'usage by model per day', 'ledger first page', 'ledger recent page', 'ledger page for one agent', 'seeding'],
      growth.flatMap((g) =>
        g.rows.map((r) => [
          `${g.store} (${g.mode})`,
          fmtInt(r.size),
          fmtInt(r.chargePerSec),
          `${fmtMs(r.usageByAgentMs)} ms`,
          `${fmtMs(r.usageByConversationMs)} ms`,
          `${fmtMs(r.usageByModelPerDayMs)} ms`,
          `${fmtMs(r.ledgerFirstPageMs)} ms`,
          `${fmtMs(r.ledgerRecentPageMs)} ms`,
          `${fmtMs(r.ledgerAgentPageMs)} ms`,
          `${r.seedSeconds.toFixed(1)} s`,
        ]),
      ),
    ),
    '',
  );
  for (const g of growth) {
    out.push(
      `Check ${g.store}: ${fmtInt(g.check.ledgerRows)} ledger rows, ${fmtInt(g.check.charges)} charges; ` +
        (g.check.ok ? 'balance + held = ledger sum, exact charge count.' : `FAILED: ${g.check.problems.join('; ')}`),
    );
  }
  out.push('');
}
console.log(out.join('\n'));

if (values.json) {
  writeFileSync(values.json, JSON.stringify({ machine: box, loadAfter, totalSeconds, throughput, growth }, null, 2));
}
const ok = throughput.every((t) => t.checks.every((c) => c.ok) && t.peerChecks.every((c) => c.ok)) && growth.every((g) => g.check.ok);
if (!ok) {
  console.error('A correctness check FAILED.');
  process.exitCode = 1;
}

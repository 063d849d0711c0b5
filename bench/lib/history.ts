/**
 * Cost must not grow with replies in flight or with history. Two workspaces on the same
 * store: an empty one, and a heavy one with `rows` ledger rows (seeded through the seam's
 * `commit` in chunks, as free `reply` rows so balances are unchanged) and `holds` open holds
 * (taken through `meter.reserve`). On each: reserve + settle throughput, and the latency of
 * `usage()` and `ledger()`. The holds are released at the end and both workspaces checked.
 */
import pg from 'pg';
import type { LedgerRow } from '../../src/core/state.js';
import { concurrent, latency, median, pause, type Run, sequential } from './harness.js';
import type { StoreContext } from './stores.js';
import { type Check, verifyWorkspace } from './verify.js';
import { AGENTS, CONVERSATIONS, createWorkspace, MODEL, MODEL_MICROS, newMeter, reserveSettle, Tally } from './workload.js';

export interface HistoryOptions {
  rows: number;
  holds: number;
  /** In flight for the durable stores (the memory store runs sequentially). */
  concurrency: number;
  /** Measured milliseconds per charge run. */
  ms: number;
  /** Charge runs per workspace, the median is reported. */
  runs: number;
  /** When true, each workspace is charged once unmeasured first. */
  warmUp: boolean;
  log: (line: string) => void;
}

export interface HistoryRow {
  workspace: 'empty' | 'heavy';
  ledgerRows: number;
  openHolds: number;
  chargePerSec: number;
  usageByAgentMs: number;
  usageByModelPerDayMs: number;
  ledgerFirstPageMs: number;
  ledgerRecentPageMs: number;
  ledgerAgentPageMs: number;
}

export interface HistoryResult {
  store: string;
  mode: string;
  seedSeconds: number;
  holdSeconds: number;
  rows: HistoryRow[];
  checks: Check[];
}

/** Appends `count` free reply rows to the workspace through `commit`, `chunk` rows per commit. */
async function analyze(address: string): Promise<void> {
  const client = new pg.Client({ connectionString: address });
  await client.connect();
  try {
    await client.query('ANALYZE');
  } finally {
    await client.end();
  }
}

async function seedLedger(ctx: StoreContext, workspaceId: string, count: number, chunk: number): Promise<void> {
  const storage = ctx.storage();
  const loaded = await storage.load({ workspaceId, keys: [], now: Date.now() });
  if (!loaded.state) throw new Error(`${workspaceId} has no state`);
  let version = loaded.version;
  let state = loaded.state;
  for (let done = 0; done < count; ) {
    const n = Math.min(chunk, count - done);
    const at = Date.now();
    const ledger: LedgerRow[] = [];
    for (let k = 0; k < n; k++) {
      const i = done + k;
      ledger.push({
        workspaceId,
        seq: state.ledgerSeq + k + 1,
        kind: 'reply',
        amount: 0,
        at,
        replyId: `seed-${i}`,
        agentId: AGENTS[i & 7]!,
        conversationId: CONVERSATIONS[i & 255]!,
        model: MODEL,
        route: 'unmetered',
        priceVersion: 'seed',
        grantId: null,
        plan: null,
        inputTokens: null,
        outputTokens: null,
        reason: null,
      });
    }
    state = { ...state, ledgerSeq: state.ledgerSeq + n };
    const [result] = await storage.commit([{ workspaceId, expectedVersion: version, state, ledger, records: [] }]);
    if (result !== 'committed') throw new Error(`seeding ${workspaceId}: commit answered ${result}`);
    version++;
    done += n;
  }
}

export async function measureHistory(ctx: StoreContext, options: HistoryOptions): Promise<HistoryResult> {
  const storage = ctx.storage(); // memory: one fresh instance for both workspaces
  ctx = { ...ctx, storage: () => storage };
  const meter = newMeter(storage);
  const stamp = Date.now();
  const empty = `hist-empty-${stamp}`;
  const heavy = `hist-heavy-${stamp}`;
  const since = new Date(stamp - 60_000);
  await createWorkspace(meter, empty);
  await createWorkspace(meter, heavy);

  const seedStarted = performance.now();
  await seedLedger(ctx, heavy, options.rows, ctx.durable ? 5_000 : 100_000);
  const seedSeconds = (performance.now() - seedStarted) / 1000;

  const holdStarted = performance.now();
  const holds: string[] = [];
  const opened = await concurrent(
    async (i) => {
      const hold = await meter.reserve({
        workspaceId: heavy,
        agentId: AGENTS[i & 7]!,
        conversationId: CONVERSATIONS[i & 255]!,
        model: MODEL,
      });
      holds.push(hold.replyId);
    },
    512,
    { count: options.holds },
  );
  if (opened.errors > 0) throw new Error(`opening holds on ${ctx.name}: ${String(opened.firstError)}`);
  const holdSeconds = (performance.now() - holdStarted) / 1000;
  // A million rows and ten thousand holds arrive here in seconds, not over months: give PostgreSQL
  // the statistics its autovacuum would long have gathered, or it plans a time-window page on
  // default guesses. (Statistics taken before the holds, of an empty records table, would plan
  // every load as if it had no records to look up: much slower than either.)
  if (ctx.name === 'postgres') await analyze(ctx.address);
  options.log(
    `  ${ctx.name} history: ${options.rows.toLocaleString('en-US')} rows seeded in ${seedSeconds.toFixed(1)} s, ${holds.length} holds opened in ${holdSeconds.toFixed(1)} s`,
  );

  // Queries first, on the workspaces as set up: the empty one has only its grant row.
  const repeats = options.warmUp ? 5 : 1;
  const pages = options.warmUp ? 20 : 3;
  const queries = async (workspaceId: string) => {
    const window = { from: since, to: new Date(Date.now() + 3_600_000) };
    return {
      usageByAgentMs: await latency(() => meter.usage({ workspaceId, ...window, groupBy: 'agent' }), repeats),
      usageByModelPerDayMs: await latency(() => meter.usage({ workspaceId, ...window, groupBy: 'model', interval: 'day' }), repeats),
      ledgerFirstPageMs: await latency(() => meter.ledger({ workspaceId, limit: 100 }), pages),
      ledgerRecentPageMs: await latency(() => meter.ledger({ workspaceId, from: new Date(Date.now() - 1), limit: 100 }), pages),
      ledgerAgentPageMs: await latency(() => meter.ledger({ workspaceId, agentId: AGENTS[3]!, limit: 100 }), pages),
    };
  };
  const timed = { empty: await queries(empty), heavy: await queries(heavy) };

  // Then charges, alternating workspaces; with warm-up, the second pass of each is reported.
  const tally = new Tally();
  const charged = new Map<'empty' | 'heavy', number>();
  const passes = [
    ['empty', empty],
    ['heavy', heavy],
  ] as const;
  for (const [kind, workspaceId] of options.warmUp ? [...passes, ...passes] : passes) {
    const op = reserveSettle(meter, () => workspaceId, tally);
    const runs: Run[] = [];
    for (let r = 0; r < options.runs; r++) {
      const run = ctx.durable ? await concurrent(op, options.concurrency, { ms: options.ms }) : await sequential(op, { ms: options.ms });
      if (run.errors > 0) throw new Error(`charging ${ctx.name} ${kind}: ${String(run.firstError)}`);
      runs.push(run);
      await pause(ctx.durable ? 200 : 50);
    }
    charged.set(kind, median(runs.map((r) => r.perSec)));
  }
  const rows: HistoryRow[] = (['empty', 'heavy'] as const).map((kind) => ({
    workspace: kind,
    ledgerRows: kind === 'heavy' ? options.rows + 1 : 1,
    openHolds: kind === 'heavy' ? holds.length : 0,
    chargePerSec: charged.get(kind)!,
    ...timed[kind],
  }));
  for (const row of rows)
    options.log(
      `  ${ctx.name} history ${row.workspace}: ${row.ledgerRows.toLocaleString('en-US')} rows, ${row.openHolds} holds: ` +
        `${Math.round(row.chargePerSec).toLocaleString('en-US')} charges/s, usage(agent) ${row.usageByAgentMs.toFixed(2)} ms, ` +
        `usage(model, day) ${row.usageByModelPerDayMs.toFixed(2)} ms, ledger first ${row.ledgerFirstPageMs.toFixed(2)} ms, ` +
        `recent ${row.ledgerRecentPageMs.toFixed(2)} ms, agent ${row.ledgerAgentPageMs.toFixed(2)} ms`,
    );

  const released = await concurrent((i) => meter.release({ workspaceId: heavy, replyId: holds[i]! }), 512, { count: holds.length });
  if (released.errors > 0) throw new Error(`releasing holds on ${ctx.name}: ${String(released.firstError)}`);
  const checks = [
    await verifyWorkspace(meter, storage, empty, tally.get(empty), tally.get(empty) * MODEL_MICROS),
    // The seeded rows are free reply rows: counted as replies, charging nothing.
    await verifyWorkspace(meter, storage, heavy, options.rows + tally.get(heavy), tally.get(heavy) * MODEL_MICROS),
  ];
  return { store: ctx.name, mode: ctx.durable ? `${options.concurrency} in flight` : 'sequential', seedSeconds, holdSeconds, rows, checks };
}

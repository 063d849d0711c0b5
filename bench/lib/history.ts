/**
 * Cost must not grow with replies in flight or with history. Two workspaces on the same
 * store: an empty one, and a heavy one with `rows` ledger rows (seeded through the seam's
 * `commit` in chunks, as free `reply` rows so balances are unchanged) and `holds` open holds
 * (taken through `meter.reserve`). On each: reserve + settle throughput, and the latency of
 * `usage()` and `ledger()`. The holds are released at the end and both workspaces checked.
 */
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
  /** Measured milliseconds per charge run (three runs, the median is reported). */
  ms: number;
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
  options.log(
    `  ${ctx.name} history: ${options.rows.toLocaleString('en-US')} rows seeded in ${seedSeconds.toFixed(1)} s, ${holds.length} holds opened in ${holdSeconds.toFixed(1)} s`,
  );

  const tally = new Tally();
  const byKind = new Map<'empty' | 'heavy', HistoryRow>();
  for (const [kind, workspaceId] of [
    ['empty', empty],
    ['heavy', heavy],
    ['empty', empty],
    ['heavy', heavy],
  ] as const) {
    const op = reserveSettle(meter, () => workspaceId, tally);
    const runs: Run[] = [];
    for (let r = 0; r < 3; r++) {
      const run = ctx.durable ? await concurrent(op, options.concurrency, { ms: options.ms }) : await sequential(op, { ms: options.ms });
      if (run.errors > 0) throw new Error(`charging ${ctx.name} ${kind}: ${String(run.firstError)}`);
      runs.push(run);
      await pause(ctx.durable ? 200 : 50);
    }
    const window = { from: since, to: new Date(Date.now() + 3_600_000) };
    const row: HistoryRow = {
      workspace: kind,
      ledgerRows: (kind === 'heavy' ? options.rows : 0) + 1 + tally.get(workspaceId),
      openHolds: kind === 'heavy' ? holds.length : 0,
      chargePerSec: median(runs.map((r) => r.perSec)),
      usageByAgentMs: await latency(() => meter.usage({ workspaceId, ...window, groupBy: 'agent' }), 5),
      usageByModelPerDayMs: await latency(() => meter.usage({ workspaceId, ...window, groupBy: 'model', interval: 'day' }), 5),
      ledgerFirstPageMs: await latency(() => meter.ledger({ workspaceId, limit: 100 }), 20),
      ledgerRecentPageMs: await latency(() => meter.ledger({ workspaceId, from: new Date(Date.now() - 1), limit: 100 }), 20),
      ledgerAgentPageMs: await latency(() => meter.ledger({ workspaceId, agentId: AGENTS[3]!, limit: 100 }), 20),
    };
    // Each workspace is measured twice; the first pass warms up, the second is kept.
    byKind.set(kind, row);
  }
  const rows = [byKind.get('empty')!, byKind.get('heavy')!];
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

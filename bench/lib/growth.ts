/**
 * How cost grows with the ledger: one workspace is charged up to 10⁴, 10⁵, 10⁶ ledger rows
 * (through the meter and its store, in concurrent batches); at each size the charge
 * throughput and the latency of the analytics and ledger queries are measured.
 */
import { batches, concurrent, latency, median, pause, sequential, type Run } from './harness.js';
import type { StoreContext } from './stores.js';
import { verifyWorkspace, type Check } from './verify.js';
import { AGENTS, createWorkspace, MODEL_MICROS, newMeter, reserveSettle, Tally } from './workload.js';

export interface GrowthOptions {
  sizes: number[];
  /** In-flight charges for the durable stores (seeding and measuring). */
  concurrency: number;
  log: (line: string) => void;
}

export interface GrowthRow {
  /** Ledger rows of the workspace when the step's measurements started. */
  size: number;
  /** Seconds spent charging the ledger up to `size`. */
  seedSeconds: number;
  /** Charges timed at this size (three runs, median reported). */
  chargesTimed: number;
  chargePerSec: number;
  /** Median latencies in milliseconds. */
  usageByAgentMs: number;
  usageByConversationMs: number;
  usageByModelPerDayMs: number;
  ledgerFirstPageMs: number;
  ledgerRecentPageMs: number;
  ledgerAgentPageMs: number;
}

export interface GrowthResult {
  store: string;
  mode: string;
  rows: GrowthRow[];
  check: Check;
}

export async function measureGrowth(ctx: StoreContext, options: GrowthOptions): Promise<GrowthResult> {
  const storage = ctx.storage();
  const meter = newMeter(storage);
  const workspaceId = `growth-${Date.now()}`;
  const createdAt = new Date(Date.now() - 60_000);
  await createWorkspace(meter, workspaceId);
  const tally = new Tally();
  const charge = reserveSettle(meter, () => workspaceId, tally);
  let next = 0;
  const op = (i: number) => charge(next + i);
  const rowsNow = () => 1 + tally.get(workspaceId); // the allotment grant + one row per charge

  // Seeding goes as fast as the store allows; measuring uses the same mode as the headline numbers.
  const seed = async (count: number): Promise<Run> => {
    const run = ctx.durable ? await concurrent(op, 1024, { count }) : await batches(op, 1024, { count });
    next += count;
    return run;
  };
  const timed = async (count: number): Promise<Run> => {
    const run = ctx.durable ? await concurrent(op, options.concurrency, { count }) : await sequential(op, { count });
    next += count;
    return run;
  };

  const rows: GrowthRow[] = [];
  for (const size of options.sizes) {
    const started = performance.now();
    const missing = size - rowsNow();
    if (missing > 0) {
      const run = await seed(missing);
      if (run.errors > 0) throw new Error(`seeding ${ctx.name} failed: ${String(run.firstError)}`);
    }
    const seedSeconds = (performance.now() - started) / 1000;
    await pause(ctx.durable ? 500 : 200);
    const at = rowsNow();
    const repeats = size >= 1_000_000 ? 5 : 10;
    const window = { from: createdAt, to: new Date(Date.now() + 3_600_000) };
    const usageByAgentMs = await latency(() => meter.usage({ workspaceId, ...window, groupBy: 'agent' }), repeats);
    const usageByConversationMs = await latency(() => meter.usage({ workspaceId, ...window, groupBy: 'conversation' }), repeats);
    const usageByModelPerDayMs = await latency(() => meter.usage({ workspaceId, ...window, groupBy: 'model', interval: 'day' }), repeats);
    const ledgerFirstPageMs = await latency(() => meter.ledger({ workspaceId, limit: 100 }), 20);
    const recent = new Date(Date.now() - 1);
    const ledgerRecentPageMs = await latency(() => meter.ledger({ workspaceId, from: recent, limit: 100 }), 20);
    const ledgerAgentPageMs = await latency(() => meter.ledger({ workspaceId, agentId: AGENTS[3]!, limit: 100 }), 20);

    const count = Math.max(Math.round(size / 20), 5000);
    const runs: Run[] = [];
    for (let r = 0; r < 3; r++) {
      const run = await timed(count);
      if (run.errors > 0) throw new Error(`charging ${ctx.name} failed: ${String(run.firstError)}`);
      runs.push(run);
    }
    const row: GrowthRow = {
      size: at,
      seedSeconds,
      chargesTimed: count,
      chargePerSec: median(runs.map((r) => r.perSec)),
      usageByAgentMs,
      usageByConversationMs,
      usageByModelPerDayMs,
      ledgerFirstPageMs,
      ledgerRecentPageMs,
      ledgerAgentPageMs,
    };
    rows.push(row);
    options.log(
      `  ${ctx.name} growth ${at.toLocaleString('en-US').padStart(10)} rows: seed ${seedSeconds.toFixed(1)} s, ` +
        `charges ${Math.round(row.chargePerSec).toLocaleString('en-US')}/s, usage(agent) ${usageByAgentMs.toFixed(2)} ms, ` +
        `usage(conversation) ${usageByConversationMs.toFixed(2)} ms, usage(model, day) ${usageByModelPerDayMs.toFixed(2)} ms, ` +
        `ledger first ${ledgerFirstPageMs.toFixed(3)} ms, recent ${ledgerRecentPageMs.toFixed(3)} ms, agent ${ledgerAgentPageMs.toFixed(3)} ms`,
    );
  }
  const count = tally.get(workspaceId);
  const check = await verifyWorkspace(meter, storage, workspaceId, count, count * MODEL_MICROS);
  return {
    store: ctx.name,
    mode: ctx.durable ? `${options.concurrency} in flight` : 'sequential',
    rows,
    check,
  };
}

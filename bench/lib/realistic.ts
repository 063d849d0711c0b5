/**
 * The realistic run: 10,000 workspaces with Zipf-skewed traffic, four app servers (child
 * processes, each its own meter on the same store), replies through a provider that sleeps
 * 200–2,000 ms. Reports the sustained replies/s and the latency the meter adds to a reply
 * (its total time minus the provider's sleep). Allotments are small enough that the hottest
 * workspaces run dry mid-run, so refusals happen and the no-overspend check bites.
 */

import { cpuWindow, portsOf } from './cpu.js';
import type { Fleet } from './fleet.js';
import { fmtInt, median } from './harness.js';
import type { StoreContext } from './stores.js';
import { type Check, verifyWorkspace } from './verify.js';
import { MODEL_MICROS, newMeter } from './workload.js';

export interface RealisticOptions {
  workspaces: number;
  zipf: number;
  fleet: Fleet;
  /** Replies in flight per process. */
  concurrency: number;
  ms: number;
  minLatencyMs: number;
  maxLatencyMs: number;
  /** Credits each workspace starts with. */
  allotment: number;
  log: (line: string) => void;
}

export interface RealisticResult {
  store: string;
  workspaces: number;
  processes: number;
  concurrency: number;
  seconds: number;
  repliesPerSec: number;
  replies: number;
  refused: number;
  errors: number;
  firstError?: string;
  addedP50Ms: number;
  addedP99Ms: number;
  addedMaxMs: number;
  samples: number;
  setupSeconds: number;
  /** Cores used during the run by the app-server processes together, and by the store's servers. */
  appCores: number;
  serverCores: number;
  /** Workspaces that ran dry (a refusal or a balance of 0). */
  dryWorkspaces: number;
  checkedWorkspaces: number;
  failedChecks: Check[];
}

function quantile(sorted: readonly number[], q: number): number {
  if (sorted.length === 0) return Number.NaN;
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))]!;
}

/** Runs `work` over `items`, `width` at a time. */
async function pool<T>(items: readonly T[], width: number, work: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  await Promise.all(
    Array.from({ length: width }, async () => {
      while (next < items.length) await work(items[next++]!);
    }),
  );
}

export async function measureRealistic(ctx: StoreContext, options: RealisticOptions): Promise<RealisticResult> {
  const storage = ctx.storage();
  const meter = newMeter(storage);
  const prefix = `real-${Date.now()}-`;
  const ids = Array.from({ length: options.workspaces }, (_, i) => i);
  const setupStarted = performance.now();
  await pool(ids, 64, async (i) => {
    await meter.createWorkspace({ workspaceId: `${prefix}${i}`, plan: 'enterprise', allotment: options.allotment });
  });
  const setupSeconds = (performance.now() - setupStarted) / 1000;
  options.log(
    `  ${ctx.name} realistic ${options.fleet.processes} × ${options.concurrency}: ${fmtInt(options.workspaces)} workspaces created in ${setupSeconds.toFixed(1)} s`,
  );

  const stopCpu = cpuWindow(portsOf(ctx.address));
  const runs = await options.fleet.run({
    kind: 'realistic',
    store: ctx.name,
    address: ctx.address,
    prefix,
    workspaces: options.workspaces,
    zipf: options.zipf,
    concurrency: options.concurrency,
    ms: options.ms,
    minLatencyMs: options.minLatencyMs,
    maxLatencyMs: options.maxLatencyMs,
    samples: 50_000,
  });
  const serverCores = stopCpu().server;
  const appCores = runs.reduce((n, r) => n + (r.cores ?? Number.NaN), 0);
  const counts = new Map<number, number>();
  let replies = 0;
  let inWindow = 0;
  let refused = 0;
  let errors = 0;
  let firstError: string | undefined;
  const added: number[] = [];
  for (const run of runs) {
    replies += run.replies;
    inWindow += run.repliesInWindow;
    refused += run.refused;
    errors += run.errors;
    firstError ??= run.firstError;
    for (const value of run.addedMs) added.push(value);
    for (const [w, count] of run.tally) counts.set(w, (counts.get(w) ?? 0) + count);
  }
  added.sort((a, b) => a - b);

  // Every workspace, charged or not: balance + held = ledger sum, no negative balance, the exact charges.
  const failedChecks: Check[] = [];
  let dry = 0;
  await pool(ids, 16, async (i) => {
    const count = counts.get(i) ?? 0;
    const check = await verifyWorkspace(meter, storage, `${prefix}${i}`, count, count * MODEL_MICROS);
    if (check.balance < MODEL_MICROS) dry++;
    if (!check.ok) failedChecks.push(check);
  });
  const result: RealisticResult = {
    store: ctx.name,
    workspaces: options.workspaces,
    processes: options.fleet.processes,
    concurrency: options.concurrency,
    seconds: options.ms / 1000,
    repliesPerSec: (inWindow / options.ms) * 1000,
    replies,
    refused,
    errors,
    addedP50Ms: median(added),
    addedP99Ms: quantile(added, 0.99),
    addedMaxMs: added.at(-1) ?? Number.NaN,
    samples: added.length,
    setupSeconds,
    appCores,
    serverCores,
    dryWorkspaces: dry,
    checkedWorkspaces: ids.length,
    failedChecks,
  };
  if (firstError !== undefined) result.firstError = firstError;
  options.log(
    `  ${ctx.name} realistic ${options.fleet.processes} × ${options.concurrency}: ${fmtInt(result.repliesPerSec)} replies/s, meter adds p50 ${result.addedP50Ms.toFixed(1)} ms, p99 ${result.addedP99Ms.toFixed(1)} ms; ` +
      `${fmtInt(refused)} refused, ${dry} workspaces dry, CPU app ${appCores.toFixed(2)} / server ${serverCores.toFixed(2)} cores, ${errors} errors${firstError ? `: ${firstError}` : ''}; checks ${failedChecks.length === 0 ? 'ok' : `FAILED on ${failedChecks.length}`}`,
  );
  return result;
}

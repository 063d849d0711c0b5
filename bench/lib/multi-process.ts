/**
 * Four app servers on one database and one hot workspace (peer: one hot key), each a child
 * process with its own pool and meter; the same check as every other run afterwards.
 */

import type { Fleet } from './fleet.js';
import { fmtInt } from './harness.js';
import type { StoreContext } from './stores.js';
import { type Check, verifyWorkspace } from './verify.js';
import { createWorkspace, MODEL_MICROS, newMeter } from './workload.js';

export interface MultiProcessOptions {
  fleet: Fleet;
  /** In flight per process. */
  concurrency: number;
  ms: number;
  rounds: number;
  log: (line: string) => void;
}

export interface MultiProcessResult {
  store: string;
  processes: number;
  concurrency: number;
  ours: number[];
  peer: number[];
  errors: number;
  firstError?: string;
  checks: Check[];
  peerChecks: { key: string; expected: number; consumed: number; ok: boolean }[];
}

export async function measureMultiProcess(ctx: StoreContext, options: MultiProcessOptions): Promise<MultiProcessResult> {
  const storage = ctx.storage();
  const meter = newMeter(storage);
  const result: MultiProcessResult = {
    store: ctx.name,
    processes: options.fleet.processes,
    concurrency: options.concurrency,
    ours: [],
    peer: [],
    errors: 0,
    checks: [],
    peerChecks: [],
  };
  const rate = (runs: { ops: number; ms: number }[]) => {
    // Processes run side by side: total completed over the longest window.
    const ops = runs.reduce((n, r) => n + r.ops, 0);
    return (ops / Math.max(...runs.map((r) => r.ms))) * 1000;
  };
  for (let round = 0; round < options.rounds; round++) {
    const key = `fleet-peer-${Date.now()}-r${round}`;
    const peerRuns = await options.fleet.run({
      kind: 'hot',
      store: ctx.name,
      address: ctx.address,
      path: 'peer',
      target: key,
      concurrency: options.concurrency,
      ms: options.ms,
    });
    const peerOps = peerRuns.reduce((n, r) => n + r.ops, 0);
    const consumed = (await ctx.peer.get(key))?.consumedPoints ?? 0;
    result.peerChecks.push({ key, expected: peerOps, consumed, ok: consumed === peerOps });
    result.peer.push(rate(peerRuns));

    const workspaceId = `fleet-${Date.now()}-r${round}`;
    await createWorkspace(meter, workspaceId);
    const runs = await options.fleet.run({
      kind: 'hot',
      store: ctx.name,
      address: ctx.address,
      path: 'ours',
      target: workspaceId,
      concurrency: options.concurrency,
      ms: options.ms,
    });
    const ops = runs.reduce((n, r) => n + r.ops, 0);
    for (const r of runs) {
      result.errors += r.errors;
      if (r.firstError !== undefined) result.firstError ??= r.firstError;
    }
    result.checks.push(await verifyWorkspace(meter, storage, workspaceId, ops, ops * MODEL_MICROS));
    result.ours.push(rate(runs));
    options.log(
      `  ${ctx.name} ${options.fleet.processes} processes r${round + 1}: peer ${fmtInt(result.peer.at(-1)!)}/s, ours ${fmtInt(result.ours.at(-1)!)}/s` +
        (result.errors > 0 ? ` (${result.errors} errors: ${result.firstError})` : ''),
    );
  }
  return result;
}

/**
 * Throughput of one store: the raw Map limit, rate-limiter-flexible's consume() and our
 * charge path, interleaved round by round so that all of them see the same machine state.
 */
import type { CreditMeter } from '../../src/index.js';
import type { CreditStorage } from '../../src/storage/storage.js';
import { type CpuUse, cpuWindow, portsOf } from './cpu.js';
import { batches, concurrent, median, pause, type Run, sequential, syncLoop, type Until } from './harness.js';
import type { StoreContext } from './stores.js';
import { type Check, verifyWorkspace } from './verify.js';
import { createWorkspace, MODEL_MICROS, newMeter, replyOp, reserveSettle, Tally } from './workload.js';

export interface ThroughputOptions {
  rounds: number;
  /** Measured milliseconds per scenario and round. */
  measureMs: number;
  /** Unmeasured milliseconds run first, on the same workspace or key. */
  warmupMs: number;
  /** In-flight operations for the durable stores' concurrent scenarios. */
  concurrency: number;
  /** Operations per `Promise.all` batch for the memory store's concurrent scenarios. */
  batch: number;
  /** Workspaces (and peer keys) in the several-workspaces scenario. */
  workspaces: number;
  log: (line: string) => void;
}

type Kind = 'raw' | 'peer' | 'ours';

interface Scenario {
  id: string;
  kind: Kind;
  label: string;
  /** The peer scenario this one is compared with. */
  peer?: string;
  run(round: number): Promise<Run>;
}

export interface ScenarioResult {
  id: string;
  kind: Kind;
  label: string;
  peer?: string;
  /** Median ops/s over the rounds. */
  perSec: number;
  rounds: number[];
  errors: number;
  firstError?: string;
  /** Cores used during the measured windows (median): this process, and the store's servers. */
  clientCores?: number;
  serverCores?: number;
}

export interface ThroughputResult {
  store: string;
  setup: string;
  peerSetup: string;
  concurrency: number;
  scenarios: ScenarioResult[];
  checks: Check[];
  peerChecks: { key: string; expected: number; consumed: number; ok: boolean }[];
}

export async function measureThroughput(ctx: StoreContext, options: ThroughputOptions): Promise<ThroughputResult> {
  const checks: Check[] = [];
  const peerChecks: ThroughputResult['peerChecks'] = [];
  const { concurrency, workspaces } = options;
  // In every id, so that a second run against the same servers starts from fresh keys and workspaces.
  const stamp = Date.now().toString(36);
  let shared: { storage: CreditStorage; meter: CreditMeter } | undefined;
  const meterFor = () => {
    if (ctx.durable) {
      shared ??= { storage: ctx.storage(), meter: newMeter(ctx.storage()) };
      return shared;
    }
    const storage = ctx.storage();
    return { storage, meter: newMeter(storage) };
  };

  const ports = portsOf(ctx.address);
  let lastCpu: CpuUse | undefined;
  /** Warm-up then measurement with one runner; both count toward the end-of-run check. */
  const twice = async (go: (until: Until) => Promise<Run>): Promise<Run> => {
    if (options.warmupMs > 0) {
      const warm = await go({ ms: options.warmupMs });
      if (warm.errors > 0) return warm;
    }
    await pause(50);
    const stop = cpuWindow(ports);
    const run = await go({ ms: options.measureMs });
    lastCpu = stop();
    return run;
  };

  const runner = (op: (i: number) => Promise<unknown>, mode: 'sequential' | 'batch' | 'concurrent') => (until: Until) =>
    mode === 'sequential'
      ? sequential(op, until)
      : mode === 'batch'
        ? batches(op, options.batch, until)
        : concurrent(op, concurrency, until);

  /** A peer scenario on keys `keys(round)`; checks the points consumed afterwards. */
  const peerScenario = (id: string, label: string, mode: 'sequential' | 'batch' | 'concurrent', keyCount: number): Scenario => ({
    id,
    kind: 'peer',
    label,
    async run(round) {
      const keys = Array.from({ length: keyCount }, (_, k) => `${id}-${stamp}-r${round}-k${k}`);
      const counts = new Map<string, number>();
      const op = async (i: number) => {
        const key = keys[i % keyCount]!;
        await ctx.peer.consume(key, 1);
        counts.set(key, (counts.get(key) ?? 0) + 1);
      };
      const run = await twice(runner(op, mode));
      for (const key of keys) {
        const res = await ctx.peer.get(key);
        const consumed = res?.consumedPoints ?? 0;
        const expected = counts.get(key) ?? 0;
        peerChecks.push({ key, expected, consumed, ok: consumed === expected });
      }
      return run;
    },
  });

  /** One of our scenarios on fresh workspaces; verifies them afterwards. */
  const oursScenario = (
    id: string,
    label: string,
    peer: string,
    path: 'reserve+settle' | 'reply',
    mode: 'sequential' | 'batch' | 'concurrent',
    workspaceCount: number,
  ): Scenario => ({
    id,
    kind: 'ours',
    label,
    peer,
    async run(round) {
      const { storage, meter } = meterFor();
      const ids = Array.from({ length: workspaceCount }, (_, k) => `${id}-${stamp}-r${round}-w${k}`);
      for (const workspaceId of ids) await createWorkspace(meter, workspaceId);
      const tally = new Tally();
      const pick = workspaceCount === 1 ? () => ids[0]! : (i: number) => ids[i % workspaceCount]!;
      const op = path === 'reply' ? replyOp(meter, pick, tally) : reserveSettle(meter, pick, tally);
      const run = await twice(runner(op, mode));
      for (const workspaceId of ids) {
        const count = tally.get(workspaceId);
        checks.push(await verifyWorkspace(meter, storage, workspaceId, count, count * MODEL_MICROS));
      }
      return run;
    },
  });

  const rawMap: Scenario = {
    id: 'raw-map',
    kind: 'raw',
    label: 'bare Map update (the raw limit)',
    async run() {
      const map = new Map<string, number>();
      const keys = ['hot'];
      syncLoop((i) => map.set(keys[0]!, (map.get(keys[0]!) ?? 0) + (i & 1)), 200);
      return syncLoop((i) => map.set(keys[0]!, (map.get(keys[0]!) ?? 0) + (i & 1)), Math.min(options.measureMs, 1000));
    },
  };

  const rawAsync: Scenario = {
    id: 'raw-async',
    kind: 'raw',
    label: 'the same Map update in an awaited async function (the floor of any promise API)',
    async run() {
      const map = new Map<string, number>();
      const update = async (i: number) => {
        map.set('hot', (map.get('hot') ?? 0) + (i & 1));
      };
      await sequential(update, { ms: 200 });
      return sequential(update, { ms: Math.min(options.measureMs, 1000) });
    },
  };

  const scenarios: Scenario[] = [rawMap, rawAsync];
  if (!ctx.durable) {
    scenarios.push(
      peerScenario('peer-seq', 'rate-limiter-flexible consume(), sequential', 'sequential', 1),
      oursScenario('ours-seq', 'reserve + settle, sequential', 'peer-seq', 'reserve+settle', 'sequential', 1),
      oursScenario('ours-reply-seq', 'reply (instant provider), sequential', 'peer-seq', 'reply', 'sequential', 1),
      peerScenario('peer-batch', `rate-limiter-flexible consume(), batches of ${options.batch}`, 'batch', 1),
      oursScenario('ours-batch', `reserve + settle, batches of ${options.batch}`, 'peer-batch', 'reserve+settle', 'batch', 1),
      oursScenario('ours-reply-batch', `reply (instant provider), batches of ${options.batch}`, 'peer-batch', 'reply', 'batch', 1),
    );
  } else {
    scenarios.push(
      peerScenario('peer-seq', 'rate-limiter-flexible consume(), 1 in flight', 'sequential', 1),
      oursScenario('ours-seq', 'reserve + settle, 1 in flight', 'peer-seq', 'reserve+settle', 'sequential', 1),
      peerScenario('peer-hot', `rate-limiter-flexible consume(), ${concurrency} in flight, one key`, 'concurrent', 1),
      oursScenario(
        'ours-hot',
        `reserve + settle, ${concurrency} in flight, one hot workspace`,
        'peer-hot',
        'reserve+settle',
        'concurrent',
        1,
      ),
      oursScenario(
        'ours-reply-hot',
        `reply (instant provider), ${concurrency} in flight, one hot workspace`,
        'peer-hot',
        'reply',
        'concurrent',
        1,
      ),
      peerScenario('peer-multi', `rate-limiter-flexible consume(), ${concurrency} in flight, ${workspaces} keys`, 'concurrent', workspaces),
      oursScenario(
        'ours-multi',
        `reserve + settle, ${concurrency} in flight, ${workspaces} workspaces`,
        'peer-multi',
        'reserve+settle',
        'concurrent',
        workspaces,
      ),
    );
  }

  const perRound = new Map<string, Run[]>(scenarios.map((s) => [s.id, []]));
  const cpuRounds = new Map<string, CpuUse[]>(scenarios.map((s) => [s.id, []]));
  for (let round = 0; round < options.rounds; round++) {
    for (const scenario of scenarios) {
      lastCpu = undefined;
      const run = await scenario.run(round);
      perRound.get(scenario.id)!.push(run);
      if (lastCpu) cpuRounds.get(scenario.id)!.push(lastCpu);
      options.log(
        `  ${ctx.name} r${round + 1} ${scenario.id.padEnd(16)} ${Math.round(run.perSec).toLocaleString('en-US').padStart(12)} ops/s` +
          (run.errors > 0 ? `  ${run.errors} errors: ${String(run.firstError)}` : ''),
      );
      await pause(ctx.durable ? 300 : 100);
    }
  }

  return {
    store: ctx.name,
    setup: ctx.setup,
    peerSetup: ctx.peerSetup,
    concurrency,
    scenarios: scenarios.map((s) => {
      const runs = perRound.get(s.id)!;
      const errors = runs.reduce((n, r) => n + r.errors, 0);
      const first = runs.find((r) => r.firstError !== undefined)?.firstError;
      const result: ScenarioResult = {
        id: s.id,
        kind: s.kind,
        label: s.label,
        perSec: median(runs.map((r) => r.perSec)),
        rounds: runs.map((r) => Math.round(r.perSec)),
        errors,
      };
      if (s.peer !== undefined) result.peer = s.peer;
      const cpu = cpuRounds.get(s.id)!;
      if (cpu.length > 0) {
        result.clientCores = median(cpu.map((c) => c.client));
        result.serverCores = median(cpu.map((c) => c.server));
      }
      if (first !== undefined) result.firstError = String(first);
      return result;
    }),
    checks,
    peerChecks,
  };
}

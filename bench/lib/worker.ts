/**
 * A child process standing in for one app server: its own connection to the store and its
 * own CreditMeter (or rate-limiter-flexible limiter). Started by bench/lib/fleet.ts with
 * `node --import tsx`; talks over the IPC channel, one task after another:
 *
 *   parent → { task }   worker → { ready }   parent → { go }   worker → { result }
 *
 * It connects once (on its first task) and exits on { close } or when the parent goes.
 */
import { CreditMeter, InsufficientCreditsError } from '../../src/index.js';
import type { ReplyProvider } from '../../src/meter/provider.js';
import { concurrent } from './harness.js';
import { type Connection, connect, type StoreName } from './stores.js';
import { AGENTS, CONVERSATIONS, MODEL, newMeter, reserveSettle, Tally } from './workload.js';

/** Charges on one hot workspace (ours) or one hot key (peer), `concurrency` in flight, for `ms`. */
export interface HotTask {
  kind: 'hot';
  store: StoreName;
  address: string;
  path: 'ours' | 'peer';
  /** The workspace (ours) or key (peer). */
  target: string;
  concurrency: number;
  ms: number;
}

/** Replies through a slow provider on Zipf-chosen workspaces, `concurrency` in flight, for `ms`. */
export interface RealisticTask {
  kind: 'realistic';
  store: StoreName;
  address: string;
  /** Workspace `i` is `${prefix}${i}`, i in [0, workspaces). */
  prefix: string;
  workspaces: number;
  /** Zipf exponent: workspace of rank r is chosen with probability ∝ 1 / r^s. */
  zipf: number;
  concurrency: number;
  ms: number;
  /** The provider sleeps uniformly between these (milliseconds). */
  minLatencyMs: number;
  maxLatencyMs: number;
  /** Most latency samples kept (a uniform reservoir). */
  samples: number;
}

export type Task = HotTask | RealisticTask;

export interface HotResult {
  kind: 'hot';
  ops: number;
  errors: number;
  ms: number;
  firstError?: string;
}

export interface RealisticResult {
  kind: 'realistic';
  /** Charged replies completed inside the measured window. */
  repliesInWindow: number;
  /** Charged replies in all (the window plus the tail that was in flight at its end). */
  replies: number;
  /** Replies refused for lack of credits. */
  refused: number;
  errors: number;
  firstError?: string;
  /** Milliseconds the meter added to a charged reply (total minus the provider's sleep): a sample. */
  addedMs: number[];
  /** [workspace index, charged replies] for every workspace charged. */
  tally: [number, number][];
  /** Cores this process used over its run (CPU seconds per wall second). */
  cores?: number;
}

export type WorkerMessage = { type: 'ready' } | { type: 'result'; result: HotResult | RealisticResult } | { type: 'failed'; error: string };

/** Cumulative Zipf weights over ranks 1..n, for sampling by binary search. */
export function zipfCdf(n: number, s: number): Float64Array {
  const cdf = new Float64Array(n);
  let sum = 0;
  for (let r = 0; r < n; r++) {
    sum += 1 / (r + 1) ** s;
    cdf[r] = sum;
  }
  for (let r = 0; r < n; r++) cdf[r]! /= sum;
  return cdf;
}

export function zipfPick(cdf: Float64Array): number {
  const u = Math.random();
  let lo = 0;
  let hi = cdf.length - 1;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (cdf[mid]! < u) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

let connection: Connection | undefined;

async function connection_(task: Task): Promise<Connection> {
  connection ??= await connect(task.store, task.address);
  return connection;
}

async function runHot(task: HotTask, go: Promise<void>): Promise<HotResult> {
  const connection = await connection_(task);
  {
    const meter = newMeter(connection.storage);
    const op =
      task.path === 'ours'
        ? reserveSettle(meter, () => task.target, new Tally())
        : async () => {
            await connection.peer.consume(task.target, 1);
          };
    send({ type: 'ready' });
    await go;
    const run = await concurrent(op, task.concurrency, { ms: task.ms });
    const result: HotResult = { kind: 'hot', ops: run.ops, errors: run.errors, ms: run.ms };
    if (run.firstError !== undefined) result.firstError = String(run.firstError);
    return result;
  }
}

interface Box {
  slept: number;
}

async function runRealistic(task: RealisticTask, go: Promise<void>): Promise<RealisticResult> {
  const connection = await connection_(task);
  {
    const span = task.maxLatencyMs - task.minLatencyMs;
    const provider: ReplyProvider = {
      async generate(request) {
        // The model's latency as planned, not as measured: a store that blocks the event loop
        // (SQLite waiting for another process's lock or its fsync) stretches every sleep in the
        // process, and that time is the meter's, not the model's.
        const latency = task.minLatencyMs + Math.random() * span;
        await sleep(latency);
        (request.input as Box).slept = latency;
        return { output: 'ok' };
      },
    };
    const meter = new CreditMeter({ storage: connection.storage, providers: { openai: provider } });
    const cdf = zipfCdf(task.workspaces, task.zipf);
    const counts = new Uint32Array(task.workspaces);
    const added: number[] = [];
    let seen = 0;
    let replies = 0;
    let repliesInWindow = 0;
    let refused = 0;
    let deadline = Infinity;
    send({ type: 'ready' });
    await go;
    deadline = performance.now() + task.ms;
    const cpuFrom = process.cpuUsage();
    const wallFrom = performance.now();
    const op = async (i: number) => {
      const w = zipfPick(cdf);
      const input: Box = { slept: -1 };
      const started = performance.now();
      try {
        await meter.reply({
          workspaceId: `${task.prefix}${w}`,
          agentId: AGENTS[i & 7]!,
          conversationId: CONVERSATIONS[i & 255]!,
          model: MODEL,
          input,
        });
      } catch (error) {
        if (error instanceof InsufficientCreditsError) {
          refused++;
          return;
        }
        throw error;
      }
      const ended = performance.now();
      if (input.slept < 0) throw new Error('the provider was not called for a charged reply');
      counts[w]!++;
      replies++;
      if (ended <= deadline) repliesInWindow++;
      // Reservoir sampling keeps memory bounded however long the run.
      const value = ended - started - input.slept;
      seen++;
      if (added.length < task.samples) added.push(value);
      else {
        const j = Math.floor(Math.random() * seen);
        if (j < task.samples) added[j] = value;
      }
    };
    const run = await concurrent(op, task.concurrency, { ms: task.ms });
    const tally: [number, number][] = [];
    counts.forEach((count, w) => {
      if (count > 0) tally.push([w, count]);
    });
    const cpu = process.cpuUsage(cpuFrom);
    const result: RealisticResult = {
      kind: 'realistic',
      repliesInWindow,
      replies,
      refused,
      errors: run.errors,
      addedMs: added,
      tally,
      cores: (cpu.user + cpu.system) / 1e3 / (performance.now() - wallFrom),
    };
    if (run.firstError !== undefined) result.firstError = String(run.firstError);
    return result;
  }
}

function send(message: WorkerMessage): void {
  process.send?.(message);
}

if (process.send) {
  let release: () => void = () => undefined;
  process.on('message', (message: { task?: Task; go?: true; close?: true }) => {
    if (message.go) {
      release();
      return;
    }
    if (message.close) {
      void (async () => {
        await connection?.close();
        process.disconnect?.();
      })();
      return;
    }
    const task = message.task;
    if (!task) return;
    const go = new Promise<void>((resolve) => {
      release = resolve;
    });
    const running = task.kind === 'hot' ? runHot(task, go) : runRealistic(task, go);
    running.then(
      (result) => send({ type: 'result', result }),
      (error: unknown) => send({ type: 'failed', error: error instanceof Error ? (error.stack ?? error.message) : String(error) }),
    );
  });
  process.on('disconnect', () => process.exit(0));
}

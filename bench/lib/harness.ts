/**
 * Timing helpers. Every runner counts completed operations and divides by the wall-clock
 * time from the first start to the last completion, so in-flight work at the deadline is
 * counted and timed, never dropped.
 */

/** One measured run. */
export interface Run {
  /** Operations that completed without throwing. */
  ops: number;
  /** Operations that threw. */
  errors: number;
  /** Wall-clock milliseconds. */
  ms: number;
  /** ops per second. */
  perSec: number;
  /** The first error seen, for the report. */
  firstError?: unknown;
}

/** When a run stops: after `ms` milliseconds, or after `count` operations were started. */
export interface Until {
  ms?: number;
  count?: number;
}

function finish(ops: number, errors: number, started: number, firstError: unknown): Run {
  const ms = performance.now() - started;
  const run: Run = { ops, errors, ms, perSec: ms > 0 ? (ops / ms) * 1000 : 0 };
  if (firstError !== undefined) run.firstError = firstError;
  return run;
}

/** A synchronous loop, checking the clock every 4,096 iterations. */
export function syncLoop(body: (i: number) => void, ms: number): Run {
  const started = performance.now();
  const deadline = started + ms;
  let i = 0;
  while (performance.now() < deadline) {
    const end = i + 4096;
    for (; i < end; i++) body(i);
  }
  return finish(i, 0, started, undefined);
}

/** One operation at a time, each awaited before the next starts. */
export async function sequential(op: (i: number) => Promise<unknown>, until: Until): Promise<Run> {
  const started = performance.now();
  const deadline = until.ms === undefined ? Infinity : started + until.ms;
  const count = until.count ?? Infinity;
  let ops = 0;
  let errors = 0;
  let firstError: unknown;
  let i = 0;
  while (i < count) {
    if ((i & 255) === 0 && performance.now() >= deadline) break;
    try {
      await op(i++);
      ops++;
    } catch (error) {
      errors++;
      firstError ??= error;
    }
  }
  return finish(ops, errors, started, firstError);
}

/** Batches of `size` operations started together (`Promise.all`), one batch after another. */
export async function batches(op: (i: number) => Promise<unknown>, size: number, until: Until): Promise<Run> {
  const started = performance.now();
  const deadline = until.ms === undefined ? Infinity : started + until.ms;
  const count = until.count ?? Infinity;
  let ops = 0;
  let errors = 0;
  let firstError: unknown;
  let i = 0;
  const pending: Promise<unknown>[] = new Array(size);
  while (i < count && performance.now() < deadline) {
    const n = Math.min(size, count - i);
    for (let k = 0; k < n; k++) {
      pending[k] = op(i++).then(
        () => {
          ops++;
        },
        (error: unknown) => {
          errors++;
          firstError ??= error;
        },
      );
    }
    await Promise.all(n === size ? pending : pending.slice(0, n));
  }
  return finish(ops, errors, started, firstError);
}

/**
 * `concurrency` workers, each starting its next operation as soon as its previous one
 * completed, so that `concurrency` operations are always in flight. `worker` is the index
 * of the worker running the operation (used to spread workers over workspaces).
 */
export async function concurrent(op: (i: number, worker: number) => Promise<unknown>, concurrency: number, until: Until): Promise<Run> {
  const started = performance.now();
  const deadline = until.ms === undefined ? Infinity : started + until.ms;
  const count = until.count ?? Infinity;
  let ops = 0;
  let errors = 0;
  let firstError: unknown;
  let i = 0;
  const workers: Promise<void>[] = [];
  for (let w = 0; w < concurrency; w++) {
    workers.push(
      (async () => {
        while (i < count && performance.now() < deadline) {
          try {
            await op(i++, w);
            ops++;
          } catch (error) {
            errors++;
            firstError ??= error;
          }
        }
      })(),
    );
  }
  await Promise.all(workers);
  return finish(ops, errors, started, firstError);
}

/** The median of a list of numbers (the lower middle of an even count). */
export function median(values: readonly number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor((sorted.length - 1) / 2)] ?? Number.NaN;
}

/**
 * Median latency of `repeats` sequential calls, in milliseconds, after one unmeasured call.
 * Stops early (after at least one measured call) once `budgetMs` is spent, so a slow query
 * on a long history keeps the run bounded.
 */
export async function latency(call: () => Promise<unknown>, repeats: number, budgetMs = 5_000): Promise<number> {
  const started = performance.now();
  await call(); // warm caches and prepared statements
  const times: number[] = [];
  for (let r = 0; r < repeats; r++) {
    if (r > 0 && performance.now() - started > budgetMs) break;
    const t = performance.now();
    await call();
    times.push(performance.now() - t);
  }
  return median(times);
}

/** Lets the collector and pending timers settle between measurements. */
export async function pause(ms = 100): Promise<void> {
  (globalThis as { gc?: () => void }).gc?.();
  await new Promise((resolve) => setTimeout(resolve, ms));
}

/** 1234567.8 → "1,234,568". */
export function fmtInt(value: number): string {
  return Number.isFinite(value) ? Math.round(value).toLocaleString('en-US') : 'n/a';
}

/** A ratio such as "0.42×". */
export function fmtRatio(value: number): string {
  if (!Number.isFinite(value)) return 'n/a';
  return `${value >= 10 ? value.toFixed(1) : value >= 0.1 ? value.toFixed(2) : value.toPrecision(2)}×`;
}

/** Milliseconds with a sensible precision. */
export function fmtMs(value: number): string {
  if (!Number.isFinite(value)) return 'n/a';
  return value >= 100 ? value.toFixed(0) : value >= 10 ? value.toFixed(1) : value >= 1 ? value.toFixed(2) : value.toFixed(3);
}

/** A Markdown table. */
export function table(head: readonly string[], rows: readonly (readonly string[])[]): string {
  const line = (cells: readonly string[]) => `| ${cells.join(' | ')} |`;
  const align = head.map((_, i) => (i === 0 ? '---' : '---:'));
  return [line(head), line(align), ...rows.map(line)].join('\n');
}

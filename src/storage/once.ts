/** A task run once for all its callers, see {@link once}. */
export interface Once<T> {
  /** Runs the task, joins the run in flight, or gives what the run that succeeded gave. */
  (): Promise<T>;
  /** True once a run has succeeded: callers on a hot path may skip awaiting it. */
  readonly done: boolean;
}

/**
 * Wraps a task that every call of a store must await first, such as `migrate` or opening the
 * connection: callers while it runs share that run, later callers get its result, and a run that
 * fails is forgotten, so the next call tries again (a database that was down, a driver installed
 * since).
 *
 * @example
 * ```ts
 * readonly #migration = once(() => this.#createTables());
 * async migrate(): Promise<void> {
 *   await this.#migration();
 * }
 * ```
 */
export function once<T>(task: () => Promise<T>): Once<T> {
  let running: Promise<T> | undefined;
  const run = Object.assign(
    () =>
      (running ??= task().then(
        (value) => {
          run.done = true;
          return value;
        },
        (error: unknown) => {
          running = undefined;
          throw error;
        },
      )),
    { done: false },
  );
  return run;
}

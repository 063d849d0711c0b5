/**
 * Group commit: operations submitted while a batch is running wait and go together in the
 * next one. On one hot row a commit per operation is capped by the WAL flush (the row lock is
 * held through it); a batch pays one flush for all its operations.
 */

/** One queued operation. */
export interface QueuedOperation {
  /** The JSON command the database runs. */
  readonly command: Readonly<Record<string, unknown>>;
  /** The workspace to lock before the batch runs, or null. */
  readonly lock: string | null;
  /** The contract method's name, for errors. */
  readonly operation: string;
  resolve(value: unknown): void;
  reject(reason: unknown): void;
}

/** Runs a whole batch and settles every operation in it (never rejects). */
export type BatchRunner = (batch: QueuedOperation[]) => Promise<void>;

/** Tuning of the batcher. */
export interface GroupCommitLimits {
  /** Most operations in one transaction. */
  readonly maxBatch: number;
  /** Most transactions in flight at once. */
  readonly maxInFlight: number;
}

/** Gathers concurrent operations into batches and hands them to `run`. */
export class GroupCommit {
  readonly #run: BatchRunner;
  readonly #limits: GroupCommitLimits;
  #queue: QueuedOperation[] = [];
  #inFlight = 0;
  #scheduled = false;
  readonly #idle = new Set<() => void>();

  constructor(run: BatchRunner, limits: GroupCommitLimits) {
    this.#run = run;
    this.#limits = limits;
  }

  /** Queues an operation; it starts with the next batch. */
  submit(operation: QueuedOperation): void {
    this.#queue.push(operation);
    this.#schedule();
  }

  /** Resolves when nothing is queued or running. */
  async drained(): Promise<void> {
    if (this.#inFlight === 0 && this.#queue.length === 0) return;
    await new Promise<void>((resolve) => this.#idle.add(resolve));
  }

  #schedule(): void {
    if (this.#scheduled || this.#inFlight >= this.#limits.maxInFlight || this.#queue.length === 0) return;
    this.#scheduled = true;
    // Let operations started in the same turn of the event loop join this batch.
    setImmediate(() => {
      this.#scheduled = false;
      this.#dispatch();
    });
  }

  #dispatch(): void {
    while (this.#inFlight < this.#limits.maxInFlight && this.#queue.length > 0) {
      const batch = this.#queue.length <= this.#limits.maxBatch ? this.#queue : this.#queue.slice(0, this.#limits.maxBatch);
      this.#queue = batch === this.#queue ? [] : this.#queue.slice(batch.length);
      this.#inFlight++;
      void this.#run(batch)
        .catch((error: unknown) => {
          for (const operation of batch) operation.reject(error);
        })
        .finally(() => {
          this.#inFlight--;
          if (this.#inFlight === 0 && this.#queue.length === 0) {
            for (const resolve of this.#idle) resolve();
            this.#idle.clear();
          }
          this.#schedule();
        });
    }
  }
}

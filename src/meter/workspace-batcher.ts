import { StorageError } from '../core/errors.js';
import {
  adjustmentKey,
  type Command,
  type CoreEvent,
  type Outcome,
  type Rules,
  refundKey,
  replyKey,
  Transition,
  topUpKey,
} from '../core/transition.js';
import type { CommitResult, LoadedWorkspace, LoadRequest, WorkspaceCommit } from '../storage/storage.js';

/** What the batcher needs from the meter: the time, the rules and the store. */
export interface BatchContext {
  readonly rules: Rules;
  now(): number;
  load(request: LoadRequest): Promise<LoadedWorkspace>;
  commit(commit: WorkspaceCommit): Promise<CommitResult>;
}

/** A command's outcome, the events it raised and the instant it was applied at. */
export interface Applied {
  readonly outcome: Outcome;
  readonly events: readonly CoreEvent[];
  readonly at: number;
}

interface Pending {
  readonly command: Command;
  readonly resolve: (applied: Applied) => void;
  readonly reject: (error: unknown) => void;
}

// A commit that keeps losing the race to other writers gives up after this many tries.
const MAX_ATTEMPTS = 64;
// Bounds the size of one commit (one transaction, one script).
const MAX_BATCH = 1024;

/**
 * Group commit for every store: commands on one workspace that arrive while a commit is in
 * flight wait, then are applied in arrival order to one loaded state and committed together.
 * Each still gets its own outcome: a refused reserve never fails its neighbours. When the
 * store says the version moved (another meter wrote), the batch is loaded and applied again;
 * the transition core is pure, so applying twice is safe.
 */
export class WorkspaceBatcher {
  readonly #context: BatchContext;
  readonly #queues = new Map<string, Pending[]>();

  constructor(context: BatchContext) {
    this.#context = context;
  }

  /** Applies a command to a workspace as part of the next batch. */
  submit(workspaceId: string, command: Command): Promise<Applied> {
    return new Promise<Applied>((resolve, reject) => {
      const queue = this.#queues.get(workspaceId);
      if (queue) {
        queue.push({ command, resolve, reject });
        return;
      }
      this.#queues.set(workspaceId, [{ command, resolve, reject }]);
      queueMicrotask(() => void this.#drain(workspaceId));
    });
  }

  async #drain(workspaceId: string): Promise<void> {
    const queue = this.#queues.get(workspaceId)!;
    while (queue.length > 0) {
      const batch = queue.splice(0, MAX_BATCH);
      try {
        const results = await this.#run(workspaceId, batch);
        for (let i = 0; i < batch.length; i++) batch[i]!.resolve(results[i]!);
      } catch (error) {
        for (const pending of batch) pending.reject(error);
      }
    }
    this.#queues.delete(workspaceId);
  }

  async #run(workspaceId: string, batch: readonly Pending[]): Promise<Applied[]> {
    const unique = new Set<string>();
    for (const pending of batch) for (const key of keysOf(pending.command)) unique.add(key);
    const keys = [...unique];
    for (let attempt = 0; attempt < MAX_ATTEMPTS; attempt++) {
      const now = this.#context.now();
      const loaded = await this.#context.load({ workspaceId, keys, now });
      const transition = new Transition(workspaceId, loaded, now, this.#context.rules);
      const results = batch.map((pending) => ({ outcome: transition.apply(pending.command), events: transition.takeEvents(), at: now }));
      if (!transition.changed) return results;
      const { state, ledger, records } = transition.result();
      const result = await this.#context.commit({ workspaceId, expectedVersion: loaded.version, state, ledger, records });
      if (result === 'committed') return results;
    }
    throw new StorageError('commit', new Error('the workspace kept changing; try again'));
  }
}

/** The records a command reads: loaded with the state, in the same round trip. */
function keysOf(command: Command): string[] {
  switch (command.type) {
    case 'reserve':
      return [replyKey(command.reply.replyId)];
    case 'settle':
    case 'release':
    case 'extend':
      return [replyKey(command.replyId)];
    case 'topUp':
      return [topUpKey(command.grantId)];
    case 'refund':
      return [replyKey(command.replyId), refundKey(command.refundId)];
    case 'adjust':
      return [adjustmentKey(command.adjustmentId)];
    default:
      return [];
  }
}

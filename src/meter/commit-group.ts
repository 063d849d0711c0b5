import type { CommitResult, WorkspaceCommit } from '../storage/storage.js';

// Commit calls in flight at once; further commits wait and go together in the next call.
const MAX_IN_FLIGHT = 4;
// Bounds the size of one call (one transaction, one statement).
const MAX_GROUP = 256;

interface Waiting {
  readonly commit: WorkspaceCommit;
  readonly resolve: (result: CommitResult) => void;
  readonly reject: (error: unknown) => void;
}

/**
 * Group commit across workspaces: the commits of workspaces whose batches are applied in the same
 * turn of the event loop go to the store together in one call (one transaction, and in
 * PostgreSQL one statement, for all of them), and while {@link MAX_IN_FLIGHT} calls are in
 * flight, those that become ready wait and go together in the next call. A quiet meter sends each
 * commit at once (a microtask later); a busy one with many workspaces sends fewer, larger calls
 * instead of one statement, and on SQLite one fsync, per workspace. Each commit still gets
 * its own result: the store commits each workspace all-or-nothing and independently, and when a
 * grouped call fails, each of its commits is sent again alone, so only the ones that fail alone
 * fail.
 */
export class CommitGroup {
  readonly #send: (commits: WorkspaceCommit[]) => Promise<CommitResult[]>;
  readonly #retryAlone: (error: unknown) => boolean;
  readonly #waiting: Waiting[] = [];
  #inFlight = 0;
  /** True while a microtask that sends the waiting commits is queued. */
  #scheduled = false;

  /**
   * @param send - Commits a call's commits; each workspace all-or-nothing, independently.
   * @param retryAlone - Whether the commits of a grouped call that failed with `error` go again
   *   one by one. Not after a timeout: a store too slow to answer gets no more calls than before.
   */
  constructor(send: (commits: WorkspaceCommit[]) => Promise<CommitResult[]>, retryAlone: (error: unknown) => boolean = () => true) {
    this.#send = send;
    this.#retryAlone = retryAlone;
  }

  /** Commits one workspace's changes, alone now or with others soon. */
  commit(commit: WorkspaceCommit): Promise<CommitResult> {
    return new Promise((resolve, reject) => {
      this.#waiting.push({ commit, resolve, reject });
      if (this.#inFlight < MAX_IN_FLIGHT && !this.#scheduled) {
        this.#scheduled = true;
        queueMicrotask(this.#start);
      }
    });
  }

  /**
   * Sends what became ready meanwhile: after the microtasks queued before it, so the commits
   * of every workspace whose batch is applied in the same turn go in one call.
   */
  readonly #start = (): void => {
    this.#scheduled = false;
    // More than a call takes (256) go in several, up to the calls in flight allowed.
    while (this.#waiting.length > 1 && this.#inFlight < MAX_IN_FLIGHT) void this.#flush();
    if (this.#waiting.length === 0 || this.#inFlight >= MAX_IN_FLIGHT) return;
    // A lone commit skips #flush's sorting and async frame: it is every store's sequential path.
    const { commit, resolve, reject } = this.#waiting.pop()!;
    this.#inFlight++;
    this.#send([commit]).then(
      (results) => {
        this.#done();
        resolve(results[0]!);
      },
      (error: unknown) => {
        this.#done();
        reject(error);
      },
    );
  };

  #done(): void {
    this.#inFlight--;
    if (this.#waiting.length > 0) void this.#flush();
  }

  async #flush(): Promise<void> {
    // In one order everywhere, so that two app servers' calls lock their workspaces' rows in the
    // same order and never deadlock on each other.
    const group = this.#waiting.splice(0, MAX_GROUP).sort((a, b) => (a.commit.workspaceId < b.commit.workspaceId ? -1 : 1));
    this.#inFlight++;
    try {
      const results = await this.#send(group.map((waiting) => waiting.commit));
      for (const [i, waiting] of group.entries()) waiting.resolve(results[i]!);
    } catch (error) {
      if (!this.#retryAlone(error)) {
        for (const waiting of group) waiting.reject(error);
        return;
      }
      // One workspace's commit the store refuses must not fail its neighbours': each goes again
      // alone and gets its own answer. A commit of the failed call that landed after all (the
      // connection dropped after it) meets its moved version and answers `conflict`; the batcher
      // then reloads and applies its commands again, and a reserve, settle, release, top-up,
      // refund or adjustment finds by its id what landed.
      await Promise.all(group.map(({ commit, resolve, reject }) => this.#send([commit]).then((results) => resolve(results[0]!), reject)));
    } finally {
      this.#done();
    }
  }
}

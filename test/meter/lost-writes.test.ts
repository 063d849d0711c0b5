/**
 * A store that loses its last acknowledged commits (a Redis failover or crash under
 * `appendfsync everysec`, SQLite `synchronous=NORMAL` on power loss) hands out versions again.
 * A meter still holding a lost state must never commit it over what was written since.
 */
import { describe, expect, it } from 'vitest';
import { CreditMeter, MemoryStorage } from '../../src/index.js';
import type { CommitResult, CreditStorage, LoadedWorkspace, LoadRequest, WorkspaceCommit } from '../../src/storage/index.js';

/** The memory store, able to forget its last commits, as a failed-over replica would. */
class LossyStorage implements CreditStorage {
  #inner = new MemoryStorage();
  readonly #landed: WorkspaceCommit[] = [];

  async migrate(): Promise<void> {}
  async close(): Promise<void> {}
  load(request: LoadRequest): Promise<LoadedWorkspace> {
    return this.#inner.load(request);
  }
  async commit(commits: readonly WorkspaceCommit[]): Promise<CommitResult[]> {
    const results = await this.#inner.commit(commits);
    for (const [i, commit] of commits.entries()) if (results[i] === 'committed') this.#landed.push(commit);
    return results;
  }
  ledger(...args: Parameters<MemoryStorage['ledger']>) {
    return this.#inner.ledger(...args);
  }
  listWorkspaces(...args: Parameters<MemoryStorage['listWorkspaces']>) {
    return this.#inner.listWorkspaces(...args);
  }
  /** Forgets the last `count` commits: the store holds what it held before them, versions included. */
  async lose(count: number): Promise<void> {
    this.#landed.splice(this.#landed.length - count, count);
    this.#inner = new MemoryStorage();
    for (const commit of this.#landed) expect(await this.#inner.commit([commit])).toEqual(['committed']);
  }
}

const ask = (replyId: string, model: string) => ({ workspaceId: 'ws', agentId: 'a', conversationId: 'c', model, replyId });

describe('a store that lost its last commits', () => {
  it('a meter holding a lost state meets a new version, reloads, and the books still balance', async () => {
    const storage = new LossyStorage();
    const first = new CreditMeter({ storage });
    await first.createWorkspace({ workspaceId: 'ws', plan: 'enterprise', allotment: 100 });
    await first.reserve(ask('r1', 'gpt-4o-mini'));
    await first.settle({ workspaceId: 'ws', replyId: 'r1' });
    // The settle is lost: the store is back at the held reply. `first` still holds the settled state.
    await storage.lose(1);
    // One commit by another server: with versions handed out one by one, it would write the
    // very version the lost settle had.
    const second = new CreditMeter({ storage });
    await second.reserve(ask('r9', 'gpt-4o'));
    // Starts from the state it kept; a repeated version would let that state overwrite r9's hold.
    await first.reserve(ask('r2', 'gpt-4o-mini'));
    await first.settle({ workspaceId: 'ws', replyId: 'r2' });

    const fresh = new CreditMeter({ storage });
    const summary = await fresh.getWorkspace('ws');
    const { entries } = await fresh.ledger({ workspaceId: 'ws', limit: 100 });
    const sum = entries.reduce((total, entry) => total.plus(entry.credits), summary.balance.minus(summary.balance));
    expect(summary.balance.plus(summary.held).toString()).toBe(sum.toString());
    // r1's and r9's holds (1 + 5) and r2's charge (1) all count; r1's lost settle does not.
    expect(entries.map((entry) => entry.id)).toEqual(['1', '2']);
    expect(entries.filter((entry) => entry.kind === 'reply').map((entry) => entry.replyId)).toEqual(['r2']);
    expect(summary.balance.toString()).toBe('93');
    expect(summary.held.toString()).toBe('6');
  });
});

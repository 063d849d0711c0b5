import type { StoredRecord } from '../core/state.js';

/**
 * Open holds of a workspace by lapse time, for the memory store: a binary min-heap of
 * (lapse time, record key). Entries whose record moved on (settled, released, extended) are
 * skipped and dropped when met, so a write never searches the heap.
 */
export class HoldHeap {
  readonly #at: number[] = [];
  readonly #keys: string[] = [];

  push(at: number, key: string): void {
    let i = this.#at.length;
    this.#at.push(at);
    this.#keys.push(key);
    while (i > 0) {
      const parent = (i - 1) >> 1;
      if (this.#at[parent]! <= at) break;
      this.#swap(i, parent);
      i = parent;
    }
  }

  /** Records whose hold has lapsed by `now`. Drops stale entries; keeps live ones in place. */
  due(records: ReadonlyMap<string, StoredRecord>, now: number): StoredRecord[] {
    if (this.#at.length === 0 || this.#at[0]! > now) return [];
    const found: StoredRecord[] = [];
    const keep: [number, string][] = [];
    while (this.#at.length > 0 && this.#at[0]! <= now) {
      const at = this.#at[0]!;
      const key = this.#pop();
      const record = records.get(key);
      if (record?.holdExpiresAt !== at || found.includes(record)) continue;
      found.push(record);
      keep.push([at, key]);
    }
    // Until a commit ends them, lapsed holds stay listed: a load is never a write.
    for (const [at, key] of keep) this.push(at, key);
    return found;
  }

  /** The earliest lapse time of a live entry, or null when there is none. Drops stale entries. */
  earliest(records: ReadonlyMap<string, StoredRecord>): number | null {
    while (this.#at.length > 0 && records.get(this.#keys[0]!)?.holdExpiresAt !== this.#at[0]) this.#pop();
    return this.#at.length > 0 ? this.#at[0]! : null;
  }

  #pop(): string {
    const top = this.#keys[0]!;
    const lastAt = this.#at.pop()!;
    const lastKey = this.#keys.pop()!;
    if (this.#at.length > 0) {
      this.#at[0] = lastAt;
      this.#keys[0] = lastKey;
      let i = 0;
      for (;;) {
        const left = 2 * i + 1;
        const right = left + 1;
        let least = i;
        if (left < this.#at.length && this.#at[left]! < this.#at[least]!) least = left;
        if (right < this.#at.length && this.#at[right]! < this.#at[least]!) least = right;
        if (least === i) break;
        this.#swap(i, least);
        i = least;
      }
    }
    return top;
  }

  #swap(a: number, b: number): void {
    const at = this.#at[a]!;
    this.#at[a] = this.#at[b]!;
    this.#at[b] = at;
    const key = this.#keys[a]!;
    this.#keys[a] = this.#keys[b]!;
    this.#keys[b] = key;
  }
}

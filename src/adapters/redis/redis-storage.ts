import { createHash } from 'node:crypto';
import { StorageError } from '../../core/errors.js';
import type { LedgerRow, StoredRecord, WorkspaceState } from '../../core/state.js';
import { DAY_MS, dayOf, UsageAccumulator } from '../../core/usage-aggregate.js';
import type {
  CommitResult,
  CreditStorage,
  EraseRequest,
  LedgerQuery,
  ListQuery,
  LoadedWorkspace,
  LoadRequest,
  UsageAggregate,
  UsageQuery,
  WorkspaceCommit,
} from '../../storage/storage.js';
import { COMMIT, ERASE, LEDGER, LOAD, MIGRATE, USAGE } from './redis-scripts.js';

/**
 * The commands {@link RedisStorage} needs from a Redis client. An ioredis `Redis` or
 * `Cluster` satisfies it, as does any client with these three methods (a wrapper that adds
 * tracing, say). Typed structurally so this package never depends on a driver.
 */
export interface RedisClientLike {
  /** `EVALSHA sha numkeys key... arg...`. */
  evalsha(sha: string, numkeys: number, ...args: string[]): Promise<unknown>;
  /** `EVAL script numkeys key... arg...`. */
  eval(script: string, numkeys: number, ...args: string[]): Promise<unknown>;
  /** Closes the connection gracefully. */
  quit(): Promise<unknown>;
  /** `SCAN cursor MATCH pattern COUNT n`, for `listWorkspaces` (ioredis clients have it). */
  scan?(cursor: string, patternToken: 'MATCH', pattern: string, countToken: 'COUNT', count: number): Promise<[string, string[]]>;
  /** A Cluster's master nodes, each scanned by `listWorkspaces` (ioredis `Cluster` has it). */
  nodes?(role: 'master'): RedisClientLike[];
}

/** Options shared by both ways of constructing a {@link RedisStorage}. */
export interface RedisStorageBaseOptions {
  /**
   * Prefix of every key this store writes. Give each store (or each test) its own to keep
   * them apart on one server. It may not contain `{` or `}`: the hash tag is the workspace's.
   * @default 'credits:'
   */
  keyPrefix?: string;
}

/** Connect to a Redis URL; the store owns (and closes) the client it creates. */
export interface RedisStorageUrlOptions extends RedisStorageBaseOptions {
  /** A `redis://` or `rediss://` URL of one node, as accepted by ioredis. */
  url: string;
  /**
   * Batch the commands issued in one event-loop tick into one write (ioredis
   * `enableAutoPipelining`). Raises throughput under concurrency at no cost when idle.
   * @default true
   */
  autoPipelining?: boolean;
}

/** Use an existing client, e.g. an ioredis `Cluster`; the store never closes it. */
export interface RedisStorageClientOptions extends RedisStorageBaseOptions {
  /** A client such as `new Redis(url)` or `new Cluster([{ host, port }])` from ioredis. */
  client: RedisClientLike;
}

/** How to construct a {@link RedisStorage}: from a URL or around an existing client. */
export type RedisStorageOptions = RedisStorageUrlOptions | RedisStorageClientOptions;

/** The key layout this version writes, kept under `<prefix>schema`. 0.1.0 wrote 1 or 2. */
const LAYOUT = '3';
/** Rows per call when usage reads the rows of a window's part days; workspaces per round when listing. */
const PAGE = 1000;
/** Rollup groups; a hash's name ends in the first letter, as `UsageQuery.groupBy` does. */
const GROUPS = ['agentId', 'model', 'conversationId'] as const;
/** What the load script answers: version, state JSON, records asked for, lapsed records, earliest hold. */
type LoadReply = [string | null, string | null, (string | null)[], (string | null)[], string | null];
type Script = { readonly source: string; readonly sha: string };
const script = (source: string): Script => ({ source, sha: createHash('sha1').update(source).digest('hex') });
const SCRIPTS = {
  load: script(LOAD),
  commit: script(COMMIT),
  ledger: script(LEDGER),
  usage: script(USAGE),
  migrate: script(MIGRATE),
  erase: script(ERASE),
};

type IoredisConstructor = new (
  url: string,
  options: Record<string, unknown>,
) => RedisClientLike & { on(event: 'error', listener: () => void): unknown };

/**
 * A {@link CreditStorage} on Redis, single node or Redis Cluster. A workspace is a handful of
 * keys under one hash tag, so they live on one cluster node: its state document and version,
 * its records with an index of open holds, its ledger with an index by time, and per-day
 * usage rollups. `load` and `commit` are one Lua script call each; the commit script checks
 * the version and writes, nothing more: every credit rule is the core's.
 *
 * Run Redis with AOF (`appendonly yes`) for charges to survive a restart. `ioredis` is an
 * optional peer dependency, loaded on first use when you pass a `url`.
 *
 * @example
 * ```ts
 * import { CreditMeter } from '@bookbag/credits';
 * import { RedisStorage } from '@bookbag/credits/redis';
 *
 * const storage = new RedisStorage({ url: process.env.REDIS_URL! });
 * const meter = new CreditMeter({ storage });
 * // or on a cluster: new RedisStorage({ client: new Cluster([{ host, port }]) })
 * ```
 */
export class RedisStorage implements CreditStorage {
  /** The key prefix in use. */
  readonly keyPrefix: string;
  readonly #url: string | undefined;
  readonly #autoPipelining: boolean;
  #client: RedisClientLike | undefined;
  #connecting: Promise<RedisClientLike> | undefined;
  #closed = false;

  constructor(options: RedisStorageOptions) {
    this.keyPrefix = options.keyPrefix ?? 'credits:';
    if (/[{}]/.test(this.keyPrefix)) throw new TypeError('RedisStorage keyPrefix may not contain { or }: the hash tag is the workspace id');
    const url = 'client' in options ? undefined : options.url;
    if (!('client' in options) && (typeof url !== 'string' || url === '')) {
      throw new TypeError('RedisStorage needs { url } (a redis:// URL) or { client } (an ioredis Redis or Cluster)');
    }
    this.#client = 'client' in options ? options.client : undefined;
    this.#url = url;
    this.#autoPipelining = 'client' in options ? false : (options.autoPipelining ?? true);
  }

  /**
   * Writes the layout version under `<prefix>schema` and refuses a prefix that holds data
   * of the 0.1.0 layout, which this version cannot read. Idempotent.
   */
  async migrate(): Promise<void> {
    const found = String(await this.#run('migrate', [`${this.keyPrefix}schema`], [LAYOUT]));
    if (found === LAYOUT) return;
    const why =
      found === '1' || found === '2'
        ? `keys under prefix '${this.keyPrefix}' use the key layout ${found} of @bookbag/credits 0.1.x, which this version cannot read: ` +
          'start this version on a new keyPrefix (and re-create workspaces there), or keep 0.1.x for that data'
        : `keys under prefix '${this.keyPrefix}' use key layout ${found}, not ${LAYOUT}: a newer @bookbag/credits wrote them`;
    throw new StorageError('migrate', new Error(why), 'redis');
  }

  /** Quits the client if this store created it (from a `url`); a passed-in client stays open. */
  async close(): Promise<void> {
    this.#closed = true;
    const connecting = this.#connecting;
    this.#connecting = undefined;
    if (this.#url === undefined || !connecting) return;
    try {
      await (await connecting).quit();
    } catch {
      // Never connected or already gone: nothing to release.
    }
  }

  async load(request: LoadRequest): Promise<LoadedWorkspace> {
    const k = this.#keys(request.workspaceId);
    const reply = (await this.#run('load', [k.state, k.records, k.holds], [String(request.now), ...request.keys])) as LoadReply;
    return {
      version: reply[0] === null ? 0 : Number(reply[0]),
      state: reply[1] === null ? null : (JSON.parse(reply[1]) as WorkspaceState),
      records: parseRecords(reply[2]),
      lapsed: parseRecords(reply[3]),
      nextLapseAt: reply[4] === null ? null : Number(reply[4]),
    };
  }

  async commit(commits: readonly WorkspaceCommit[]): Promise<CommitResult[]> {
    // One script per workspace, all sent at once: on a cluster each goes to its own node.
    return Promise.all(
      commits.map(async (commit) => {
        const { keys, args } = this.#commitCall(commit);
        return Number(await this.#run('commit', keys, args)) === 1 ? 'committed' : 'conflict';
      }),
    );
  }

  async ledger(query: LedgerQuery): Promise<LedgerRow[]> {
    if (query.limit <= 0) return [];
    const k = this.#keys(query.workspaceId);
    const rows = (await this.#run(
      'ledger',
      [k.state, k.ledger, k.at],
      [
        String(query.afterSeq ?? 0),
        query.from === undefined ? '' : String(query.from),
        query.to === undefined ? '' : String(query.to),
        query.agentId === undefined ? '' : `=${query.agentId}`,
        query.kinds === undefined ? '' : `,${query.kinds.join(',')},`,
        String(query.limit),
      ],
    )) as string[];
    return rows.map((row) => JSON.parse(row) as LedgerRow);
  }

  /**
   * Sums whole UTC days from the rollups the commit keeps, and reads rows only for the part
   * days at the window's two edges: the cost follows the days in the window, not the rows.
   */
  async usage(query: UsageQuery): Promise<UsageAggregate[]> {
    const k = this.#keys(query.workspaceId);
    const { from, to } = query;
    const first = dayOf(from) === from ? from : dayOf(from) + DAY_MS;
    const last = dayOf(to);
    // Whole days [first, last); edges [from, first) and [last, to). No whole day: one edge.
    const whole = first < last;
    // The script reads only the whole days' rollups; the edges' rows are paged through `ledger`,
    // a short script per page, so a busy edge day never blocks Redis for long.
    const days = whole
      ? ((await this.#run('usage', [k.days], [`${k.base}day:`, query.groupBy[0]!, String(first), String(last)])) as (string | string[])[])
      : [];
    const edge = new UsageAccumulator(query.groupBy, query.byDay);
    const edges: [number, number][] = whole
      ? [
          [from, first],
          [last, to],
        ]
      : [[from, to]];
    for (const [start, end] of edges) {
      let afterSeq = 0;
      for (let page: LedgerRow[] = []; ; afterSeq = page[page.length - 1]!.seq) {
        page = await this.ledger({ workspaceId: query.workspaceId, from: start, to: end, kinds: ['reply'], limit: PAGE, afterSeq });
        for (const row of page) edge.add(row);
        if (page.length < PAGE) break;
      }
    }
    const totals = new Map<string, UsageAggregate>();
    const add = (key: string, day: number, amount: number, replies: number) => {
      const id = query.byDay ? `${day}\u0000${key}` : key;
      const group = totals.get(id) ?? (query.byDay ? { key, day, amount: 0, replies: 0 } : { key, amount: 0, replies: 0 });
      group.amount += amount;
      group.replies += replies;
      totals.set(id, group);
    };
    for (let i = 0; i < days.length; i += 2) {
      // Fields `s<key>` (micro-credits) and `n<key>` (replies), in any order.
      const fields = days[i + 1] as string[];
      for (let j = 0; j < fields.length; j += 2) {
        const [field, value] = [fields[j]!, Number(fields[j + 1])];
        add(field.slice(1), Number(days[i]), field[0] === 's' ? value : 0, field[0] === 'n' ? value : 0);
      }
    }
    for (const group of edge.totals()) add(group.key, group.day ?? 0, group.amount, group.replies);
    return [...totals.values()].sort((a, b) => (a.day ?? 0) - (b.day ?? 0) || (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
  }

  // ─── internals ──────────────────────────────────────────────────────────

  /**
   * A workspace's keys: `<prefix>{<workspaceId>}:<name>`. `%`, `{` and `}` in the id are
   * percent-encoded, so the tag is always exactly the whole workspace id and two ids never
   * share keys.
   */
  /**
   * Every workspace with a state: each master is scanned for state keys, so a page costs a
   * pass over the keyspace (no store-wide index, which a cluster could not keep atomically).
   */
  async listWorkspaces(query: ListQuery): Promise<string[]> {
    try {
      const client = this.#client ?? (await this.#connect());
      const nodes = client.nodes ? client.nodes('master') : [client];
      const pattern = `${this.keyPrefix.replace(/[*?[\]\\]/g, (c) => `\\${c}`)}{*}:state`;
      const ids = new Set<string>();
      for (const node of nodes) {
        if (!node.scan) throw new Error('the Redis client has no scan()');
        let cursor = '0';
        do {
          const [next, keys] = await node.scan(cursor, 'MATCH', pattern, 'COUNT', 1000);
          cursor = next;
          for (const key of keys) ids.add(decodeURIComponent(key.slice(this.keyPrefix.length + 1, -'}:state'.length)));
        } while (cursor !== '0');
      }
      const candidates = [...ids].filter((id) => query.afterId === undefined || id > query.afterId).sort();
      // An erased workspace keeps its state hash for the version alone: list those with a state document.
      const listed: string[] = [];
      for (let i = 0; i < candidates.length && listed.length < query.limit; i += PAGE) {
        const page = candidates.slice(i, i + PAGE);
        const states = await Promise.all(
          page.map((id) => {
            const k = this.#keys(id);
            return this.#run('load', [k.state, k.records, k.holds], ['-inf']) as Promise<LoadReply>;
          }),
        );
        listed.push(...page.filter((_, j) => states[j]![1] !== null));
      }
      return listed.slice(0, query.limit);
    } catch (error) {
      throw error instanceof StorageError ? error : new StorageError('listWorkspaces', error, 'redis');
    }
  }

  /** One script on the workspace's node; keeping the ledger rewrites its rows and rollups without agent and conversation ids. */
  async erase(request: EraseRequest): Promise<void> {
    const k = this.#keys(request.workspaceId);
    const keys = [k.state, k.records, k.holds, k.ledger, k.at, k.days];
    if (!request.keepLedger) {
      await this.#run('erase', keys, [k.base, '0']);
      return;
    }
    for (let attempt = 0; attempt < 16; attempt++) {
      const [version] = (await this.#run('load', [k.state, k.records, k.holds], ['-inf'])) as LoadReply;
      const rows = (await this.ledger({ workspaceId: request.workspaceId, limit: Number.MAX_SAFE_INTEGER })).map((row) => ({
        ...row,
        agentId: null,
        conversationId: null,
      }));
      const args = [k.base, '1', version ?? '0', String(rows.length)];
      for (const row of rows) args.push(String(row.seq).padStart(16, '0'), JSON.stringify(row));
      const rollups = new Map<string, UsageAccumulator>();
      for (const row of rows) {
        for (const g of ['a', 'c']) {
          const name = `${k.base}day:${dayOf(row.at)}:${g}`;
          // Every row's agent and conversation are now null, so both rollups sum under ''.
          const sum = rollups.get(name) ?? new UsageAccumulator('agent', false);
          rollups.set(name, sum);
          sum.add(row);
        }
      }
      for (const [name, sum] of rollups) {
        const totals = sum.totals();
        if (totals.length === 0) continue;
        args.push(name, String(2 * totals.length));
        for (const total of totals) args.push(`s${total.key}`, String(total.amount), `n${total.key}`, String(total.replies));
      }
      if ((await this.#run('erase', keys, args)) === 1) return;
    }
    throw new StorageError('erase', new Error('the workspace kept changing; try again'), 'redis');
  }

  #keys(workspaceId: string) {
    const base = `${this.keyPrefix}{${workspaceId.replace(/[%{}]/g, (c) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`)}}:`;
    const at = `${base}at`;
    return {
      base,
      state: `${base}state`,
      records: `${base}records`,
      holds: `${base}holds`,
      ledger: `${base}ledger`,
      at,
      days: `${base}days`,
    };
  }

  #commitCall(commit: WorkspaceCommit): { keys: string[]; args: string[] } {
    const k = this.#keys(commit.workspaceId);
    const { records, ledger: rows } = commit;
    const args = [String(commit.expectedVersion), String(commit.expectedVersion + 1), JSON.stringify(commit.state)];
    const group = (items: readonly string[], width: number) => {
      args.push(String(items.length / width));
      for (const item of items) args.push(item);
    };
    group(commit.absentKeys ?? [], 1);
    group(
      records.flatMap((r) => [r.key, JSON.stringify(r)]),
      2,
    );
    group(
      records.flatMap((r) => (r.holdExpiresAt === null ? [] : [String(r.holdExpiresAt), r.key])),
      2,
    );
    group(
      records.flatMap((r) => (r.holdExpiresAt === null ? [r.key] : [])),
      1,
    );
    const seqs = rows.map((row) => String(row.seq).padStart(16, '0'));
    group(
      rows.flatMap((row, i) => [seqs[i]!, JSON.stringify(row)]),
      2,
    );
    group(
      rows.flatMap((row, i) => [String(row.at), seqs[i]!]),
      2,
    );
    // Usage rollups: per UTC day and group, micro-credits and replies of the `reply` rows.
    const rollups = new Map<string, Map<string, [number, number]>>();
    let day = Number.NaN;
    let hashes: Map<string, [number, number]>[] = [];
    let ordered = true;
    for (const [i, row] of rows.entries()) {
      if (i > 0 && row.at < rows[i - 1]!.at) ordered = false;
      if (row.kind !== 'reply') continue;
      if (dayOf(row.at) !== day) {
        day = dayOf(row.at);
        hashes = GROUPS.map((field) => {
          const name = `${k.base}day:${day}:${field[0]}`;
          const hash = rollups.get(name) ?? new Map<string, [number, number]>();
          rollups.set(name, hash);
          return hash;
        });
      }
      for (const [g, field] of GROUPS.entries()) {
        const key = row[field] ?? '';
        const sum = hashes[g]!.get(key);
        if (sum) {
          sum[0] -= row.amount;
          sum[1] += 1;
        } else hashes[g]!.set(key, [-row.amount, 1]);
      }
    }
    const days = new Set([...rollups.keys()].map((name) => name.slice(k.base.length + 4, -2)));
    group(
      [...days].flatMap((d) => [d, d]),
      2,
    );
    const last = rows[rows.length - 1];
    args.push(last ? String(rows[0]!.at) : '', last ? String(last.at) : '', last ? String(last.seq) : '', ordered ? '1' : '0');
    for (const sums of rollups.values()) {
      args.push(String(2 * sums.size));
      for (const [key, [amount, replies]] of sums) args.push(`s${key}`, String(amount), `n${key}`, String(replies));
    }
    return { keys: [k.state, k.records, k.holds, k.ledger, k.at, k.days, ...rollups.keys()], args };
  }

  /** Runs a script by SHA, re-sending its source when the node does not have it cached. */
  async #run(name: keyof typeof SCRIPTS, keys: string[], args: string[]): Promise<unknown> {
    const { sha, source } = SCRIPTS[name];
    try {
      const client = this.#client ?? (await this.#connect());
      try {
        return await client.evalsha(sha, keys.length, ...keys, ...args);
      } catch (error) {
        // NOSCRIPT: nothing ran, so sending the source is safe.
        if (!(error instanceof Error && error.message.startsWith('NOSCRIPT'))) throw error;
        return await client.eval(source, keys.length, ...keys, ...args);
      }
    } catch (error) {
      throw error instanceof StorageError ? error : new StorageError(name, error, 'redis');
    }
  }

  #connect(): Promise<RedisClientLike> {
    if (this.#closed) return Promise.reject(new StorageError('connect', new Error('the store is closed'), 'redis'));
    this.#connecting ??= this.#open();
    return this.#connecting;
  }

  async #open(): Promise<RedisClientLike> {
    const Redis = await loadIoredis();
    const client = new Redis(this.#url ?? '', { enableAutoPipelining: this.#autoPipelining, maxRetriesPerRequest: 3 });
    // Errors surface through the commands that fail; an unhandled 'error' event would crash.
    client.on('error', () => undefined);
    return client;
  }
}

function parseRecords(values: readonly (string | null)[]): StoredRecord[] {
  return values.flatMap((value) => (value === null ? [] : [JSON.parse(value) as StoredRecord]));
}

async function loadIoredis(): Promise<IoredisConstructor> {
  let module: { Redis?: unknown; default?: unknown };
  try {
    module = (await import('ioredis')) as { Redis?: unknown; default?: unknown };
  } catch (error) {
    const hint = 'RedisStorage with { url } needs the optional peer dependency ioredis: run `npm install ioredis@5`, or pass { client }';
    throw new StorageError('connect', new Error(hint, { cause: error }), 'redis');
  }
  const candidate = module.Redis ?? (module.default as { Redis?: unknown } | undefined)?.Redis ?? module.default;
  if (typeof candidate !== 'function')
    throw new StorageError('connect', new Error('the installed ioredis exports no Redis client class'), 'redis');
  return candidate as IoredisConstructor;
}

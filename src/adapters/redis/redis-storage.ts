import { StorageError } from '../../core/errors.js';
import type { LedgerRow, StoredRecord, WorkspaceState } from '../../core/state.js';
import { DAY_MS, dayOf, UsageAccumulator } from '../../core/usage-aggregate.js';
import { importOptionalPeer } from '../../storage/optional-peer.js';
import * as packing from '../../storage/packing.js';
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
import { checkOptions, type OptionChecks } from '../../storage/store-options.js';
import { versionAfter } from '../../storage/version-after.js';
import { commit, erase, ledger, load, migrate, usage } from './redis-scripts.js';

const SCRIPTS = { load, commit, ledger, usage, migrate, erase };

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
  client?: never;
}

/** Use an existing client, e.g. an ioredis `Cluster`; the store never closes it. */
export interface RedisStorageClientOptions extends RedisStorageBaseOptions {
  /** A client such as `new Redis(url)` or `new Cluster([{ host, port }])` from ioredis. */
  client: RedisClientLike;
  url?: never;
  autoPipelining?: never;
}

/** How to construct a {@link RedisStorage}: from a URL or around an existing client. */
export type RedisStorageOptions = RedisStorageUrlOptions | RedisStorageClientOptions;

/** The key layout this version writes, kept under `<prefix>schema`. 0.1.0 wrote 1 or 2. */
const LAYOUT = '3';
/** Rows per call when usage reads the rows of a window's part days; workspaces per round when listing. */
const PAGE = 1000;
/** What the load script answers: version, state JSON, records asked for, lapsed records, earliest hold. */
type LoadReply = [string | null, string | null, (string | null)[], (string | null)[], string | null];
/** A ledger seq as the ledger hash and the time index hold it: 16 zero-padded digits, so they sort as text. */
const pad = (seq: number) => String(seq).padStart(16, '0');

type IoredisConstructor = new (url: string, options: object) => RedisClientLike & { on(event: 'error', listener: () => void): unknown };

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
  /** What to connect to when the store makes (and owns) its client. */
  readonly #own: { url: string; autoPipelining: boolean } | undefined;
  #client: RedisClientLike | undefined;
  #connecting: Promise<RedisClientLike> | undefined;
  #closed = false;

  constructor(options: RedisStorageOptions) {
    checkOptions<RedisStorageOptions>(options, CHECKS, ['url', 'client']);
    this.keyPrefix = options.keyPrefix ?? 'credits:';
    if (options.client === undefined) this.#own = { url: options.url, autoPipelining: options.autoPipelining ?? true };
    else this.#client = options.client;
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
    // A failure means it never connected or is already gone: nothing to release.
    if (this.#own) await connecting?.then((client) => client.quit()).catch(() => undefined);
  }

  async load(request: LoadRequest): Promise<LoadedWorkspace> {
    const k = this.#keys(request.workspaceId);
    const reply = (await this.#run('load', [k.state, k.records, k.holds], [String(request.now), ...request.keys])) as LoadReply;
    const [version, state, records, lapsed, earliest] = reply;
    return {
      version: Number(version ?? 0),
      state: state === null ? null : (JSON.parse(state) as WorkspaceState),
      records: parseRecords(records),
      lapsed: parseRecords(lapsed),
      nextLapseAt: earliest === null ? null : Number(earliest),
    };
  }

  async commit(commits: readonly WorkspaceCommit[]): Promise<CommitResult[]> {
    // One script per workspace, all sent at once: on a cluster each goes to its own node.
    return Promise.all(
      commits.map(async (commit) => (Number(await this.#run('commit', ...this.#commitCall(commit))) === 1 ? 'committed' : 'conflict')),
    );
  }

  async ledger(query: LedgerQuery): Promise<LedgerRow[]> {
    const k = this.#keys(query.workspaceId);
    const { afterSeq = 0, from = '', to = '', agentId, kinds, limit } = query;
    const args = [afterSeq, from, to, agentId === undefined ? '' : `=${agentId}`, kinds === undefined ? '' : `,${kinds.join(',')},`, limit];
    const rows = (await this.#run('ledger', [k.state, k.ledger, k.at], args.map(String))) as string[];
    return rows.map((row) => packing.unpackLedgerRow(JSON.parse(row) as packing.PackedLedgerRow, query.workspaceId));
  }

  /**
   * Sums whole UTC days from the rollups the commit keeps, in one script, and reads rows only for
   * the part days at the window's two edges: the cost follows the days in the window, not the rows.
   */
  async usage(query: UsageQuery): Promise<UsageAggregate[]> {
    const { from, to, groupBy, byDay } = query;
    // Whole days [first, last), part days [from, first) and [last, to); with no whole day between, first = last.
    const first = Math.min(dayOf(from + DAY_MS - 1), to);
    const last = Math.max(dayOf(to), first);
    const sums = new UsageAccumulator(groupBy, byDay);
    const k = this.#keys(query.workspaceId);
    const sum = () => this.#run('usage', [k.days, k.state], [k.day, groupBy[0]!, String(first), String(last), String(to)]);
    const [lastDayWhole, days] = (first < to ? await sum() : [0, []]) as [number, [string, string[]][]];
    // Fields `s<key>` (micro-credits) and `n<key>` (replies), in any order, and the commit's `~` marker.
    for (const [day, fields] of days) {
      for (let j = 0; j < fields.length; j += 2) {
        const [field, value] = [fields[j]!, Number(fields[j + 1])];
        if (field !== '~') sums.merge(field.slice(1), Number(day), field[0] === 's' ? value : 0, field[0] === 'n' ? value : 0);
      }
    }
    // The part days' rows are paged through `ledger`, a short script per page, so a busy day never blocks Redis for long.
    const addRows = async (start: number, end: number) => {
      for (let afterSeq = 0; start < end; ) {
        const page = await this.ledger({ workspaceId: query.workspaceId, from: start, to: end, kinds: ['reply'], limit: PAGE, afterSeq });
        for (const row of page) sums.add(row);
        if (page.length < PAGE) break;
        afterSeq = page[page.length - 1]!.seq;
      }
    };
    await addRows(from, first);
    if (lastDayWhole !== 1) await addRows(last, to);
    return sums.totals();
  }

  /**
   * Every workspace with a state document: each master is scanned for state keys, so a page costs
   * a pass over the keyspace (no store-wide index, which a cluster could not keep atomically).
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
        const loaded = await Promise.all(page.map((workspaceId) => this.load({ workspaceId, keys: [], now: Number.MIN_SAFE_INTEGER })));
        listed.push(...page.filter((_, j) => loaded[j]!.state !== null));
      }
      return listed.slice(0, query.limit);
    } catch (error) {
      throw error instanceof StorageError ? error : new StorageError('listWorkspaces', error, 'redis');
    }
  }

  /**
   * One script on the workspace's node. To keep the ledger, its rows are read here and sent back
   * without agent and conversation ids; the script refuses them if the version moved meanwhile.
   */
  async erase(request: EraseRequest): Promise<void> {
    const { workspaceId } = request;
    const k = this.#keys(workspaceId);
    for (let attempt = 0; attempt < 16; attempt++) {
      const args = [k.day, ''];
      if (request.keepLedger) {
        args[1] = String((await this.load({ workspaceId, keys: [], now: Number.MIN_SAFE_INTEGER })).version);
        for (const row of await this.ledger({ workspaceId, limit: Number.MAX_SAFE_INTEGER }))
          args.push(pad(row.seq), JSON.stringify(packing.packLedgerRow({ ...row, agentId: null, conversationId: null })));
      }
      if ((await this.#run('erase', [k.state, k.records, k.holds, k.ledger, k.at, k.days], args)) === 1) return;
    }
    throw new StorageError('erase', new Error('the workspace kept changing; try again'), 'redis');
  }

  // ─── internals ──────────────────────────────────────────────────────────

  /**
   * A workspace's keys: `<prefix>{<workspaceId>}:<name>`. `%`, `{` and `}` in the id are
   * percent-encoded, so the tag is always exactly the whole workspace id and two ids never
   * share keys. `day` prefixes the rollup hashes, `<day>:<group letter>`.
   */
  #keys(workspaceId: string) {
    const base = `${this.keyPrefix}{${workspaceId.replace(/[%{}]/g, (c) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`)}}:`;
    const [state, records, holds, ledger, at, days, day] = ['state', 'records', 'holds', 'ledger', 'at', 'days', 'day:'].map(
      (name) => base + name,
    );
    return { state: state!, records: records!, holds: holds!, ledger: ledger!, at: at!, days: days!, day: day! };
  }

  /** The keys and arguments of the commit script for one workspace. */
  #commitCall(commit: WorkspaceCommit): [keys: string[], args: string[]] {
    const k = this.#keys(commit.workspaceId);
    const { records, ledger: rows } = commit;
    // Usage rollups: per UTC day and group, what the `reply` rows add to micro-credits and replies.
    const rollups = new Map<string, string[]>();
    const days = new Set<string>();
    for (const groupBy of ['agent', 'model', 'conversation'] as const) {
      const sums = new UsageAccumulator(groupBy, true);
      for (const row of rows) sums.add(row);
      for (const { key, day, amount, replies } of sums.totals()) {
        const name = `${k.day}${day}:${groupBy[0]}`;
        if (!rollups.has(name)) rollups.set(name, []);
        rollups.get(name)!.push(`s${key}`, String(amount), `n${key}`, String(replies));
        days.add(String(day));
      }
    }
    const ordered = rows.every((row, i) => i === 0 || row.at >= rows[i - 1]!.at);
    const args = [String(commit.expectedVersion), String(versionAfter(commit)), JSON.stringify(commit.state), ordered ? '1' : '0'];
    // Pushed, not flatMapped: a pair array per record and row made the encoding a tenth slower.
    const [values, entries, seqs] = [[] as string[], [] as string[], rows.map((row) => pad(row.seq))];
    for (const r of records)
      values.push(r.key, JSON.stringify([r.key, r.holdExpiresAt, packing.packRecord(r.value)] satisfies RecordEntry));
    for (const [i, row] of rows.entries()) entries.push(seqs[i]!, JSON.stringify(packing.packLedgerRow(row)));
    for (const items of [
      commit.absentKeys ?? [],
      values,
      records.flatMap((r) => (r.holdExpiresAt === null ? [] : [String(r.holdExpiresAt), r.key])),
      records.flatMap((r) => (r.holdExpiresAt === null ? [r.key] : [])),
      entries,
      rows.flatMap((row, i) => [String(row.at), seqs[i]!]),
      [...days].flatMap((day) => [day, day]),
      ...rollups.values(),
    ]) {
      args.push(String(items.length), ...items);
    }
    return [[k.state, k.records, k.holds, k.ledger, k.at, k.days, ...rollups.keys()], args];
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
    this.#connecting ??= importOptionalPeer<IoredisConstructor>('ioredis', 'Redis', 'redis', 'or pass { client }').then((Redis) => {
      const client = new Redis(this.#own?.url ?? '', { enableAutoPipelining: this.#own?.autoPipelining, maxRetriesPerRequest: 3 });
      // Errors surface through the commands that fail; an unhandled 'error' event would crash.
      client.on('error', () => undefined);
      return client;
    });
    return this.#connecting;
  }
}

/** A record as the commit writes it: its value packed, its key and lapse time beside it for `load` to return. */
type RecordEntry = [key: string, holdExpiresAt: number | null, value: packing.PackedRecord | StoredRecord['value']];

/** Records as the commit writes them, or as whole objects (written before values were packed). */
function parseRecords(values: readonly (string | null)[]): StoredRecord[] {
  const stored = values.flatMap((value) => (value === null ? [] : [JSON.parse(value) as StoredRecord | RecordEntry]));
  return stored.map((r) => (Array.isArray(r) ? { key: r[0], holdExpiresAt: r[1], value: packing.unpackRecord(r[2]) } : r));
}

const CHECKS: OptionChecks<RedisStorageOptions> = {
  keyPrefix: (prefix) =>
    typeof prefix !== 'string'
      ? 'must be a string'
      : /[{}]/.test(prefix)
        ? 'may not contain { or }: the hash tag is the workspace id'
        : undefined,
  url: (url) => (typeof url === 'string' && url !== '' ? undefined : 'must be a non-empty redis:// URL'),
  autoPipelining: (on) => (typeof on === 'boolean' ? undefined : 'must be true or false'),
  client: (client) =>
    typeof (client as RedisClientLike).evalsha === 'function' ? undefined : 'must be an ioredis Redis or Cluster (with evalsha)',
};

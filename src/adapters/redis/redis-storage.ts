import { createHash } from 'node:crypto';
import { StorageError } from '../../core/errors.js';
import type {
  ChangePlanCommand,
  ChangePlanOutcome,
  ClaimAlertCommand,
  CreateWorkspaceCommand,
  CreateWorkspaceOutcome,
  CreditStorage,
  GrantCommand,
  GrantOutcome,
  LedgerQuery,
  LedgerRow,
  ReleaseCommand,
  ReleaseOutcome,
  RenewCommand,
  RenewOutcome,
  ReplyRecord,
  ReserveCommand,
  ReserveOutcome,
  SettleCommand,
  SettleOutcome,
  UsageAggregate,
  UsageQuery,
  WorkspaceState,
} from '../../storage/storage.js';
import {
  decodeGrant,
  decodeReply,
  decodeRow,
  decodeState,
  decodeWorkspace,
  encodeEntry,
  grantArgs,
  isEmptyHash,
  num,
  optNum,
  workspacePairs,
} from './redis-codec.js';
import { SCHEMA_VERSION, SCRIPTS, type ScriptName } from './redis-scripts.js';

/**
 * The few commands {@link RedisStorage} needs from a Redis client. An `ioredis` `Redis`
 * instance satisfies it; so does any client with the same four methods (a wrapper that adds
 * tracing, for example). Typed structurally so this package never depends on a driver.
 */
export interface RedisClientLike {
  /** `EVALSHA sha numkeys key... arg...`. */
  evalsha(sha: string, numkeys: number, ...args: string[]): Promise<unknown>;
  /** `EVAL script numkeys key... arg...`. */
  eval(script: string, numkeys: number, ...args: string[]): Promise<unknown>;
  /** `SCRIPT LOAD script`: caches a script so `evalsha` finds it. */
  script(subcommand: 'LOAD', script: string): Promise<unknown>;
  /** Closes the connection gracefully. */
  quit(): Promise<unknown>;
}

/** Options shared by both ways of constructing a {@link RedisStorage}. */
export interface RedisStorageBaseOptions {
  /**
   * Prefix of every key this store writes. Give each store (or each test) its own to keep
   * them apart on one server.
   * @default 'credits:'
   */
  keyPrefix?: string;
  /**
   * Gather the reserve, settle and release calls made on one workspace in the same
   * event-loop tick into one script call (group commit). Each call keeps its own outcome
   * and runs to completion before the next, exactly as if sent alone; the batch saves a
   * round trip and Redis' per-script overhead per call, and reads and writes the workspace
   * hash and its grants once for the whole batch. Turn off to send every call alone.
   * @default true
   */
  batching?: boolean;
}

/** Connect to a Redis URL; the store owns (and closes) the client it creates. */
export interface RedisStorageUrlOptions extends RedisStorageBaseOptions {
  /** A `redis://` or `rediss://` URL, as accepted by ioredis. */
  url: string;
  /**
   * Batch the commands issued in one event-loop tick into one write (ioredis
   * `enableAutoPipelining`). Raises throughput under concurrency at no cost when idle.
   * @default true
   */
  autoPipelining?: boolean;
}

/** Use an existing client; the store never closes it. */
export interface RedisStorageClientOptions extends RedisStorageBaseOptions {
  /** A connected client, e.g. `new Redis(url)` from ioredis. */
  client: RedisClientLike;
}

/** How to construct a {@link RedisStorage}: from a URL or around an existing client. */
export type RedisStorageOptions = RedisStorageUrlOptions | RedisStorageClientOptions;

/** The hot-path operations that may share one script call. */
type HotOperation = 'reserve' | 'settle' | 'release';

interface Pending {
  readonly name: HotOperation;
  readonly replyId: string;
  readonly args: string[];
  readonly resolve: (value: unknown) => void;
  readonly reject: (error: unknown) => void;
}

/** Most operations in one batch, so that one script never blocks Redis for long. */
const MAX_BATCH = 128;

interface Script {
  readonly source: string;
  readonly sha: string;
}

type IoredisConstructor = new (url: string, options: Record<string, unknown>) => RedisClientLike & {
  on(event: 'error', listener: (error: unknown) => void): unknown;
};

const SCRIPT_LIST = Object.fromEntries(
  Object.entries(SCRIPTS).map(([name, source]) => [name, { source, sha: createHash('sha1').update(source).digest('hex') }]),
) as Record<ScriptName, Script>;

/**
 * A {@link CreditStorage} on Redis. Each operation is one Lua script, so it is atomic
 * across every app server sharing the Redis; scripts are called by SHA (`EVALSHA`) and
 * re-sent (`EVAL`) when the server does not have them cached, e.g. after a restart.
 *
 * The ledger is kept in Redis too (a sorted set per workspace plus per-day usage rollups),
 * so run Redis with AOF (`appendonly yes`, `appendfsync everysec` or `always`) for charges
 * to survive a restart. Single-node Redis (optionally with replicas) is the supported
 * deployment: a workspace's keys share a cluster slot, but the ledger id counter and the
 * reply records are global keys.
 *
 * `ioredis` is an optional peer dependency, loaded on first use when you pass a `url`.
 *
 * @example
 * ```ts
 * import { CreditMeter } from '@bookbag/credits';
 * import { RedisStorage } from '@bookbag/credits/redis';
 *
 * const storage = new RedisStorage({ url: process.env.REDIS_URL! });
 * const meter = new CreditMeter({ storage });
 * // ...
 * await storage.close();
 * ```
 */
export class RedisStorage implements CreditStorage {
  /** The key prefix in use. */
  readonly keyPrefix: string;
  readonly #url: string | undefined;
  readonly #autoPipelining: boolean;
  readonly #batching: boolean;
  #queues = new Map<string, Pending[]>();
  #flushScheduled = false;
  #client: RedisClientLike | undefined;
  #connecting: Promise<RedisClientLike> | undefined;
  #migrated: Promise<void> | undefined;
  /** Set once migrated, so the hot path skips a promise chain. */
  #readyClient: RedisClientLike | undefined;
  #closed = false;

  constructor(options: RedisStorageOptions) {
    this.keyPrefix = options.keyPrefix ?? 'credits:';
    this.#batching = options.batching ?? true;
    if ('client' in options) {
      this.#client = options.client;
      this.#url = undefined;
      this.#autoPipelining = false;
    } else {
      if (typeof options.url !== 'string' || options.url === '') {
        throw new TypeError('RedisStorage needs { url } (a redis:// URL) or { client } (an ioredis client)');
      }
      this.#url = options.url;
      this.#autoPipelining = options.autoPipelining ?? true;
    }
  }

  /**
   * Caches every script on the server and records the schema version under
   * `<prefix>schema`. Idempotent; run automatically before the first operation.
   */
  async migrate(): Promise<void> {
    this.#migrated = undefined;
    this.#readyClient = undefined;
    await this.#ready();
  }

  /** Quits the client if this store created it (from a `url`); a passed-in client stays open. */
  async close(): Promise<void> {
    this.#closed = true;
    this.#readyClient = undefined;
    const connecting = this.#connecting;
    this.#connecting = undefined;
    if (this.#url === undefined || !connecting) return;
    try {
      const client = await connecting;
      await client.quit();
    } catch {
      // Never connected or already gone: nothing to release.
    }
  }

  async createWorkspace(command: CreateWorkspaceCommand): Promise<CreateWorkspaceOutcome> {
    const reply = (await this.#run('createWorkspace', command.workspace.workspaceId, undefined, [
      ...grantArgs(command.grant),
      encodeEntry(command.entry),
      num(command.entry.at),
      ...workspacePairs(command.workspace),
    ])) as [string, unknown?];
    if (reply[0] === 'exists') return { status: 'exists' };
    return { status: 'created', state: decodeState(reply[1]) };
  }

  async getWorkspace(workspaceId: string, now: number): Promise<WorkspaceState | undefined> {
    const reply = (await this.#run('getWorkspace', workspaceId, undefined, [workspaceId, num(now)])) as [string, unknown?];
    return reply[0] === 'found' ? decodeState(reply[1]) : undefined;
  }

  async reserve(command: ReserveCommand): Promise<ReserveOutcome> {
    const { reply: input } = command;
    const reply = (await this.#hot('reserve', input.workspaceId, input.replyId, [
      command.requireWorkspace ? '1' : '0',
      num(command.now),
      input.replyId,
      input.workspaceId,
      input.agentId,
      input.conversationId,
      input.model,
      input.route,
      num(input.amount),
      input.priceVersion,
      num(input.createdAt),
      num(input.expiresAt),
    ])) as [string, unknown?, string?, unknown?];
    switch (reply[0]) {
      case 'exists':
        return { status: 'exists', reply: decodeReply(reply[1]) };
      case 'workspace_not_found':
        return { status: 'workspace_not_found' };
      case 'renewal_due':
        return { status: 'renewal_due', workspace: decodeWorkspace(reply[1]) };
      case 'insufficient':
        return {
          status: 'insufficient',
          reply: decodeReply(reply[1]),
          available: Number(reply[2]),
          workspace: decodeWorkspace(reply[3]),
        };
      default:
        return { status: 'reserved', reply: decodeReply(reply[1]), available: Number(reply[2]) };
    }
  }

  async settle(command: SettleCommand): Promise<SettleOutcome> {
    const reply = (await this.#hot('settle', command.workspaceId, command.replyId, [
      command.workspaceId,
      num(command.now),
      command.replyId,
    ])) as [string, unknown?, unknown?, string?, unknown?];
    switch (reply[0]) {
      case 'not_found':
        return { status: 'not_found' };
      case 'settled':
        if (reply[2] === null || reply[2] === undefined) {
          throw new StorageError('settle', new Error(`ledger row of settled reply ${command.replyId} is missing`), 'redis');
        }
        return {
          status: 'settled',
          reply: decodeReply(reply[1]),
          entry: decodeRow(reply[2]),
          replayed: reply[3] === '1',
          workspace: isEmptyHash(reply[4]) ? null : decodeWorkspace(reply[4]),
        };
      default:
        return { status: reply[0] as 'expired' | 'released' | 'refused', reply: decodeReply(reply[1]) };
    }
  }

  async release(command: ReleaseCommand): Promise<ReleaseOutcome> {
    const reply = (await this.#hot('release', command.workspaceId, command.replyId, [
      command.workspaceId,
      num(command.now),
      command.replyId,
    ])) as [string, unknown?, string?];
    switch (reply[0]) {
      case 'not_found':
        return { status: 'not_found' };
      case 'released':
        return { status: 'released', reply: decodeReply(reply[1]), replayed: reply[2] === '1' };
      default:
        return { status: reply[0] as 'settled' | 'expired' | 'refused', reply: decodeReply(reply[1]) };
    }
  }

  async renew(command: RenewCommand): Promise<RenewOutcome> {
    const reply = (await this.#run('renew', command.workspaceId, undefined, [
      command.workspaceId,
      num(command.expectedVersion),
      num(command.rolloverCap),
      ...grantArgs(command.grant),
      encodeEntry(command.entry),
      num(command.entry.at),
      num(command.now),
      ...workspacePairs(command.workspace),
    ])) as [string, unknown?, string?, string?];
    switch (reply[0]) {
      case 'workspace_not_found':
        return { status: 'workspace_not_found' };
      case 'stale':
        return { status: 'stale', workspace: decodeWorkspace(reply[1]) };
      default:
        return { status: 'renewed', state: decodeState(reply[1]), expired: Number(reply[2]), carried: Number(reply[3]) };
    }
  }

  async changePlan(command: ChangePlanCommand): Promise<ChangePlanOutcome> {
    const reply = (await this.#run('changePlan', command.workspaceId, undefined, [
      command.workspaceId,
      num(command.expectedVersion),
      num(command.allotmentIncrease),
      encodeEntry(command.entry),
      num(command.entry.at),
      num(command.now),
      ...workspacePairs(command.workspace),
    ])) as [string, unknown?];
    switch (reply[0]) {
      case 'workspace_not_found':
        return { status: 'workspace_not_found' };
      case 'stale':
        return { status: 'stale', workspace: decodeWorkspace(reply[1]) };
      case 'overflow':
        return { status: 'overflow' };
      default:
        return { status: 'changed', state: decodeState(reply[1]) };
    }
  }

  async grant(command: GrantCommand): Promise<GrantOutcome> {
    const reply = (await this.#run('grant', command.workspaceId, undefined, [
      ...grantArgs(command.grant),
      encodeEntry(command.entry),
      num(command.entry.at),
    ])) as [string, unknown?, unknown?];
    switch (reply[0]) {
      case 'workspace_not_found':
        return { status: 'workspace_not_found' };
      case 'exists':
        return { status: 'exists', grant: decodeGrant(String(reply[1]), String(reply[2])) };
      case 'overflow':
        return { status: 'overflow' };
      default:
        return { status: 'granted', state: decodeState(reply[1]) };
    }
  }

  async claimAlert(command: ClaimAlertCommand): Promise<boolean> {
    const reply = await this.#run('claimAlert', command.workspaceId, undefined, [
      `${command.periodIndex}:${command.threshold}`,
    ]);
    return Number(reply) === 1;
  }

  async ledger(query: LedgerQuery): Promise<LedgerRow[]> {
    const reply = (await this.#run('ledger', query.workspaceId, undefined, [
      query.afterId ?? '',
      query.from === undefined ? '' : num(query.from),
      query.to === undefined ? '' : num(query.to),
      query.agentId ?? '',
      query.agentId === undefined ? '0' : '1',
      num(query.limit),
    ])) as unknown[];
    return reply.map(decodeRow);
  }

  async usage(query: UsageQuery): Promise<UsageAggregate[]> {
    const group = query.groupBy === 'agent' ? 'a' : query.groupBy === 'model' ? 'm' : 'c';
    const reply = (await this.#run('usage', query.workspaceId, undefined, [
      num(query.from),
      num(query.to),
      group,
      query.byDay ? '1' : '0',
    ])) as [string, string, string, string, string][];
    // Order of first appearance in the ledger, as the memory store reports it.
    const rows = reply.map(([key, day, amount, replies, first]) => ({ key, day: Number(day), amount: Number(amount), replies: Number(replies), first: Number(first) }));
    rows.sort((a, b) => a.first - b.first);
    return rows.map((row): UsageAggregate =>
      query.byDay
        ? { key: row.key, day: row.day, amount: row.amount, replies: row.replies }
        : { key: row.key, amount: row.amount, replies: row.replies },
    );
  }

  async getReply(replyId: string): Promise<ReplyRecord | undefined> {
    const client = this.#readyClient ?? (await this.#ready());
    const reply = await this.#eval(client, 'getReply', [this.#replyKey(replyId)], []);
    return reply === null || reply === undefined ? undefined : decodeReply(reply);
  }

  // ─── internals ──────────────────────────────────────────────────────────

  #base(workspaceId: string): string {
    return `${this.keyPrefix}{${workspaceId}}:`;
  }

  #replyKey(replyId: string): string {
    return `${this.keyPrefix}reply:${replyId}`;
  }

  /** Runs a workspace script: KEYS = [workspace hash, sequence, reply?], ARGV = [base, reply prefix, ...args]. */
  async #run(name: ScriptName, workspaceId: string, replyId: string | undefined, args: string[]): Promise<unknown> {
    const client = this.#readyClient ?? (await this.#ready());
    const base = this.#base(workspaceId);
    const keys = [`${base}w`, `${this.keyPrefix}seq`];
    if (replyId !== undefined) keys.push(this.#replyKey(replyId));
    return this.#eval(client, name, keys, [base, `${this.keyPrefix}reply:`, ...args]);
  }

  /** Queues a hot-path call for the next batch of its workspace (or runs it alone). */
  #hot(name: HotOperation, workspaceId: string, replyId: string, args: string[]): Promise<unknown> {
    if (!this.#batching) return this.#run(name, workspaceId, replyId, args);
    return new Promise((resolve, reject) => {
      const base = this.#base(workspaceId);
      let queue = this.#queues.get(base);
      if (!queue) {
        queue = [];
        this.#queues.set(base, queue);
      }
      queue.push({ name, replyId, args: [base, `${this.keyPrefix}reply:`, ...args], resolve, reject });
      if (!this.#flushScheduled) {
        this.#flushScheduled = true;
        // After the current microtasks: every caller woken by the same reply has queued by then.
        process.nextTick(() => this.#flush());
      }
    });
  }

  #flush(): void {
    this.#flushScheduled = false;
    const queues = this.#queues;
    this.#queues = new Map();
    for (const [base, queue] of queues) {
      for (let i = 0; i < queue.length; i += MAX_BATCH) void this.#flushBatch(base, queue.slice(i, i + MAX_BATCH));
    }
  }

  async #flushBatch(base: string, batch: Pending[]): Promise<void> {
    try {
      const client = this.#readyClient ?? (await this.#ready());
      const keys = [`${base}w`, `${this.keyPrefix}seq`];
      const [only] = batch;
      if (only && batch.length === 1) {
        only.resolve(await this.#eval(client, only.name, [...keys, this.#replyKey(only.replyId)], only.args));
        return;
      }
      const argv = [String(batch.length)];
      for (const call of batch) argv.push(call.name, String(call.args.length), ...call.args);
      const results = (await this.#eval(client, 'batch', keys, argv)) as unknown[];
      batch.forEach((call, i) => call.resolve(results[i]));
    } catch (error) {
      for (const call of batch) {
        call.reject(error instanceof StorageError && batch.length > 1 ? new StorageError(call.name, error.cause, 'redis') : error);
      }
    }
  }

  async #eval(client: RedisClientLike, name: ScriptName, keys: string[], args: string[]): Promise<unknown> {
    const script = SCRIPT_LIST[name];
    try {
      try {
        return await client.evalsha(script.sha, keys.length, ...keys, ...args);
      } catch (error) {
        if (!isNoScript(error)) throw error;
        return await client.eval(script.source, keys.length, ...keys, ...args);
      }
    } catch (error) {
      throw new StorageError(name, error, 'redis');
    }
  }

  /** The client, connected and migrated. */
  #ready(): Promise<RedisClientLike> {
    this.#migrated ??= this.#migrate();
    const migrated = this.#migrated;
    return migrated.then(
      async () => {
        const client = await this.#connect();
        if (this.#migrated === migrated) this.#readyClient = client;
        return client;
      },
      (error: unknown) => {
        // A failed migration is retried by the next call.
        if (this.#migrated === migrated) this.#migrated = undefined;
        throw error;
      },
    );
  }

  async #migrate(): Promise<void> {
    const client = await this.#connect();
    try {
      await Promise.all(Object.values(SCRIPT_LIST).map((script) => client.script('LOAD', script.source)));
    } catch (error) {
      throw new StorageError('migrate', error, 'redis');
    }
    await this.#eval(client, 'migrate', [`${this.keyPrefix}schema`], [String(SCHEMA_VERSION)]);
  }

  #connect(): Promise<RedisClientLike> {
    if (this.#client) return Promise.resolve(this.#client);
    if (this.#closed) return Promise.reject(new StorageError('connect', new Error('the store is closed'), 'redis'));
    this.#connecting ??= this.#open();
    return this.#connecting;
  }

  async #open(): Promise<RedisClientLike> {
    const Redis = await loadIoredis();
    const client = new Redis(this.#url ?? '', {
      enableAutoPipelining: this.#autoPipelining,
      maxRetriesPerRequest: 3,
    });
    // Errors surface through the commands that fail; an unhandled 'error' event would crash.
    client.on('error', () => undefined);
    if (this.#closed) {
      await client.quit().catch(() => undefined);
      throw new StorageError('connect', new Error('the store is closed'), 'redis');
    }
    this.#client = client;
    return client;
  }
}

async function loadIoredis(): Promise<IoredisConstructor> {
  let module: { Redis?: unknown; default?: unknown };
  try {
    module = (await import('ioredis')) as { Redis?: unknown; default?: unknown };
  } catch (error) {
    throw new StorageError(
      'connect',
      new Error('RedisStorage with { url } needs the optional peer dependency ioredis: run `npm install ioredis@5`, or pass { client }', {
        cause: error,
      }),
      'redis',
    );
  }
  const candidate = module.Redis ?? (module.default as { Redis?: unknown } | undefined)?.Redis ?? module.default;
  if (typeof candidate !== 'function') {
    throw new StorageError('connect', new Error('the installed ioredis exports no Redis client class'), 'redis');
  }
  return candidate as IoredisConstructor;
}

function isNoScript(error: unknown): boolean {
  return error instanceof Error && error.message.startsWith('NOSCRIPT');
}

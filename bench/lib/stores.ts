/**
 * One context per store: the credits storage under test and rate-limiter-flexible's
 * limiter on the same store (same process memory, same SQLite file, same PostgreSQL
 * server, same Redis or Redis Cluster, same MariaDB). Servers come from the test setup's
 * starters (`test/servers/`) unless the test setup's environment variable names one
 * (`DATABASE_URL`, `REDIS_URL`, `REDIS_CLUSTER_NODES`, `MYSQL_URL`).
 *
 * A context has an `address` so that child processes (bench/lib/worker.ts) can open their
 * own connection to the same store with {@link connect}.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { Cluster, Redis } from 'ioredis';
import mysql from 'mysql2';
import pg from 'pg';
import rateLimiterFlexible, { type RateLimiterAbstract, type RateLimiterStoreAbstract } from 'rate-limiter-flexible';
import { PostgresStorage } from '../../src/adapters/postgres/index.js';
import { RedisStorage } from '../../src/adapters/redis/index.js';
import { SqliteStorage } from '../../src/adapters/sqlite/index.js';
import { MemoryStorage } from '../../src/index.js';
import type { CreditStorage } from '../../src/storage/storage.js';
import { startMariaDb } from '../../test/servers/mariadb-server.js';
import { startPostgres } from '../../test/servers/postgres-server.js';
import { startRedisCluster } from '../../test/servers/redis-cluster.js';
import { startRedis } from '../../test/servers/redis-server.js';

const { RateLimiterMemory, RateLimiterMySQL, RateLimiterPostgres, RateLimiterRedis, RateLimiterSQLite } = rateLimiterFlexible;

export type StoreName = 'memory' | 'sqlite' | 'postgres' | 'redis' | 'redis-cluster' | 'mysql';
export const STORE_NAMES: readonly StoreName[] = ['memory', 'sqlite', 'postgres', 'redis', 'redis-cluster', 'mysql'];

/** Points high enough that the peer never rejects; a window long enough never to reset mid-run. */
const PEER_POINTS = 1e15;
const PEER_DURATION_S = 3600;
/** Connections per process to PostgreSQL and MariaDB (four processes stay well under the servers' limits). */
const POOL_SIZE = 10;

export type Peer = RateLimiterAbstract | RateLimiterStoreAbstract;

/** A store as one process sees it: our storage and the peer's limiter. */
export interface Connection {
  storage: CreditStorage;
  peer: Peer;
  close(): Promise<void>;
}

export interface StoreContext {
  name: StoreName;
  /** True for the stores that persist (the concurrent hot-workspace scenarios apply). */
  durable: boolean;
  /** Where child processes connect (see {@link connect}); '' for memory. */
  address: string;
  /** How the store is configured, for the report. */
  setup: string;
  /** How the peer is configured, for the report. */
  peerSetup: string;
  /**
   * The storage for a scenario. The memory store hands out a fresh instance per scenario
   * (so one scenario's millions of records do not slow the next one's collector); the
   * durable stores hand out their one shared instance.
   */
  storage(): CreditStorage;
  /** rate-limiter-flexible on the same store. */
  peer: Peer;
  close(): Promise<void>;
}

/** Why a store cannot be measured in this checkout (the MySQL store may not exist yet). */
export class StoreUnavailable extends Error {}

interface MySqlStorageModule {
  MySqlStorage: new (options: { uri: string; poolSize?: number }) => CreditStorage;
}

/** The MySQL store, loaded by path at run time: it is still being written, and bench/ must type-check without it. */
async function mysqlStorageModule(): Promise<MySqlStorageModule> {
  const path = '../../src/adapters/mysql/index.js';
  try {
    const module = (await import(path)) as Partial<MySqlStorageModule>;
    if (typeof module.MySqlStorage !== 'function') throw new Error('src/adapters/mysql/index.ts does not export MySqlStorage');
    return module as MySqlStorageModule;
  } catch (error) {
    throw new StoreUnavailable(
      `the MySQL store is not available in this checkout: ${error instanceof Error ? error.message.split('\n')[0] : String(error)}`,
    );
  }
}

/** Opens `name` for this process on an already running store. */
export async function connect(name: StoreName, address: string): Promise<Connection> {
  switch (name) {
    case 'memory': {
      const storage = new MemoryStorage();
      return { storage, peer: new RateLimiterMemory({ points: PEER_POINTS, duration: PEER_DURATION_S }), async close() {} };
    }
    case 'sqlite': {
      const db = new Database(address);
      db.pragma('journal_mode = WAL');
      db.pragma('synchronous = FULL');
      db.pragma('busy_timeout = 10000');
      const storage = new SqliteStorage({ database: db, synchronous: 'FULL' });
      await storage.migrate();
      const peer = await ready(
        (cb) =>
          new RateLimiterSQLite(
            { storeClient: db, storeType: 'better-sqlite3', tableName: 'rlflx', points: PEER_POINTS, duration: PEER_DURATION_S },
            cb,
          ),
      );
      return {
        storage,
        peer,
        async close() {
          await storage.close();
          db.close();
        },
      };
    }
    case 'postgres': {
      const pool = new pg.Pool({ connectionString: address, max: POOL_SIZE });
      pool.on('error', () => undefined);
      const storage = new PostgresStorage({ pool });
      await storage.migrate();
      const peer = await ready(
        (cb) =>
          new RateLimiterPostgres(
            { storeClient: pool, storeType: 'pool', tableName: 'rlflx', points: PEER_POINTS, duration: PEER_DURATION_S },
            cb,
          ),
      );
      return {
        storage,
        peer,
        async close() {
          await storage.close();
          await pool.end();
        },
      };
    }
    case 'redis': {
      const storage = new RedisStorage({ url: address });
      await storage.migrate();
      const client = new Redis(address, { enableAutoPipelining: true, maxRetriesPerRequest: 3 });
      client.on('error', () => undefined);
      const peer = new RateLimiterRedis({ storeClient: client, points: PEER_POINTS, duration: PEER_DURATION_S });
      return {
        storage,
        peer,
        async close() {
          await storage.close();
          await client.quit();
        },
      };
    }
    case 'redis-cluster': {
      const nodes = address.split(',').map((hostPort) => {
        const [host = '127.0.0.1', port = '6379'] = hostPort.trim().split(':');
        return { host, port: Number(port) };
      });
      const cluster = () => {
        const client = new Cluster(nodes, { enableAutoPipelining: true, redisOptions: { maxRetriesPerRequest: 3 } });
        client.on('error', () => undefined);
        return client;
      };
      const ours = cluster();
      const theirs = cluster();
      const storage = new RedisStorage({ client: ours });
      await storage.migrate();
      const peer = new RateLimiterRedis({ storeClient: theirs, points: PEER_POINTS, duration: PEER_DURATION_S });
      return {
        storage,
        peer,
        async close() {
          await storage.close();
          await Promise.all([ours.quit(), theirs.quit()]);
        },
      };
    }
    case 'mysql': {
      const { MySqlStorage } = await mysqlStorageModule();
      const storage = new MySqlStorage({ uri: address, poolSize: POOL_SIZE });
      await storage.migrate();
      // rate-limiter-flexible drives the callback API of mysql2 (storeType 'pool').
      const pool = mysql.createPool({ uri: address, connectionLimit: POOL_SIZE });
      const peer = await ready(
        (cb) =>
          new RateLimiterMySQL(
            { storeClient: pool, storeType: 'pool', dbName: 'credits', tableName: 'rlflx', points: PEER_POINTS, duration: PEER_DURATION_S },
            cb,
          ),
      );
      return {
        storage,
        peer,
        async close() {
          await storage.close();
          await new Promise<void>((resolve) => pool.end(() => resolve()));
        },
      };
    }
  }
}

export interface Server {
  address: string;
  stop(): Promise<void>;
}

/** Starts the server a store needs (or takes the one the environment names). */
export async function startServer(name: StoreName): Promise<Server> {
  const given = (variable: string): Server | undefined => {
    const value = process.env[variable];
    return value ? { address: value, stop: async () => {} } : undefined;
  };
  const started = (s: { url: string; stop(): Promise<void> }): Server => ({ address: s.url, stop: () => s.stop() });
  switch (name) {
    case 'memory':
      return { address: '', stop: async () => {} };
    case 'sqlite': {
      const dir = mkdtempSync(join(tmpdir(), 'credits-bench-sqlite-'));
      return { address: join(dir, 'bench.db'), stop: async () => rmSync(dir, { recursive: true, force: true }) };
    }
    case 'postgres':
      return given('DATABASE_URL') ?? started(await startPostgres());
    case 'redis':
      return given('REDIS_URL') ?? started(await startRedis());
    case 'redis-cluster': {
      const env = given('REDIS_CLUSTER_NODES');
      if (env) return env;
      const cluster = await startRedisCluster();
      return { address: cluster.nodes, stop: () => cluster.stop() };
    }
    case 'mysql':
      await mysqlStorageModule(); // fail before starting a server for a store that is not there
      return given('MYSQL_URL') ?? started(await startMariaDb());
  }
}

const SETUP: Record<StoreName, { setup: string; peerSetup: string }> = {
  memory: { setup: 'MemoryStorage, a fresh instance per scenario', peerSetup: 'RateLimiterMemory' },
  sqlite: {
    setup:
      'SqliteStorage on one better-sqlite3 connection per process to a file on local disk, WAL, synchronous=FULL (an fsync per commit)',
    peerSetup: 'RateLimiterSQLite (storeType better-sqlite3) on the same connection and file',
  },
  postgres: {
    setup: `PostgresStorage on a pg.Pool of ${POOL_SIZE} connections per process to a local PostgreSQL (test/servers: fsync on, synchronous_commit on)`,
    peerSetup: 'RateLimiterPostgres on the same pg.Pool',
  },
  redis: {
    setup: 'RedisStorage ({ url }: ioredis with auto-pipelining) against a local redis-server with AOF, appendfsync everysec',
    peerSetup: 'RateLimiterRedis (its Lua script) on its own ioredis client with auto-pipelining, same server',
  },
  'redis-cluster': {
    setup:
      'RedisStorage ({ client }: an ioredis Cluster with auto-pipelining) against a local Redis Cluster of three masters, AOF everysec',
    peerSetup:
      "RateLimiterRedis on its own ioredis Cluster (auto-pipelining), same cluster. rate-limiter-flexible supports an ioredis Cluster as the storeClient of RateLimiterRedis (one key per consume, so one slot); its RateLimiterCluster is something else: an in-memory limiter shared over the IPC of Node's cluster module, not Redis Cluster",
  },
  mysql: {
    setup: `MySqlStorage ({ uri }, a pool of ${POOL_SIZE} connections per process) against a local MariaDB (test/servers: InnoDB, default durability: flush the log at each commit)`,
    peerSetup: `RateLimiterMySQL on a mysql2 callback pool of ${POOL_SIZE} connections, same server and database`,
  },
};

/** Connects to `srv` (from {@link startServer}); the context's `close` stops the server too. */
export async function openStore(name: StoreName, srv: Server): Promise<StoreContext> {
  let connection: Connection;
  try {
    connection = await connect(name, srv.address);
  } catch (error) {
    await srv.stop();
    throw error;
  }
  const durable = name !== 'memory';
  return {
    name,
    durable,
    address: srv.address,
    ...SETUP[name],
    storage: durable ? () => connection.storage : () => new MemoryStorage(),
    peer: connection.peer,
    async close() {
      try {
        await connection.close();
      } finally {
        await srv.stop();
      }
    },
  };
}

/** Waits for a limiter whose constructor creates its table and reports through a callback. */
function ready<T>(make: (cb: (error?: unknown) => void) => T): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    let limiter: T | undefined;
    let done: { error?: unknown } | undefined;
    limiter = make((error?: unknown) => {
      done = { error };
      if (limiter !== undefined) error ? reject(error) : resolve(limiter);
    });
    if (done) done.error ? reject(done.error) : resolve(limiter);
  });
}

/**
 * Where a one-store script (`bench/profile.ts`, `bench/ledger-windows.ts`) finds its store: a
 * SQLite file in `dir`, or the server of `DATABASE_URL`, `REDIS_URL` or `MYSQL_URL`.
 */
export function addressFromEnv(store: StoreName, dir: string): string {
  const address: Partial<Record<StoreName, string | undefined>> = {
    memory: '',
    sqlite: join(dir, `${store}.db`),
    postgres: process.env.DATABASE_URL,
    redis: process.env.REDIS_URL,
    'redis-cluster': process.env.REDIS_CLUSTER_NODES,
    mysql: process.env.MYSQL_URL,
  };
  const at = address[store];
  if (at === undefined) throw new Error(`no address for ${store}: set DATABASE_URL, REDIS_URL, REDIS_CLUSTER_NODES or MYSQL_URL`);
  return at;
}

/**
 * One context per store: the credits storage under test and rate-limiter-flexible's
 * limiter on the same store (same process memory, same SQLite connection, same PostgreSQL
 * pool, same Redis server).
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { Redis } from 'ioredis';
import pg from 'pg';
import rateLimiterFlexible, { type RateLimiterAbstract, type RateLimiterStoreAbstract } from 'rate-limiter-flexible';
import { MemoryStorage } from '../../src/index.js';
import { PostgresStorage } from '../../src/adapters/postgres/index.js';
import { RedisStorage } from '../../src/adapters/redis/index.js';
import { SqliteStorage } from '../../src/adapters/sqlite/index.js';
import type { CreditStorage } from '../../src/storage/storage.js';
import { startPostgres } from '../../test/servers/postgres-server.js';
import { startRedis } from '../../test/servers/redis-server.js';

const { RateLimiterMemory, RateLimiterPostgres, RateLimiterRedis, RateLimiterSQLite } = rateLimiterFlexible;

export type StoreName = 'memory' | 'sqlite' | 'postgres' | 'redis';
export const STORE_NAMES: readonly StoreName[] = ['memory', 'sqlite', 'postgres', 'redis'];

/** Points high enough that the peer never rejects; a window long enough never to reset mid-run. */
const PEER_POINTS = 1e15;
const PEER_DURATION_S = 3600;

export interface StoreContext {
  name: StoreName;
  /** True for the stores that persist (the concurrent hot-workspace scenarios apply). */
  durable: boolean;
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
  peer: RateLimiterAbstract | RateLimiterStoreAbstract;
  close(): Promise<void>;
}

export async function openStore(name: StoreName): Promise<StoreContext> {
  switch (name) {
    case 'memory':
      return openMemory();
    case 'sqlite':
      return openSqlite();
    case 'postgres':
      return openPostgres();
    case 'redis':
      return openRedis();
  }
}

function openMemory(): StoreContext {
  return {
    name: 'memory',
    durable: false,
    setup: 'MemoryStorage, a fresh instance per scenario',
    peerSetup: 'RateLimiterMemory',
    storage: () => new MemoryStorage(),
    peer: new RateLimiterMemory({ points: PEER_POINTS, duration: PEER_DURATION_S }),
    async close() {},
  };
}

async function openSqlite(): Promise<StoreContext> {
  const dir = mkdtempSync(join(tmpdir(), 'credits-bench-sqlite-'));
  const db = new Database(join(dir, 'bench.db'));
  db.pragma('journal_mode = WAL');
  db.pragma('synchronous = FULL');
  const storage = new SqliteStorage({ database: db, synchronous: 'FULL' });
  await storage.migrate();
  const peer = await ready(
    (cb) => new RateLimiterSQLite({ storeClient: db, storeType: 'better-sqlite3', tableName: 'rlflx', points: PEER_POINTS, duration: PEER_DURATION_S }, cb),
  );
  return {
    name: 'sqlite',
    durable: true,
    setup: 'SqliteStorage on one better-sqlite3 connection to a file on local disk, WAL, synchronous=FULL (an fsync per commit), default group commit (up to 1,000 operations per transaction)',
    peerSetup: 'RateLimiterSQLite (storeType better-sqlite3) on the same connection and file',
    storage: () => storage,
    peer,
    async close() {
      await storage.close();
      db.close();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

async function openPostgres(): Promise<StoreContext> {
  const server = await startPostgres();
  const pool = new pg.Pool({ connectionString: server.url, max: 10 });
  pool.on('error', () => undefined);
  const storage = new PostgresStorage({ pool });
  await storage.migrate();
  const peer = await ready(
    (cb) => new RateLimiterPostgres({ storeClient: pool, storeType: 'pool', tableName: 'rlflx', points: PEER_POINTS, duration: PEER_DURATION_S }, cb),
  );
  return {
    name: 'postgres',
    durable: true,
    setup: 'PostgresStorage on a pg.Pool of 10 connections to a local PostgreSQL 15 (fsync on, synchronous_commit on), default group commit (up to 128 operations per transaction, 2 in flight)',
    peerSetup: 'RateLimiterPostgres on the same pg.Pool',
    storage: () => storage,
    peer,
    async close() {
      await storage.close();
      await pool.end();
      await server.stop();
    },
  };
}

async function openRedis(): Promise<StoreContext> {
  const server = await startRedis();
  const storage = new RedisStorage({ url: server.url });
  await storage.migrate();
  const client = new Redis(server.url, { enableAutoPipelining: true, maxRetriesPerRequest: 3 });
  client.on('error', () => undefined);
  const peer = new RateLimiterRedis({ storeClient: client, points: PEER_POINTS, duration: PEER_DURATION_S });
  return {
    name: 'redis',
    durable: true,
    setup: 'RedisStorage ({ url }: ioredis with auto-pipelining, per-workspace script batching on) against a local redis-server 7 with AOF, appendfsync everysec',
    peerSetup: 'RateLimiterRedis (its Lua script) on its own ioredis client with auto-pipelining, same server',
    storage: () => storage,
    peer,
    async close() {
      await storage.close();
      await client.quit();
      await server.stop();
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
      if (limiter !== undefined) (error ? reject(error) : resolve(limiter));
    });
    if (done) (done.error ? reject(done.error) : resolve(limiter));
  });
}

import { type DebianRequirement, ensureDebianPackages } from './apt.js';
import { chromiumRequirement, ensureChromium } from './chromium.js';
import { mariadbRequirement, startMariaDb } from './mariadb-server.js';
import { postgresRequirement, startPostgres } from './postgres-server.js';
import { startRedisCluster } from './redis-cluster.js';
import { redisRequirement, startRedis } from './redis-server.js';

/** Where the tests find their servers: what the global setup provides and `with-servers` exports. */
export interface ServerAddresses {
  /** PostgreSQL, database `credits` (`DATABASE_URL`). */
  postgresUrl: string;
  /** A single Redis node (`REDIS_URL`). */
  redisUrl: string;
  /** A Redis Cluster of three masters, as a comma-separated `host:port` list (`REDIS_CLUSTER_NODES`). */
  redisClusterNodes: string;
  /** MariaDB, database `credits`, user root with an empty password (`MYSQL_URL`). */
  mysqlUrl: string;
}

/** The environment variable that, when set, replaces each started server. */
export const SERVER_ENV = {
  postgresUrl: 'DATABASE_URL',
  redisUrl: 'REDIS_URL',
  redisClusterNodes: 'REDIS_CLUSTER_NODES',
  mysqlUrl: 'MYSQL_URL',
} as const satisfies Record<keyof ServerAddresses, string>;

interface ServerKind {
  readonly requirement: DebianRequirement;
  readonly start: () => Promise<{ readonly address: string; stop(): Promise<void> }>;
}

const KINDS: Record<keyof ServerAddresses, ServerKind> = {
  postgresUrl: { requirement: postgresRequirement, start: async () => withAddress(await startPostgres()) },
  redisUrl: { requirement: redisRequirement, start: async () => withAddress(await startRedis()) },
  redisClusterNodes: {
    requirement: redisRequirement,
    start: async () => {
      const cluster = await startRedisCluster();
      return { address: cluster.nodes, stop: () => cluster.stop() };
    },
  },
  mysqlUrl: { requirement: mariadbRequirement, start: async () => withAddress(await startMariaDb()) },
};

function withAddress(server: { url: string; stop(): Promise<void> }) {
  return { address: server.url, stop: () => server.stop() };
}

/** The servers, and Chromium when asked for, ready to use; `stop` stops what was started here. */
export interface ProvisionedServers extends ServerAddresses {
  /** Path of a Chromium that runs (only when provisioned with `chromium: true`). */
  chromiumPath?: string;
  stop(): Promise<void>;
}

/**
 * Provisions every server the tests need, on 127.0.0.1 in temp folders. A server whose
 * environment variable is set ({@link SERVER_ENV}) is used as given and not started. Missing
 * Debian packages are installed in one go first (see `ensureDebianPackages`). When any server
 * fails to start, the ones that did start are stopped and their folders removed.
 */
export async function provisionServers(options: { chromium?: boolean; env?: NodeJS.ProcessEnv } = {}): Promise<ProvisionedServers> {
  const env = options.env ?? process.env;
  const names = Object.keys(KINDS) as Array<keyof ServerAddresses>;
  const toStart = names.filter((name) => !env[SERVER_ENV[name]]);
  ensureDebianPackages([...toStart.map((name) => KINDS[name].requirement), ...(options.chromium ? [chromiumRequirement] : [])]);
  const chromiumPath = options.chromium ? ensureChromium() : undefined;
  const results = await Promise.allSettled(toStart.map((name) => KINDS[name].start()));
  const started = results.flatMap((result) => (result.status === 'fulfilled' ? [result.value] : []));
  const stop = async () => {
    await Promise.allSettled(started.map((server) => server.stop()));
  };
  const failures = results.flatMap((result, i) => (result.status === 'rejected' ? [`${toStart[i]}: ${String(result.reason)}`] : []));
  if (failures.length > 0) {
    await stop();
    throw new Error(`Test servers could not start:\n${failures.join('\n')}`);
  }
  const addresses = Object.fromEntries(
    names.map((name) => {
      const at = toStart.indexOf(name);
      return [name, at === -1 ? env[SERVER_ENV[name]] : (results[at] as PromiseFulfilledResult<{ address: string }>).value.address];
    }),
  ) as unknown as ServerAddresses;
  return { ...addresses, ...(chromiumPath !== undefined && { chromiumPath }), stop };
}

/** The environment variables that point a program at these servers. */
export function serverEnv(servers: ServerAddresses): Record<string, string> {
  return Object.fromEntries(Object.entries(SERVER_ENV).map(([name, variable]) => [variable, servers[name as keyof ServerAddresses]]));
}

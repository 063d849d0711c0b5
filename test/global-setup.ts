import type { TestProject } from 'vitest/node';
import { startPostgres } from './servers/postgres-server.js';
import { startRedis } from './servers/redis-server.js';

/**
 * Starts a real PostgreSQL and a real Redis on loopback for the whole run, in temporary
 * directories, and stops them after. Tests read their URLs from the provided context
 * (`inject('postgresUrl')`, `inject('redisUrl')`). A server that cannot start fails the run:
 * storage tests are never skipped silently.
 */
export default async function setup(project: TestProject): Promise<() => Promise<void>> {
  const [postgres, redis] = await Promise.all([startPostgres(), startRedis()]);
  project.provide('postgresUrl', postgres.url);
  project.provide('redisUrl', redis.url);
  return async () => {
    await Promise.allSettled([postgres.stop(), redis.stop()]);
  };
}

declare module 'vitest' {
  export interface ProvidedContext {
    postgresUrl: string;
    redisUrl: string;
  }
}

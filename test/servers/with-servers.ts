/**
 * Runs a command with a throwaway PostgreSQL and Redis on loopback, passing their URLs as
 * DATABASE_URL and REDIS_URL, then stops them. CI runs the examples this way.
 *
 *   npx tsx test/servers/with-servers.ts <command> [args...]
 */
import { spawnSync } from 'node:child_process';
import { startPostgres } from './postgres-server.js';
import { startRedis } from './redis-server.js';

const [command, ...args] = process.argv.slice(2);
if (!command) {
  console.error('usage: with-servers <command> [args...]');
  process.exit(2);
}
const [postgres, redis] = await Promise.all([startPostgres(), startRedis()]);
let status = 1;
try {
  const result = spawnSync(command, args, {
    stdio: 'inherit',
    env: { ...process.env, DATABASE_URL: postgres.url, REDIS_URL: redis.url },
  });
  status = result.status ?? 1;
} finally {
  await Promise.allSettled([postgres.stop(), redis.stop()]);
}
process.exit(status);

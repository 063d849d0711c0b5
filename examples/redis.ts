/**
 * A meter on Redis: a Hobby workspace, replies from two "app servers" (two meters, each
 * with its own connection) racing on one balance, then the balance, ledger and usage read
 * back. Every operation is one Lua script, so the servers never overspend.
 *
 *   REDIS_URL=redis://127.0.0.1:6379 npx tsx examples/redis.ts
 *
 * The example writes under a fresh key prefix and deletes nothing else.
 */
import { randomUUID } from 'node:crypto';
import { twoAppServers } from './shared/two-app-servers.js';
import { RedisStorage } from '../src/adapters/redis/index.js';

const url = process.env['REDIS_URL'];
if (!url) {
  console.log('Set REDIS_URL to run this example against a Redis server, e.g.');
  console.log('  REDIS_URL=redis://127.0.0.1:6379 npx tsx examples/redis.ts');
  process.exit(0);
}

const keyPrefix = `credits-example:${randomUUID()}:`;
const stores = [new RedisStorage({ url, keyPrefix }), new RedisStorage({ url, keyPrefix })] as const;
try {
  await twoAppServers(...stores);
} finally {
  await Promise.all(stores.map((storage) => storage.close()));
}

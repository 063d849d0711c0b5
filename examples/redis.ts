/**
 * A meter on Redis: a Hobby workspace, replies from two "app servers" (two meters, each
 * with its own connection) racing on one balance, then the balance, ledger and usage read
 * back. Each server loads the workspace and commits its changes in one Lua script that
 * checks the version it loaded, so the servers never overspend.
 *
 *   REDIS_URL=redis://127.0.0.1:6379 npx tsx examples/redis.ts
 *   REDIS_CLUSTER_NODES=127.0.0.1:7000,127.0.0.1:7001,127.0.0.1:7002 npx tsx examples/redis.ts
 *
 * The example writes under a fresh key prefix and deletes nothing else.
 */
import { randomUUID } from 'node:crypto';
import { Cluster } from 'ioredis';
import { RedisStorage } from '../src/adapters/redis/index.js';
import { twoAppServers } from './shared/two-app-servers.js';

const url = process.env['REDIS_URL'];
const clusterNodes = process.env['REDIS_CLUSTER_NODES'];
if (!url && !clusterNodes) {
  console.log('Set REDIS_URL (one node) or REDIS_CLUSTER_NODES (a Redis Cluster) to run this example, e.g.');
  console.log('  REDIS_URL=redis://127.0.0.1:6379 npx tsx examples/redis.ts');
  process.exit(0);
}

const keyPrefix = `credits-example:${randomUUID()}:`;
if (clusterNodes) {
  // A Redis Cluster: every key of a workspace shares its hash tag, so each script runs on one node.
  const nodes = clusterNodes.split(',').map((node) => ({ host: node.split(':')[0]!, port: Number(node.split(':')[1]) }));
  const clients = [new Cluster(nodes), new Cluster(nodes)] as const;
  try {
    await twoAppServers(new RedisStorage({ client: clients[0], keyPrefix }), new RedisStorage({ client: clients[1], keyPrefix }));
  } finally {
    await Promise.all(clients.map((client) => client.quit()));
  }
} else {
  const stores = [new RedisStorage({ url: url!, keyPrefix }), new RedisStorage({ url: url!, keyPrefix })] as const;
  try {
    await twoAppServers(...stores);
  } finally {
    await Promise.all(stores.map((storage) => storage.close()));
  }
}

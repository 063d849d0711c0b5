import { randomUUID } from 'node:crypto';
import { Cluster } from 'ioredis';
import { afterAll, inject } from 'vitest';
import { RedisStorage } from '../../src/adapters/redis/index.js';
import { runStorageConformance } from '../../src/testing/index.js';

// The whole kit on a three-master Redis Cluster through ioredis' Cluster; each case on its own prefix.
const nodes = inject('redisClusterNodes')
  .split(',')
  .map((node) => ({ host: node.split(':')[0]!, port: Number(node.split(':')[1]) }));
const cluster = new Cluster(nodes, { enableAutoPipelining: true });
afterAll(() => cluster.quit());

runStorageConformance({
  name: 'redis-cluster',
  create: () => new RedisStorage({ client: cluster, keyPrefix: `conformance:${randomUUID()}:` }),
});

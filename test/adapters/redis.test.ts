import { randomUUID } from 'node:crypto';
import { inject } from 'vitest';
import { RedisStorage } from '../../src/adapters/redis/index.js';
import { runStorageConformance } from '../../src/testing/index.js';

// Each case gets its own key prefix on the shared test server, so cases never see each other.
runStorageConformance({
  name: 'redis',
  create: () => new RedisStorage({ url: inject('redisUrl'), keyPrefix: `conformance:${randomUUID()}:` }),
});

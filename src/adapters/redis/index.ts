/**
 * The Redis store: `import { RedisStorage } from '@bookbag/credits/redis'`.
 *
 * @packageDocumentation
 */

export type {
  RedisClientLike,
  RedisStorageBaseOptions,
  RedisStorageClientOptions,
  RedisStorageOptions,
  RedisStorageUrlOptions,
} from './redis-storage.js';
export { RedisStorage } from './redis-storage.js';

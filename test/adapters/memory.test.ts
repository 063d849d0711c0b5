import { MemoryStorage } from '../../src/index.js';
import { runStorageConformance } from '../../src/testing/index.js';

runStorageConformance({
  name: 'memory',
  create: () => new MemoryStorage(),
});

/**
 * The whole kit again on a memory store that declares a small `maxCommitItems`: every case's
 * batches then go in several commits, and every case must still hold.
 */
class CappedMemoryStorage extends MemoryStorage {
  readonly maxCommitItems = 8;
}

runStorageConformance({
  name: 'memory, maxCommitItems 8',
  create: () => new CappedMemoryStorage(),
});

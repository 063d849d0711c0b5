import { MemoryStorage } from '../../src/index.js';
import { runStorageConformance } from '../../src/testing/index.js';

runStorageConformance({
  name: 'memory',
  create: () => new MemoryStorage(),
});

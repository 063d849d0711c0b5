/**
 * The storage conformance suite, from the built `./testing` entry, against the built memory
 * store: what an integrator runs against their own adapter. Both come through the package's
 * exports, as in a user's project.
 */
import type * as Credits from '../../src/index.js';
import type * as Testing from '../../src/testing/index.js';

const PACKAGE = '@bookbag/credits';
const { MemoryStorage } = (await import(PACKAGE)) as typeof Credits;
const { runStorageConformance } = (await import(`${PACKAGE}/testing`)) as typeof Testing;

runStorageConformance({
  name: 'memory (dist)',
  create: () => new MemoryStorage(),
});

/**
 * `@bookbag/credits/testing`: the storage conformance kit and a recording fake provider.
 * Needs vitest (a dev dependency of the project that runs it).
 *
 * @packageDocumentation
 */

export type { FakeProviderCall, FakeProviderOptions } from './fake-provider.js';
export { FakeProvider } from './fake-provider.js';
export type { ConformanceCase, ConformanceConcurrency, ConformanceContext, StorageConformanceOptions } from './fixtures.js';
export { CONFORMANCE_EPOCH } from './fixtures.js';
export { conformanceCases, runConformanceCase, runStorageConformance } from './runner.js';

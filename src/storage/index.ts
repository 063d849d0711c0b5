/**
 * `@bookbag/credits/storage`: what an adapter author needs. A store implements
 * {@link CreditStorage}: it keeps state documents, records and ledger rows, and commits them
 * atomically; every credit rule lives in the core. `docs/storage.md` walks through a
 * complete adapter, and `runStorageConformance` from `@bookbag/credits/testing` proves one.
 */
export { MemoryStorage } from './memory-storage.js';
export { compareGrants } from '../core/grants.js';
export { UsageAccumulator, dayOf, DAY_MS } from '../core/usage-aggregate.js';
export { MAX_MICROS, MICROS_PER_CREDIT, fromMicros, toMicros } from '../core/credits.js';
export { CreditsError, InvalidInputError, StorageError } from '../core/errors.js';

export type { CommitResult, CreditStorage, EraseRequest, LedgerQuery, ListQuery, LoadedWorkspace, LoadRequest, UsageAggregate, UsageQuery, WorkspaceCommit } from './storage.js';
export type {
  AccountState,
  Allocation,
  GrantKind,
  GrantState,
  LedgerKind,
  LedgerRow,
  ReplyRecord,
  ReplyStatus,
  Route,
  StoredRecord,
  TokenUsage,
  TopUpRecord,
  UsageGroupBy,
  WorkspaceState,
} from '../core/state.js';
export type { UsageTotals } from '../core/usage-aggregate.js';

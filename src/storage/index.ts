/**
 * `@bookbag/credits/storage`: what an adapter author needs. A store implements
 * {@link CreditStorage}: it keeps state documents, records and ledger rows, and commits them
 * atomically; every credit rule lives in the core. `docs/storage.md` walks through a
 * complete adapter, and `runStorageConformance` from `@bookbag/credits/testing` proves one.
 */

export { fromMicros, MAX_MICROS, MICROS_PER_CREDIT, toMicros } from '../core/credits.js';
export { CreditsError, InvalidInputError, StorageError } from '../core/errors.js';
export { compareGrants } from '../core/grants.js';
export { LEDGER_COLUMNS, type LedgerColumn, type LedgerRowFields, ledgerRow } from '../core/ledger-row.js';
export type {
  AccountState,
  AdjustmentRecord,
  AgentState,
  Allocation,
  GrantKind,
  GrantState,
  LedgerDayRecord,
  LedgerKind,
  LedgerRow,
  RechargeState,
  RefundRecord,
  ReplyRecord,
  ReplyStatus,
  Route,
  StoredRecord,
  TokenUsage,
  TopUpRecord,
  UsageGroupBy,
  WorkspaceState,
} from '../core/state.js';
export type { UsageGroupColumn, UsageTotals } from '../core/usage-aggregate.js';
export { DAY_MS, dayOf, USAGE_GROUP_COLUMNS, UsageAccumulator } from '../core/usage-aggregate.js';
export { type LedgerFilter, ledgerFilters } from './ledger-filters.js';
export { MemoryStorage } from './memory-storage.js';
export { type Once, once } from './once.js';
export { importOptionalPeer } from './optional-peer.js';
export {
  type PackedLedgerRow,
  type PackedRecord,
  packLedgerRow,
  packRecord,
  type RecordValue,
  unpackLedgerRow,
  unpackRecord,
} from './packing.js';
export type {
  CommitResult,
  CreditStorage,
  EraseRequest,
  LedgerQuery,
  ListQuery,
  LoadedWorkspace,
  LoadRequest,
  LockedWorkspace,
  UsageAggregate,
  UsageQuery,
  WorkspaceCommit,
} from './storage.js';
export { checkOptions, type OptionCheck, type OptionChecks } from './store-options.js';
export { versionAfter } from './version-after.js';

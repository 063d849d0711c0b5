export { Decimal } from 'decimal.js';
export type { PeriodBounds } from './core/billing-period.js';
export { periodBounds, periodIndexAt, periodStart } from './core/billing-period.js';
export type { CreditsInput } from './core/credits.js';
export { CREDIT_DECIMALS, MAX_INPUT_CREDITS } from './core/credits.js';
export type { CreditsErrorCode, InputIssue, InsufficientCreditsDetails } from './core/errors.js';
export {
  AgentLimitError,
  CreditsError,
  IdempotencyConflictError,
  InsufficientCreditsError,
  InvalidInputError,
  ModelNotAllowedError,
  ProviderError,
  ProviderNotFoundError,
  ReplyStateError,
  StorageError,
  UnknownModelError,
  UnknownPlanError,
  WorkspaceExistsError,
  WorkspaceNotFoundError,
} from './core/errors.js';
export type { Plan, PlanInput } from './core/plan-catalog.js';
export { DEFAULT_PLANS, definePlans, PlanCatalog } from './core/plan-catalog.js';
export type { ModelPrice, ModelPriceInput, ProviderId } from './core/price-table.js';
export { DEFAULT_MODEL_PRICES, defineModelPrices, ModelPriceTable } from './core/price-table.js';
export type { MeterMode } from './core/route.js';
export type { ScrubbedProviderError } from './core/secrets.js';
export type { LedgerKind, Route, UsageGroupBy } from './core/state.js';
export type { HttpErrorBody, HttpErrorResponse, HttpJsonValue, ToHttpErrorOptions } from './http/to-http-error.js';
export { toHttpError } from './http/to-http-error.js';
export { CreditMeter } from './meter/credit-meter.js';
export type {
  BalanceBelowEvent,
  BalanceLowEvent,
  CreditEvent,
  CreditEventHandler,
  CreditEventMap,
  CreditEventName,
  EventErrorHandler,
  PeriodRenewedEvent,
  RechargeFailedEvent,
  RechargeRequestedEvent,
  ReplyBlockedEvent,
  ReplyChargedEvent,
} from './meter/events.js';
export type { ByoKeyResolver, ProviderResult, ReplyContext, ReplyProvider, ReplyRequest } from './meter/provider.js';
export type {
  AddCreditsInput,
  AdjustInput,
  Adjustment,
  AgentLimitInput,
  AgentSummary,
  ChangePlanInput,
  CreateWorkspaceInput,
  CreditMeterOptions,
  DeleteWorkspaceInput,
  GrantSummary,
  HoldExtension,
  LedgerEntry,
  LedgerInput,
  LedgerPage,
  ListWorkspacesInput,
  PlanChange,
  Quote,
  QuoteInput,
  RechargeHandler,
  RechargeInput,
  Refund,
  RefundInput,
  Release,
  ReplyIdentity,
  ReplyInput,
  ReplyRef,
  ReplyResult,
  ReplyStream,
  Reservation,
  ReserveInput,
  SettleInput,
  Settlement,
  TokenUsage,
  TopUp,
  UsageInput,
  UsageInterval,
  UsageReport,
  UsageRow,
  WorkspaceDeletion,
  WorkspacePage,
  WorkspaceSummary,
} from './meter/types.js';
export { MemoryStorage } from './storage/memory-storage.js';
export type { CreditStorage } from './storage/storage.js';

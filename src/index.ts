export { CreditMeter } from './meter/credit-meter.js';
export { MemoryStorage } from './storage/memory-storage.js';
export { DEFAULT_MODEL_PRICES, defineModelPrices, ModelPriceTable } from './core/price-table.js';
export { DEFAULT_PLANS, definePlans, PlanCatalog } from './core/plan-catalog.js';
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
export { CREDIT_DECIMALS, MAX_INPUT_CREDITS } from './core/credits.js';
export { periodBounds, periodIndexAt, periodStart } from './core/billing-period.js';
export { toHttpError } from './http/to-http-error.js';
export { Decimal } from 'decimal.js';

export type { CreditsErrorCode, InputIssue, InsufficientCreditsDetails } from './core/errors.js';
export type { CreditsInput } from './core/credits.js';
export type { ModelPrice, ModelPriceInput, ProviderId } from './core/price-table.js';
export type { Plan, PlanInput } from './core/plan-catalog.js';
export type { PeriodBounds } from './core/billing-period.js';
export type { MeterMode } from './core/route.js';
export type { LedgerKind, Route, UsageGroupBy } from './core/state.js';
export type { ScrubbedProviderError } from './core/secrets.js';
export type { HttpErrorBody, HttpErrorResponse, HttpJsonValue, ToHttpErrorOptions } from './http/to-http-error.js';
export type {
  AddCreditsInput,
  AdjustInput,
  Adjustment,
  AgentLimitInput,
  AgentSummary,
  DeleteWorkspaceInput,
  ListWorkspacesInput,
  RechargeHandler,
  RechargeInput,
  Refund,
  RefundInput,
  WorkspaceDeletion,
  WorkspacePage,
  ChangePlanInput,
  CreateWorkspaceInput,
  CreditMeterOptions,
  GrantSummary,
  HoldExtension,
  LedgerEntry,
  LedgerInput,
  LedgerPage,
  PlanChange,
  Quote,
  QuoteInput,
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
  WorkspaceSummary,
} from './meter/types.js';
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
export type { CreditStorage } from './storage/storage.js';

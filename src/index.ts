export { CreditMeter } from './meter/credit-meter.js';
export { MemoryStorage } from './storage/memory-storage.js';
export { DEFAULT_MODEL_PRICES, defineModelPrices, ModelPriceTable } from './core/price-table.js';
export { DEFAULT_PLANS, definePlans, PlanCatalog } from './core/plan-catalog.js';
export {
  CreditsError,
  IdempotencyConflictError,
  InsufficientCreditsError,
  InvalidInputError,
  ProviderError,
  ProviderNotFoundError,
  ReplyStateError,
  StorageError,
  UnknownModelError,
  UnknownPlanError,
  WorkspaceExistsError,
  WorkspaceNotFoundError,
} from './core/errors.js';
export { CREDIT_DECIMALS, MAX_INPUT_CREDITS, MAX_MICROS, MICROS_PER_CREDIT, fromMicros, toMicros } from './core/credits.js';
export { periodBounds, periodIndexAt, periodStart } from './core/billing-period.js';
export { compareGrants } from './storage/storage-helpers.js';
export { Decimal } from 'decimal.js';

export type { CreditsErrorCode, InputIssue, InsufficientCreditsDetails } from './core/errors.js';
export type { CreditsInput } from './core/credits.js';
export type { ModelPrice, ModelPriceInput, ProviderId } from './core/price-table.js';
export type { Plan, PlanInput } from './core/plan-catalog.js';
export type { PeriodBounds } from './core/billing-period.js';
export type { MeterMode } from './core/route.js';
export type * from './meter/types.js';
export type {
  BalanceLowEvent,
  CreditEvent,
  CreditEventHandler,
  CreditEventMap,
  CreditEventName,
  EventErrorHandler,
  PeriodRenewedEvent,
  ReplyBlockedEvent,
  ReplyChargedEvent,
} from './meter/events.js';
export type { ByoKeyResolver, ReplyContext, ReplyProvider, ReplyRequest } from './meter/provider.js';
export type * from './storage/storage.js';

import type { Decimal } from 'decimal.js';
import type { Route } from '../core/state.js';

/** Emitted after a reply was settled (on every route; `credits` is 0 on byo and unmetered). */
export interface ReplyChargedEvent {
  readonly type: 'reply.charged';
  readonly workspaceId: string;
  readonly agentId: string;
  readonly conversationId: string;
  readonly model: string;
  readonly replyId: string;
  readonly route: Route;
  readonly credits: Decimal;
  readonly entryId: string;
  readonly at: Date;
}

/** Emitted when a reply was refused for insufficient credits. */
export interface ReplyBlockedEvent {
  readonly type: 'reply.blocked';
  readonly workspaceId: string;
  readonly agentId: string;
  readonly conversationId: string;
  readonly model: string;
  readonly replyId: string;
  readonly required: Decimal;
  readonly available: Decimal;
  readonly renewsAt: Date | undefined;
  readonly at: Date;
}

/** Emitted once per period and threshold when usage crosses a share of the allotment. */
export interface BalanceLowEvent {
  readonly type: 'balance.low';
  readonly workspaceId: string;
  /** The threshold crossed, as a fraction of the allotment (0.8 = 80 %). */
  readonly threshold: number;
  /** Credits used by replies this period. */
  readonly used: Decimal;
  readonly allotment: Decimal;
  readonly periodStart: Date;
  readonly renewsAt: Date;
  readonly at: Date;
}

/** Emitted when a workspace entered a new period (once per period, even under racing servers). */
export interface PeriodRenewedEvent {
  readonly type: 'period.renewed';
  readonly workspaceId: string;
  readonly plan: string;
  readonly periodStart: Date;
  readonly periodEnd: Date;
  /** The new period's allotment. */
  readonly allotment: Decimal;
  /** Unused plan credits that expired. */
  readonly expired: Decimal;
  /** Unused plan credits carried over (plans with rollover). */
  readonly carried: Decimal;
  readonly at: Date;
}

/** Emitted once per period and level when the available balance falls to or below an absolute level. */
export interface BalanceBelowEvent {
  readonly type: 'balance.below';
  readonly workspaceId: string;
  /** The level crossed, in credits (from `lowBalanceLevels`). */
  readonly level: Decimal;
  /** Credits available right after the crossing. */
  readonly available: Decimal;
  readonly periodStart: Date;
  readonly renewsAt: Date;
  readonly at: Date;
}

/** Emitted once per crossing when available credits fell below a workspace's recharge threshold. */
export interface RechargeRequestedEvent {
  readonly type: 'recharge.requested';
  readonly workspaceId: string;
  /** The idempotency key of this recharge (also the `grantId` its credits are added with). */
  readonly rechargeId: string;
  /** Credits to add. */
  readonly credits: Decimal;
  readonly below: Decimal;
  readonly available: Decimal;
  readonly at: Date;
}

/** Emitted when `onRecharge` (or adding its credits) failed; the recharge re-arms once the balance is back above the threshold. */
export interface RechargeFailedEvent {
  readonly type: 'recharge.failed';
  readonly workspaceId: string;
  readonly rechargeId: string;
  readonly credits: Decimal;
  /** What failed, scrubbed of secrets like a provider error. */
  readonly error: Error;
  readonly at: Date;
}

/** Every event, by name. */
export interface CreditEventMap {
  'reply.charged': ReplyChargedEvent;
  'reply.blocked': ReplyBlockedEvent;
  'balance.low': BalanceLowEvent;
  'balance.below': BalanceBelowEvent;
  'period.renewed': PeriodRenewedEvent;
  'recharge.requested': RechargeRequestedEvent;
  'recharge.failed': RechargeFailedEvent;
}

/** An event name. */
export type CreditEventName = keyof CreditEventMap;

/** Any event. */
export type CreditEvent = CreditEventMap[CreditEventName];

/** A handler; the call that caused the event waits for it (a returned promise too). */
export type CreditEventHandler<K extends CreditEventName> = (event: CreditEventMap[K]) => void | Promise<void>;

/** Receives an error thrown or rejected by an event handler. */
export type EventErrorHandler = (error: unknown, event: CreditEvent) => void;

/**
 * Runs handlers before the call that caused the event resolves. A handler that throws or
 * rejects is reported to `onError` and never breaks the reply.
 */
export class EventBus {
  readonly #handlers = new Map<CreditEventName, Array<(event: never) => void | Promise<void>>>();
  readonly #onError: EventErrorHandler;

  constructor(onError: EventErrorHandler) {
    this.#onError = onError;
  }

  on<K extends CreditEventName>(name: K, handler: CreditEventHandler<K>): () => void {
    const list = this.#handlers.get(name) ?? [];
    list.push(handler as (event: never) => void);
    this.#handlers.set(name, list);
    return () => {
      const current = this.#handlers.get(name);
      const index = current?.indexOf(handler as (event: never) => void) ?? -1;
      if (current && index >= 0) current.splice(index, 1);
    };
  }

  /** True when someone listens, so callers skip building events nobody reads. */
  has(name: CreditEventName): boolean {
    return (this.#handlers.get(name)?.length ?? 0) > 0;
  }

  async emit<K extends CreditEventName>(event: CreditEventMap[K] & { type: K }): Promise<void> {
    const list = this.#handlers.get(event.type);
    if (!list || list.length === 0) return;
    for (const handler of [...list]) {
      try {
        await (handler as CreditEventHandler<K>)(event);
      } catch (error) {
        try {
          this.#onError(error, event);
        } catch {
          // A failing error reporter must not break the reply either.
        }
      }
    }
  }
}

import type { Decimal } from 'decimal.js';
import { type ScrubbedProviderError, scrubProviderError } from './secrets.js';

/**
 * Every stable error code the library throws. A host switches on `error.code`,
 * never on the message.
 */
export type CreditsErrorCode =
  | 'INSUFFICIENT_CREDITS'
  | 'UNKNOWN_MODEL'
  | 'UNKNOWN_PLAN'
  | 'INVALID_INPUT'
  | 'WORKSPACE_NOT_FOUND'
  | 'WORKSPACE_EXISTS'
  | 'REPLY_NOT_FOUND'
  | 'REPLY_IN_PROGRESS'
  | 'REPLY_RELEASED'
  | 'REPLY_SETTLED'
  | 'IDEMPOTENCY_CONFLICT'
  | 'HOLD_EXPIRED'
  | 'PROVIDER_ERROR'
  | 'PROVIDER_NOT_FOUND'
  | 'STORAGE_ERROR'
  | 'AGENT_LIMIT_REACHED'
  | 'MODEL_NOT_ALLOWED';

const MARKER = Symbol.for('@bookbag/credits.error');

/**
 * The base class of every error this library throws. Each error carries a stable
 * string `code`.
 *
 * @example
 * ```ts
 * try {
 *   await meter.reply({ workspaceId, agentId, conversationId, model, input });
 * } catch (error) {
 *   if (CreditsError.is(error) && error.code === 'INSUFFICIENT_CREDITS') showUpgradePrompt();
 *   else throw error;
 * }
 * ```
 */
export class CreditsError extends Error {
  /** Stable, machine-readable code. */
  readonly code: CreditsErrorCode;
  /** Marks the error for {@link CreditsError.is}, which survives two copies of this package. */
  readonly [MARKER] = true;

  constructor(code: CreditsErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
    this.name = new.target.name;
  }

  /**
   * True for any error thrown by this library, even one created by another copy of it
   * (where `instanceof` would fail).
   */
  static is(value: unknown): value is CreditsError {
    if (typeof value !== 'object' || value === null) return false;
    try {
      return (value as Record<symbol, unknown>)[MARKER] === true;
    } catch {
      // A proxy whose trap throws (its error may quote a key) is not ours, and must not escape.
      return false;
    }
  }
}

/** One problem found in an input, with the path of the field at fault. */
export interface InputIssue {
  /** Dotted path of the field, e.g. `credits` or `models.2.id`. */
  readonly path: string;
  /** What is wrong with it. */
  readonly message: string;
}

/** An input failed validation. Nothing was changed. */
export class InvalidInputError extends CreditsError {
  /** Dotted path of the first offending field (e.g. `credits`). */
  readonly field: string;
  /** Every problem found, each with its field path. */
  readonly issues: readonly InputIssue[];

  constructor(issues: readonly InputIssue[]) {
    const first = issues[0] ?? { path: '(input)', message: 'invalid input' };
    super('INVALID_INPUT', `Invalid ${first.path}: ${first.message}`);
    this.field = first.path;
    this.issues = issues;
  }
}

/** The fields of an {@link InsufficientCreditsError}. */
export interface InsufficientCreditsDetails {
  readonly workspaceId: string;
  readonly model: string;
  readonly replyId: string;
  readonly required: Decimal;
  readonly available: Decimal;
  readonly renewsAt: Date | undefined;
}

/**
 * The balance cannot cover a reply. The model was not called and nothing was charged.
 * Carries what a host needs to render "you need 5 credits, you have 2, renews on May 1".
 */
export class InsufficientCreditsError extends CreditsError implements InsufficientCreditsDetails {
  readonly workspaceId: string;
  readonly model: string;
  readonly replyId: string;
  /** Credits the reply costs. */
  readonly required: Decimal;
  /** Credits available when it was refused (balance minus live holds). */
  readonly available: Decimal;
  /** When the current period ends and the allotment renews. */
  readonly renewsAt: Date | undefined;

  constructor(details: InsufficientCreditsDetails) {
    super(
      'INSUFFICIENT_CREDITS',
      `Workspace ${details.workspaceId} needs ${details.required.toString()} credits for ${details.model} ` +
        `but has ${details.available.toString()} available` +
        (details.renewsAt ? `; the allotment renews at ${details.renewsAt.toISOString()}` : ''),
    );
    this.workspaceId = details.workspaceId;
    this.model = details.model;
    this.replyId = details.replyId;
    this.required = details.required;
    this.available = details.available;
    this.renewsAt = details.renewsAt;
  }
}

/** A model id is not in the price table. Fails closed: never a free reply. */
export class UnknownModelError extends CreditsError {
  constructor(readonly model: string) {
    super('UNKNOWN_MODEL', `Unknown model "${model}": it is not in the price table`);
  }
}

/** A plan id is not in the plan catalog. */
export class UnknownPlanError extends CreditsError {
  constructor(readonly plan: string) {
    super('UNKNOWN_PLAN', `Unknown plan "${plan}": it is not in the plan catalog`);
  }
}

/** No workspace has this id. */
export class WorkspaceNotFoundError extends CreditsError {
  constructor(readonly workspaceId: string) {
    super('WORKSPACE_NOT_FOUND', `Workspace ${workspaceId} does not exist`);
  }
}

/** `createWorkspace` was called for an id that exists already. Nothing changed. */
export class WorkspaceExistsError extends CreditsError {
  constructor(readonly workspaceId: string) {
    super('WORKSPACE_EXISTS', `Workspace ${workspaceId} exists already`);
  }
}

/** The state of a reply forbids the requested step; `code` says which state. */
export class ReplyStateError extends CreditsError {
  constructor(
    code: 'REPLY_NOT_FOUND' | 'REPLY_IN_PROGRESS' | 'REPLY_RELEASED' | 'REPLY_SETTLED' | 'HOLD_EXPIRED',
    readonly replyId: string,
    message: string,
  ) {
    super(code, message);
  }
}

/**
 * The agent's per-period cap cannot cover the reply (holds in flight count). The model was not
 * called and nothing was charged; the workspace may still have credits for other agents.
 */
export class AgentLimitError extends CreditsError {
  constructor(
    readonly workspaceId: string,
    readonly agentId: string,
    readonly replyId: string,
    /** The agent's cap per period (undefined when a retry of a refused reply is refused again). */
    readonly limit: Decimal | undefined,
    /** Credits the agent spent this period plus what its replies in flight hold. */
    readonly used: Decimal | undefined,
    /** Credits the reply costs. */
    readonly required: Decimal,
    /** When the period ends and the cap resets. */
    readonly renewsAt: Date | undefined,
  ) {
    super(
      'AGENT_LIMIT_REACHED',
      limit === undefined || used === undefined
        ? `Reply ${replyId} was refused by the cap of agent ${agentId} of workspace ${workspaceId}; it never charges`
        : `Agent ${agentId} of workspace ${workspaceId} has used ${used.toString()} of its ${limit.toString()} credits this period ` +
            `and needs ${required.toString()} more` +
            (renewsAt ? `; the cap resets at ${renewsAt.toISOString()}` : ''),
    );
  }
}

/** The agent may not use this model (see `setAgentLimit({ models })`). Nothing was charged. */
export class ModelNotAllowedError extends CreditsError {
  constructor(
    readonly workspaceId: string,
    readonly agentId: string,
    readonly model: string,
    readonly replyId: string,
  ) {
    super('MODEL_NOT_ALLOWED', `Agent ${agentId} of workspace ${workspaceId} may not use model ${model}`);
  }
}

/** A `replyId` or `grantId` was reused with different parameters: not a replay. */
export class IdempotencyConflictError extends CreditsError {
  constructor(
    readonly key: string,
    readonly field: string,
  ) {
    super('IDEMPOTENCY_CONFLICT', `${key} was used before with a different ${field}`);
  }
}

/** No provider is registered for a model's provider id. */
export class ProviderNotFoundError extends CreditsError {
  constructor(readonly provider: string) {
    super('PROVIDER_NOT_FOUND', `No provider is registered for "${provider}"`);
  }
}

/**
 * The provider failed; the hold was released and nothing was charged.
 *
 * `cause` is never the provider's error itself: it is a fresh copy holding only its `name`,
 * `message`, `status`, `code` and `type`, with the workspace's own key redacted (see
 * `scrubProviderError`). Whatever else the original carried (the request, its headers,
 * a cause chain) is dropped, so a key cannot reach the caller through it.
 */
export class ProviderError extends CreditsError {
  /** The scrubbed copy of what the provider threw. */
  declare readonly cause: ScrubbedProviderError;
  /** The provider's HTTP status, when it gave one (e.g. 401, 429, 500). */
  readonly status: number | string | undefined;

  /**
   * @param error what the provider threw; scrubbed here, whatever it is.
   * @param secrets keys to redact from it (the BYO key of the reply); `undefined` entries are ignored.
   */
  constructor(
    readonly replyId: string,
    readonly provider: string,
    error: unknown,
    secrets: readonly (string | undefined)[] = [],
  ) {
    const cause = scrubProviderError(error, secrets);
    super('PROVIDER_ERROR', `Provider "${provider}" failed for reply ${replyId}; nothing was charged: ${cause.message}`, { cause });
    this.status = cause.status;
  }
}

/** The store failed or timed out. The driver error is kept as `cause`. */
export class StorageError extends CreditsError {
  constructor(
    readonly operation: string,
    cause: unknown,
    readonly adapter = 'storage',
  ) {
    super('STORAGE_ERROR', `[credits] [${adapter}] ${operation} failed: ${describe(cause)}`, { cause });
  }
}

function describe(cause: unknown): string {
  if (cause instanceof Error) return cause.message;
  return String(cause);
}

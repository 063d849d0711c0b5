import type { Decimal } from 'decimal.js';
import { ReplyStateError } from '../core/errors.js';
import type { Route } from '../core/state.js';
import { raceAbort } from './abort.js';
import type { ReplyStream, Settlement } from './types.js';

/** What a stream needs from the meter to run one held reply. */
export interface StreamLifecycle {
  readonly replyId: string;
  readonly route: Route;
  readonly credits: Decimal;
  /** True when the reply was metered (false for the unmetered fallback). */
  readonly metered: boolean;
  readonly signal: AbortSignal | undefined;
  /** Starts the upstream request. */
  open(): AsyncIterable<unknown>;
  /** Charges the reply (called once, when output was delivered). */
  settle(): Promise<Settlement>;
  /** Returns the hold (called once, when nothing was delivered). */
  release(): Promise<void>;
  /** What the caller sees for an upstream failure (a scrubbed provider error). */
  failure(error: unknown): unknown;
  /** Keeps the hold alive while the stream runs; returns the stopper. */
  keepAlive(): () => void;
}

/**
 * A streamed reply, settled exactly once: charged when it ended after any output (normal
 * end, a failure midway, a `break`, `cancel()` or an abort), released when it ended before
 * its first chunk. `cancel()` works before iteration starts too, and closes the upstream.
 */
export function createReplyStream(lifecycle: StreamLifecycle): ReplyStream {
  let resolveResult!: (settlement: Settlement) => void;
  let rejectResult!: (reason: unknown) => void;
  const result = new Promise<Settlement>((resolve, reject) => {
    resolveResult = resolve;
    rejectResult = reject;
  });
  // A caller who only iterates must not see an unhandled rejection.
  result.catch(() => undefined);

  let upstream: AsyncIterator<unknown> | undefined;
  let stopKeepAlive: (() => void) | undefined;
  let delivered = false;
  let finished: Promise<void> | undefined;

  const finish = (failure?: unknown): Promise<void> => {
    finished ??= (async () => {
      stopKeepAlive?.();
      if (upstream) {
        // Closes the request; an upstream that ignores it must not hold the caller.
        const closing = upstream.return?.();
        void Promise.resolve(closing).catch(() => undefined);
      }
      if (delivered) {
        await lifecycle.settle().then(resolveResult, rejectResult);
        return;
      }
      await lifecycle.release().catch(() => undefined);
      rejectResult(
        failure ??
          new ReplyStateError(
            'REPLY_RELEASED',
            lifecycle.replyId,
            `Reply ${lifecycle.replyId} ended before any output; nothing was charged`,
          ),
      );
    })();
    return finished;
  };

  const iterator: AsyncIterator<unknown> = {
    async next() {
      if (finished) return { done: true, value: undefined };
      if (!upstream) {
        stopKeepAlive = lifecycle.keepAlive();
        try {
          lifecycle.signal?.throwIfAborted();
          upstream = lifecycle.open()[Symbol.asyncIterator]();
        } catch (error) {
          const failure = lifecycle.signal?.aborted ? lifecycle.signal.reason : lifecycle.failure(error);
          await finish(failure);
          throw failure;
        }
      }
      let step: IteratorResult<unknown>;
      try {
        step = await raceAbort(upstream.next(), lifecycle.signal);
      } catch (error) {
        const failure = lifecycle.signal?.aborted ? lifecycle.signal.reason : lifecycle.failure(error);
        await finish(failure);
        throw failure;
      }
      if (step.done) {
        await finish();
        return { done: true, value: undefined };
      }
      delivered = true;
      return { done: false, value: step.value };
    },
    async return() {
      await finish();
      return { done: true, value: undefined };
    },
  };

  return {
    replyId: lifecycle.replyId,
    route: lifecycle.route,
    credits: lifecycle.credits,
    metered: lifecycle.metered,
    result,
    cancel: () => finish(),
    [Symbol.asyncIterator]: () => iterator,
  };
}

/** A stream that is already over: a replay of a settled reply. */
export function settledStream(settlement: Settlement): ReplyStream {
  const result = Promise.resolve(settlement);
  return {
    replyId: settlement.replyId,
    route: settlement.route,
    credits: settlement.credits,
    metered: true,
    result,
    cancel: async () => undefined,
    [Symbol.asyncIterator]: () => ({ next: async () => ({ done: true, value: undefined }) }),
  };
}

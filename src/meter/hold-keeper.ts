/**
 * Keeps a hold alive while its reply is being produced: a long reply (a slow model, a long
 * stream, an SDK's own retries) must never outlive its hold, or it would be delivered and
 * never charged. Extends at half the TTL, so one failed extension still leaves time for the
 * next. When the process dies the timer dies with it, and the hold lapses as designed.
 *
 * Returns a function that stops it.
 */
export function keepHoldAlive(holdTtlMs: number, extend: () => Promise<unknown>): () => void {
  const every = Math.max(1, Math.floor(holdTtlMs / 2));
  let stopped = false;
  let timer: NodeJS.Timeout | undefined;
  const schedule = () => {
    timer = setTimeout(() => {
      extend()
        .catch(() => undefined)
        .finally(() => {
          if (!stopped) schedule();
        });
    }, every);
    // A hold being kept alive must not keep the process alive on its own.
    timer.unref();
  };
  schedule();
  return () => {
    stopped = true;
    clearTimeout(timer);
  };
}

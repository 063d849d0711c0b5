const REDACTED = '[redacted]';

/**
 * A copy of `error` with every occurrence of `secret` replaced, or `error` itself when it
 * does not contain the secret. Provider SDKs sometimes echo the API key they were given
 * ("Incorrect API key provided: sk-...") and a BYO key must never reach an error.
 */
export function redactSecret(error: unknown, secret: string | undefined): unknown {
  if (!secret) return error;
  if (typeof error === 'string') return error.split(secret).join(REDACTED);
  if (!(error instanceof Error)) return containsSecret(error, secret) ? REDACTED : error;
  if (!containsSecret(error, secret)) return error;
  const copy = new Error(scrub(error.message, secret));
  copy.name = error.name;
  if (error.stack !== undefined) copy.stack = scrub(error.stack, secret);
  for (const key of ['status', 'code', 'type'] as const) {
    const value = (error as unknown as Record<string, unknown>)[key];
    if (typeof value === 'string' || typeof value === 'number') {
      (copy as unknown as Record<string, unknown>)[key] = typeof value === 'string' ? scrub(value, secret) : value;
    }
  }
  return copy;
}

function scrub(text: string, secret: string): string {
  return text.split(secret).join(REDACTED);
}

function containsSecret(value: unknown, secret: string, depth = 0): boolean {
  if (typeof value === 'string') return value.includes(secret);
  if (typeof value !== 'object' || value === null || depth > 3) return false;
  if (value instanceof Error && (value.message.includes(secret) || (value.stack ?? '').includes(secret))) return true;
  for (const key of Object.keys(value)) {
    if (containsSecret((value as Record<string, unknown>)[key], secret, depth + 1)) return true;
  }
  return value instanceof Error && value.cause !== undefined && containsSecret(value.cause, secret, depth + 1);
}

import type { GrantRecord } from './storage.js';

/** Milliseconds in a UTC day. */
export const DAY_MS = 86_400_000;

/**
 * The spending order of grants: soonest-expiring first, never-expiring last, then
 * oldest first, then by id. Every store spends in this order.
 */
export function compareGrants(a: GrantRecord, b: GrantRecord): number {
  const ae = a.expiresAt ?? Number.POSITIVE_INFINITY;
  const be = b.expiresAt ?? Number.POSITIVE_INFINITY;
  if (ae !== be) return ae < be ? -1 : 1;
  if (a.createdAt !== b.createdAt) return a.createdAt - b.createdAt;
  return a.grantId < b.grantId ? -1 : a.grantId > b.grantId ? 1 : 0;
}

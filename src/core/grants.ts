import type { Allocation, GrantState } from './state.js';

/**
 * The spending order of grants: soonest-expiring first, never-expiring last, then oldest
 * first, then by id.
 */
export function compareGrants(a: GrantState, b: GrantState): number {
  const ae = a.expiresAt ?? Number.POSITIVE_INFINITY;
  const be = b.expiresAt ?? Number.POSITIVE_INFINITY;
  if (ae !== be) return ae < be ? -1 : 1;
  if (a.createdAt !== b.createdAt) return a.createdAt - b.createdAt;
  return a.grantId < b.grantId ? -1 : a.grantId > b.grantId ? 1 : 0;
}

/** Inserts a grant into a list kept in spending order. */
export function insertGrant(grants: GrantState[], grant: GrantState): void {
  let index = grants.length;
  while (index > 0 && compareGrants(grants[index - 1]!, grant) > 0) index--;
  grants.splice(index, 0, grant);
}

/** Micro-credits that can be spent now: every live grant's `remaining`. */
export function availableOf(grants: readonly GrantState[]): number {
  let sum = 0;
  for (const grant of grants) sum += grant.remaining;
  return sum;
}

/**
 * Moves `amount` from the grants' `remaining` to their `held`, in spending order, and says
 * where it came from. The caller checked that they cover it.
 */
export function holdFromGrants(grants: readonly GrantState[], amount: number): Allocation[] {
  const allocations: Allocation[] = [];
  let left = amount;
  for (const grant of grants) {
    if (left === 0) break;
    if (grant.remaining === 0) continue;
    const part = Math.min(grant.remaining, left);
    grant.remaining -= part;
    grant.held += part;
    allocations.push({ grantId: grant.grantId, amount: part });
    left -= part;
  }
  return allocations;
}

/** A grant as stored: a copy, so a draft never changes the state it was loaded from. */
export function copyGrant(grant: GrantState): GrantState {
  return {
    grantId: grant.grantId,
    kind: grant.kind,
    amount: grant.amount,
    remaining: grant.remaining,
    held: grant.held,
    expiresAt: grant.expiresAt,
    createdAt: grant.createdAt,
  };
}

import type { ModelPrice } from './price-table.js';
import type { Route } from './state.js';

/** `cloud` meters and blocks; `self-hosted` records usage but never charges or blocks. */
export type MeterMode = 'cloud' | 'self-hosted';

/**
 * The one place that decides how a reply is paid for:
 * - `unmetered` in self-hosted mode, whatever the model;
 * - `byo` when the model is provider-backed and the workspace has its own key for that provider;
 * - `credits` otherwise (Bookbag Local is not provider-backed, so a key never makes it free).
 */
export function resolveRoute(mode: MeterMode, model: ModelPrice, hasOwnKey: boolean): Route {
  if (mode === 'self-hosted') return 'unmetered';
  if (model.providerBacked && hasOwnKey) return 'byo';
  return 'credits';
}

/** Micro-credits a reply on `route` costs. */
export function routeCost(route: Route, model: ModelPrice): number {
  return route === 'credits' ? model.micros : 0;
}

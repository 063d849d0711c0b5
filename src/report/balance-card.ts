import { Decimal } from 'decimal.js';
import type { WorkspaceSummary } from '../meter/types.js';
import { escapeHtml } from './escape-html.js';
import { formatCredits } from './format-credits.js';
import { formatDateTime } from './format-date.js';
import type { ReportOptions } from './report-options.js';

/**
 * The models of a price table, as far as the balance card needs them. `DEFAULT_MODEL_PRICES`
 * (or any `ModelPriceTable`) fits as is.
 */
export interface ReportModels {
  readonly models: ReadonlyArray<{ readonly id: string; readonly name: string; readonly credits?: Decimal }>;
}

/** Options of {@link renderBalanceCard}. */
export interface BalanceCardOptions extends ReportOptions {
  /**
   * The card's heading.
   * @default 'Credits'
   */
  title?: string;
  /**
   * The price table, for model names and prices in "replies left"; the card shows model
   * ids without it.
   */
  models?: ReportModels;
  /**
   * Display names of plans by id (`{ hobby: 'Hobby' }`).
   * @default the plan id with its first letter capitalized
   */
  planNames?: Readonly<Record<string, string>>;
  /**
   * Share of the allotment used from which the card is in its `low` state, to match the
   * meter's `lowBalanceThresholds`.
   * @default 0.8
   */
  lowShare?: number;
  /**
   * Formats an instant such as `renewsAt`. Its result is escaped.
   * @default formatDateTime (`1 Dec 2026, 09:00 UTC`)
   */
  formatDate?: (date: Date) => string;
  /**
   * Show the table of replies left per model.
   * @default true
   */
  showRepliesLeft?: boolean;
}

/**
 * The state of a balance: `blocked` when no priced model can afford a reply (cloud replies
 * are refused), `low` when the period's usage reached `lowShare` of the allotment, `ok`
 * otherwise.
 */
export type BalanceState = 'ok' | 'low' | 'blocked';

/**
 * Tells whether a workspace can still reply, from its summary alone (see {@link BalanceState}).
 *
 * @example
 * ```ts
 * if (balanceState(await meter.getWorkspace('acme')) === 'blocked') showUpgradePrompt();
 * ```
 */
export function balanceState(summary: WorkspaceSummary, lowShare = 0.8): BalanceState {
  const priced = Object.values(summary.repliesLeft).filter((left): left is number => left !== null);
  if (summary.balance.lessThanOrEqualTo(0) || (priced.length > 0 && priced.every((left) => left === 0))) return 'blocked';
  if (summary.allotment.greaterThan(0) && summary.usedThisPeriod.dividedBy(summary.allotment).greaterThanOrEqualTo(lowShare)) {
    return 'low';
  }
  return 'ok';
}

/**
 * Renders a workspace summary (`meter.getWorkspace()`) as an accessible HTML card: credits
 * available, held by replies in flight, the period's allotment and what was used of it (as
 * an ARIA meter), top-up credits, when the allotment renews, and how many replies each
 * model can still afford. When the balance cannot pay for any reply, the card says so
 * (`role="alert"`) with the renewal time. Every host string is escaped; no inline styles.
 *
 * @example
 * ```ts
 * import { DEFAULT_MODEL_PRICES } from '@bookbag/credits';
 * import { renderBalanceCard, REPORT_STYLES } from '@bookbag/credits/report';
 *
 * const summary = await meter.getWorkspace('acme');
 * const html = `<style>${REPORT_STYLES}</style>${renderBalanceCard(summary, { models: DEFAULT_MODEL_PRICES })}`;
 * ```
 */
export function renderBalanceCard(summary: WorkspaceSummary, options: BalanceCardOptions = {}): string {
  const id = escapeHtml(options.idPrefix ?? 'bb-balance');
  const level = options.headingLevel ?? 2;
  const fmt = options.formatCredits ?? formatCredits;
  const date = options.formatDate ?? formatDateTime;
  const state = balanceState(summary, options.lowShare ?? 0.8);
  const planName = (plan: string): string => options.planNames?.[plan] ?? `${plan.charAt(0).toUpperCase()}${plan.slice(1)}`;
  const credits = (value: Decimal): string => escapeHtml(fmt(value));

  const used = summary.usedThisPeriod;
  const allotment = summary.allotment;
  const share = allotment.greaterThan(0) ? Decimal.min(1, used.dividedBy(allotment)).toNumber() : used.greaterThan(0) ? 1 : 0;
  const percent = Math.round(share * 1000) / 10;
  const meterText = `${fmt(used)} of ${fmt(allotment)} credits used this period (${percent}%)`;

  const subtitle =
    `Workspace <code>${escapeHtml(summary.workspaceId)}</code> · ${escapeHtml(planName(summary.plan))} plan` +
    (summary.pendingPlan ? ` · changes to ${escapeHtml(planName(summary.pendingPlan))} on ${escapeHtml(date(summary.renewsAt))}` : '');

  const notice =
    state === 'blocked'
      ? `<p class="bb-notice bb-notice-blocked" role="alert" data-field="notice"><strong>Out of credits.</strong> ` +
        `AI replies are blocked until the allotment renews on ${escapeHtml(date(summary.renewsAt))}, or until credits are added.</p>`
      : state === 'low'
        ? `<p class="bb-notice bb-notice-low" role="status" data-field="notice">${escapeHtml(`${percent}% of this period's allotment is used.`)} ` +
          `It renews on ${escapeHtml(date(summary.renewsAt))}.</p>`
        : '';

  const fields: Array<[string, string, string]> = [
    ['balance', 'Available', `${credits(summary.balance)} credits`],
    ['held', 'Held by replies in flight', `${credits(summary.held)} credits`],
    ['allotment', 'Allotment this period', `${credits(allotment)} credits`],
    ['used', 'Used this period', `${credits(used)} credits`],
    ['top-up', 'Top-up credits', `${credits(summary.topUpBalance)} credits`],
    ['renews-at', 'Renews', `<time datetime="${summary.renewsAt.toISOString()}">${escapeHtml(date(summary.renewsAt))}</time>`],
  ];
  const list = fields
    .map(([field, label, value]) => `<div class="bb-field"><dt>${escapeHtml(label)}</dt><dd data-field="${field}">${value}</dd></div>`)
    .join('');

  const bar =
    `<div class="bb-meter" role="meter" aria-label="Credits used this period" aria-valuemin="0" ` +
    `aria-valuemax="${escapeHtml(allotment.toFixed())}" aria-valuenow="${escapeHtml(Decimal.min(used, allotment).toFixed())}" aria-valuetext="${escapeHtml(meterText)}">` +
    `<svg viewBox="0 0 100 8" preserveAspectRatio="none" aria-hidden="true" focusable="false">` +
    `<rect class="bb-meter-track" width="100" height="8" rx="4"/>` +
    (percent > 0 ? `<rect class="bb-meter-fill" width="${percent}" height="8" rx="4"/>` : '') +
    `</svg><p class="bb-meter-text">${escapeHtml(meterText)}</p></div>`;

  return (
    `<section class="bb-report bb-balance" id="${id}" aria-labelledby="${id}-heading" data-state="${state}">` +
    `<h${level} class="bb-title" id="${id}-heading">${escapeHtml(options.title ?? 'Credits')}</h${level}>` +
    `<p class="bb-subtitle">${subtitle}</p>` +
    `<p class="bb-big"><span class="bb-big-value" data-field="available">${credits(summary.balance)}</span> credits available</p>` +
    bar +
    notice +
    `<dl class="bb-fields">${list}</dl>` +
    (options.showRepliesLeft === false ? '' : repliesLeftTable(summary, options.models, `${options.idPrefix ?? 'bb-balance'}-replies`)) +
    `</section>`
  );
}

function repliesLeftTable(summary: WorkspaceSummary, models: ReportModels | undefined, prefix: string): string {
  const known = models?.models ?? [];
  const ids = [
    ...known.map((model) => model.id).filter((modelId) => modelId in summary.repliesLeft),
    ...Object.keys(summary.repliesLeft).filter((modelId) => !known.some((model) => model.id === modelId)),
  ];
  if (ids.length === 0) return '';
  const withPrice = known.some((model) => model.credits !== undefined);
  const rows = ids
    .map((modelId) => {
      const model = known.find((entry) => entry.id === modelId);
      const left = summary.repliesLeft[modelId];
      const leftText = left === null || left === undefined ? 'Unlimited' : formatCredits(left);
      return (
        `<tr data-model="${escapeHtml(modelId)}"><th scope="row">${escapeHtml(model?.name ?? modelId)}</th>` +
        (withPrice ? `<td class="bb-num">${model?.credits ? escapeHtml(formatCredits(model.credits)) : '–'}</td>` : '') +
        `<td class="bb-num" data-field="replies-left">${escapeHtml(leftText)}</td></tr>`
      );
    })
    .join('');
  return (
    `<table class="bb-table bb-replies-left" id="${escapeHtml(prefix)}"><caption>Replies left at this balance</caption>` +
    `<thead><tr><th scope="col">Model</th>${withPrice ? '<th scope="col" class="bb-num">Credits per reply</th>' : ''}` +
    `<th scope="col" class="bb-num">Replies left</th></tr></thead><tbody>${rows}</tbody></table>`
  );
}

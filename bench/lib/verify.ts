/**
 * End-of-run checks on a workspace: the balance plus holds equals the signed sum of its
 * ledger, the balance is not negative, and the ledger holds exactly the expected number of
 * reply charges, each of the expected price.
 */

import { toMicros } from '../../src/core/credits.js';
import type { CreditMeter } from '../../src/index.js';
import type { CreditStorage } from '../../src/storage/storage.js';

export interface Check {
  workspaceId: string;
  ok: boolean;
  balance: number;
  held: number;
  ledgerSum: number;
  ledgerRows: number;
  charges: number;
  expectedCharges: number;
  charged: number;
  expectedCharged: number;
  problems: string[];
}

/**
 * Reads the whole ledger of `workspaceId` through the store, in pages of 10,000 rows.
 * `expectedCharged` is in micro-credits.
 */
export async function verifyWorkspace(
  meter: CreditMeter,
  storage: CreditStorage,
  workspaceId: string,
  expectedCharges: number,
  expectedCharged: number,
): Promise<Check> {
  const summary = await meter.getWorkspace(workspaceId);
  const balance = toMicros(summary.balance, 'balance');
  const held = toMicros(summary.held, 'held');
  let ledgerSum = 0;
  let ledgerRows = 0;
  let charges = 0;
  let charged = 0;
  let afterId: number | undefined;
  for (;;) {
    const page = await storage.ledger({ workspaceId, limit: 10_000, ...(afterId !== undefined && { afterSeq: afterId }) });
    for (const row of page) {
      ledgerSum += row.amount;
      ledgerRows++;
      if (row.kind === 'reply') {
        charges++;
        charged -= row.amount;
      }
    }
    if (page.length < 10_000) break;
    afterId = page[page.length - 1]!.seq;
  }
  const problems: string[] = [];
  if (balance + held !== ledgerSum) problems.push(`balance ${balance} + held ${held} != ledger sum ${ledgerSum} (micro-credits)`);
  if (balance < 0) problems.push(`negative balance ${balance}`);
  if (held !== 0) problems.push(`${held} micro-credits still held after every charge settled`);
  if (charges !== expectedCharges) problems.push(`${charges} reply rows, expected ${expectedCharges}`);
  if (charged !== expectedCharged) problems.push(`charged ${charged} micro-credits, expected ${expectedCharged}`);
  return {
    workspaceId,
    ok: problems.length === 0,
    balance,
    held,
    ledgerSum,
    ledgerRows,
    charges,
    expectedCharges,
    charged,
    expectedCharged,
    problems,
  };
}

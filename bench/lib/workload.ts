/** The charge operations measured, shared by the throughput and ledger-growth runs. */

import { toMicros } from '../../src/core/credits.js';
import { CreditMeter, DEFAULT_MODEL_PRICES } from '../../src/index.js';
import type { ReplyProvider } from '../../src/meter/provider.js';
import type { CreditStorage } from '../../src/storage/storage.js';

/** 1 credit per reply in the default table. */
export const MODEL = 'gpt-4o-mini';
export const MODEL_MICROS = toMicros(DEFAULT_MODEL_PRICES.get(MODEL)!.credits, 'credits');

/** Enough for every run: the balance never runs out, so no charge is refused. */
const ALLOTMENT = 1_000_000_000;

export const AGENTS = Array.from({ length: 8 }, (_, i) => `agent-${i}`);
export const CONVERSATIONS = Array.from({ length: 256 }, (_, i) => `conv-${i}`);

/** A provider that answers at once: the reply path costs only the metering. */
export const instantProvider: ReplyProvider = {
  async generate() {
    return { output: 'ok' };
  },
};

export function newMeter(storage: CreditStorage): CreditMeter {
  return new CreditMeter({ storage, providers: { openai: instantProvider } });
}

export async function createWorkspace(meter: CreditMeter, workspaceId: string): Promise<void> {
  await meter.createWorkspace({ workspaceId, plan: 'enterprise', allotment: ALLOTMENT });
}

/** Counts the charges that succeeded per workspace, for the end-of-run check. */
export class Tally {
  readonly counts = new Map<string, number>();

  add(workspaceId: string): void {
    this.counts.set(workspaceId, (this.counts.get(workspaceId) ?? 0) + 1);
  }

  get(workspaceId: string): number {
    return this.counts.get(workspaceId) ?? 0;
  }
}

/** `reserve` + `settle` on the workspace `pick(i)` chooses. */
export function reserveSettle(meter: CreditMeter, pick: (i: number) => string, tally: Tally) {
  return async (i: number): Promise<void> => {
    const workspaceId = pick(i);
    const hold = await meter.reserve({
      workspaceId,
      agentId: AGENTS[i & 7]!,
      conversationId: CONVERSATIONS[i & 255]!,
      model: MODEL,
    });
    await meter.settle({ workspaceId, replyId: hold.replyId });
    tally.add(workspaceId);
  };
}

/** `reply` with the instant provider on the workspace `pick(i)` chooses. */
export function replyOp(meter: CreditMeter, pick: (i: number) => string, tally: Tally) {
  return async (i: number): Promise<void> => {
    const workspaceId = pick(i);
    await meter.reply({
      workspaceId,
      agentId: AGENTS[i & 7]!,
      conversationId: CONVERSATIONS[i & 255]!,
      model: MODEL,
      input: 'hi',
    });
    tally.add(workspaceId);
  };
}

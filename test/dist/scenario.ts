import type * as Credits from '../../src/index.js';

/** The package's main entry, typed from the sources: the values come from the built `dist/`. */
export type CreditsModule = typeof Credits;

/**
 * What a user does first, run against a copy of the package: a Hobby workspace, two replies
 * through a fake provider, a reply on an unknown model refused, then the ledger read back.
 */
export async function endToEnd(credits: CreditsModule) {
  const calls: string[] = [];
  const provider: Credits.ReplyProvider = {
    async generate(request) {
      calls.push(request.model);
      return { output: `reply from ${request.model}` };
    },
  };
  const meter = new credits.CreditMeter({
    storage: new credits.MemoryStorage(),
    providers: { openai: provider, anthropic: provider, bookbag: provider },
  });
  const created = await meter.createWorkspace({ workspaceId: 'ws_dist', plan: 'hobby' });
  const turn = { workspaceId: 'ws_dist', agentId: 'support', conversationId: 'c_1' };
  const first = await meter.reply({ ...turn, model: 'gpt-4o-mini', input: 'Hi', replyId: 'r_1' });
  const second = await meter.reply({ ...turn, model: 'claude-haiku-4-5', input: 'And?', replyId: 'r_2' });
  const retried = await meter.reply({ ...turn, model: 'claude-haiku-4-5', input: 'And?', replyId: 'r_2' });
  const refused = await meter.reply({ ...turn, model: 'no-such-model', input: 'Hi' }).then(
    () => undefined,
    (error: unknown) => error,
  );
  const workspace = await meter.getWorkspace('ws_dist');
  const { entries } = await meter.ledger({ workspaceId: 'ws_dist', limit: 100 });
  const ledgerSum = entries.reduce((sum, entry) => sum.plus(entry.credits), new credits.Decimal(0));
  return { created, first, second, retried, refused, workspace, entries, ledgerSum, calls };
}

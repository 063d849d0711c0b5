/**
 * The scenario the PostgreSQL and Redis examples share: two "app servers" (two meters, each
 * on its own store connection to one database) answering replies on one workspace at once,
 * then the balance, ledger and usage read back through either of them.
 */
import { CreditMeter, type CreditStorage, type ReplyProvider } from '../../src/index.js';

// A stand-in for the host's LLM client: answers at once, never calls a network.
const fakeLlm: ReplyProvider = {
  async generate(request) {
    return { output: `[${request.model}] answer to "${String(request.input)}"` };
  },
};
const providers = { openai: fakeLlm, anthropic: fakeLlm, bookbag: fakeLlm };

export async function twoAppServers(serverAStore: CreditStorage, serverBStore: CreditStorage): Promise<void> {
  const serverA = new CreditMeter({ storage: serverAStore, providers });
  const serverB = new CreditMeter({ storage: serverBStore, providers });
  // Optional: the store migrates on first use too. Safe when several servers run it at once.
  await serverAStore.migrate();
  await serverA.createWorkspace({ workspaceId: 'acme', plan: 'hobby' });

  const questions = ['Where is my order?', 'Can I change my plan?', 'Do you ship to Norway?', 'What is your refund policy?'];
  const replies = await Promise.all(
    questions.map((input, i) =>
      (i % 2 ? serverB : serverA).reply({
        workspaceId: 'acme',
        agentId: i % 2 ? 'sales' : 'support',
        conversationId: `c${i}`,
        model: 'claude-haiku-4-5',
        input,
      }),
    ),
  );
  for (const reply of replies) console.log(`${reply.replyId}  ${reply.agentId.padEnd(7)}  -${reply.credits.toString()} credits`);

  const summary = await serverB.getWorkspace('acme');
  console.log(`balance: ${summary.balance.toString()} of ${summary.allotment.toString()} credits (plan ${summary.plan})`);
  const page = await serverA.ledger({ workspaceId: 'acme' });
  console.log(`ledger: ${page.entries.map((entry) => `${entry.kind} ${entry.credits.toString()}`).join(', ')}`);
  const now = Date.now();
  const usage = await serverA.usage({
    workspaceId: 'acme',
    from: new Date(now - 86_400_000),
    to: new Date(now + 60_000),
    groupBy: 'agent',
  });
  for (const row of usage.rows) console.log(`usage: ${row.key} ${row.credits.toString()} credits in ${row.replies} replies`);
}

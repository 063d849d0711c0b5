/**
 * Self-hosted mode: nothing is charged or blocked and no workspace needs a plan, but
 * every reply is still recorded, so usage analytics work the same.
 *
 *   npx tsx examples/self-hosted.ts
 */
import { CreditMeter } from '../src/index.js';

const meter = new CreditMeter({
  mode: 'self-hosted',
  providers: { bookbag: { generate: async () => ({ output: 'ok' }) }, openai: { generate: async () => ({ output: 'ok' }) } },
});

for (let i = 0; i < 250; i++) {
  await meter.reply({
    workspaceId: 'my-team',
    agentId: i % 2 ? 'support' : 'docs',
    conversationId: `c${i % 40}`,
    model: i % 5 ? 'bookbag-local' : 'gpt-4o',
    input: 'hi',
  });
}
const from = new Date(Date.now() - 86_400_000);
const to = new Date(Date.now() + 86_400_000);
const { rows, totalReplies, totalCredits } = await meter.usage({ workspaceId: 'my-team', from, to, groupBy: 'model' });
for (const row of rows) console.log(`${row.key.padEnd(14)} ${String(row.replies).padStart(4)} replies, ${row.credits} credits`);
console.log(`total: ${totalReplies} replies, ${totalCredits} credits charged`);

/**
 * A meter on Redis: a Hobby workspace, replies from two "app servers" (two meters, each
 * with its own connection) racing on one balance, then the balance, ledger and usage read
 * back. Every operation is one Lua script, so the servers never overspend.
 *
 *   REDIS_URL=redis://127.0.0.1:6379 npx tsx examples/redis.ts
 *
 * The example writes under a fresh key prefix and deletes nothing else.
 */
import { randomUUID } from 'node:crypto';
import { CreditMeter, type ReplyProvider } from '../src/index.js';
import { RedisStorage } from '../src/adapters/redis/index.js';

const url = process.env['REDIS_URL'];
if (!url) {
  console.log('Set REDIS_URL to run this example against a Redis server, e.g.');
  console.log('  REDIS_URL=redis://127.0.0.1:6379 npx tsx examples/redis.ts');
  process.exit(0);
}

// A stand-in for the host's LLM client: answers at once, never calls a network.
const fakeLlm: ReplyProvider = {
  async generate(request) {
    return { output: `[${request.model}] answer to "${String(request.input)}"` };
  },
};
const providers = { openai: fakeLlm, anthropic: fakeLlm, bookbag: fakeLlm };

const keyPrefix = `credits-example:${randomUUID()}:`;
const stores = [new RedisStorage({ url, keyPrefix }), new RedisStorage({ url, keyPrefix })];
const [serverA, serverB] = stores.map((storage) => new CreditMeter({ storage, providers }));
try {
  await serverA!.createWorkspace({ workspaceId: 'acme', plan: 'hobby' });

  const questions = ['Where is my order?', 'Can I change my plan?', 'Do you ship to Norway?', 'What is your refund policy?'];
  const replies = await Promise.all(
    questions.map((input, i) =>
      (i % 2 ? serverB! : serverA!).reply({ workspaceId: 'acme', agentId: i % 2 ? 'sales' : 'support', conversationId: `c${i}`, model: 'claude-haiku-4-5', input }),
    ),
  );
  for (const reply of replies) console.log(`${reply.replyId.slice(0, 8)}  ${reply.agentId.padEnd(7)}  -${reply.credits.toString()} credits`);

  const summary = await serverB!.getWorkspace('acme');
  console.log(`balance: ${summary.balance.toString()} of ${summary.allotment.toString()} credits (plan ${summary.plan})`);
  const page = await serverA!.ledger({ workspaceId: 'acme' });
  console.log(`ledger: ${page.entries.map((entry) => `${entry.kind} ${entry.credits.toString()}`).join(', ')}`);
  const now = Date.now();
  const usage = await serverA!.usage({ workspaceId: 'acme', from: new Date(now - 86_400_000), to: new Date(now + 60_000), groupBy: 'agent' });
  for (const row of usage.rows) console.log(`usage: ${row.key} ${row.credits.toString()} credits in ${row.replies} replies`);
} finally {
  await Promise.all(stores.map((storage) => storage.close()));
}

/**
 * A meter on PostgreSQL: a Hobby workspace, replies from two "app servers" (two meters, each
 * with its own connection pool) racing on one balance, then the balance, ledger and usage
 * read back. Every operation is one transaction with the workspace locked, so the servers
 * never overspend; concurrent operations share transactions (group commit).
 *
 *   DATABASE_URL=postgres://user:pass@127.0.0.1:5432/db npx tsx examples/postgres.ts
 *
 * The example creates its tables in a fresh schema and drops that schema at the end.
 */
import { randomUUID } from 'node:crypto';
import { CreditMeter, type ReplyProvider } from '../src/index.js';
import { PostgresStorage } from '../src/adapters/postgres/index.js';

const connectionString = process.env['DATABASE_URL'];
if (!connectionString) {
  console.log('Set DATABASE_URL to run this example against a PostgreSQL server, e.g.');
  console.log('  DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres npx tsx examples/postgres.ts');
  process.exit(0);
}

// A stand-in for the host's LLM client: answers at once, never calls a network.
const fakeLlm: ReplyProvider = {
  async generate(request) {
    return { output: `[${request.model}] answer to "${String(request.input)}"` };
  },
};
const providers = { openai: fakeLlm, anthropic: fakeLlm, bookbag: fakeLlm };

const schema = `credits_example_${randomUUID().replaceAll('-', '')}`;
const stores = [new PostgresStorage({ connectionString, schema }), new PostgresStorage({ connectionString, schema })];
const [serverA, serverB] = stores.map((storage) => new CreditMeter({ storage, providers }));
try {
  // Optional: the store migrates on first use too. Safe when several servers run it at once.
  await stores[0]!.migrate();
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
  // Remove the example's schema with a plain pg client (the store never drops anything).
  const pg = await import('pg');
  const client = new pg.default.Client({ connectionString });
  await client.connect();
  await client.query(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`);
  await client.end();
}

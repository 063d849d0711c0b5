/**
 * A meter on a SQLite file: a Hobby workspace, a few replies, a hold taken before a restart
 * and settled after it, and the balance read back from the reopened file.
 *
 *   npx tsx examples/sqlite.ts
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { SqliteStorage } from '../src/adapters/sqlite/index.js';
import { CreditMeter, type ReplyProvider } from '../src/index.js';

// A stand-in for the host's LLM client: answers at once, never calls a network.
const fakeLlm: ReplyProvider = {
  async generate(request) {
    return { output: `[${request.model}] answer to "${String(request.input)}"` };
  },
};
const providers = { openai: fakeLlm, anthropic: fakeLlm, bookbag: fakeLlm };

const dir = mkdtempSync(join(tmpdir(), 'credits-example-'));
const filename = join(dir, 'credits.db');
try {
  const storage = new SqliteStorage({ filename });
  const meter = new CreditMeter({ storage, providers });
  await meter.createWorkspace({ workspaceId: 'acme', plan: 'hobby' });

  // Replies issued together reach the store as one commit (one transaction, one fsync), each
  // with its own outcome.
  const replies = await Promise.all(
    ['Where is my order?', 'Can I change my plan?', 'Do you ship to Norway?'].map((input, i) =>
      meter.reply({ workspaceId: 'acme', agentId: 'support', conversationId: `c${i}`, model: 'claude-haiku-4-5', input }),
    ),
  );
  for (const reply of replies) console.log(`${reply.conversationId}  ${reply.model}  -${reply.credits.toString()} credits`);
  const hold = await meter.reserve({ workspaceId: 'acme', agentId: 'support', conversationId: 'c3', model: 'gpt-4o' });
  await storage.close();

  // A new process (or a restart) sees the same balance: it is in the file.
  const reopened = new SqliteStorage({ filename });
  const again = new CreditMeter({ storage: reopened, providers });
  console.log(`held before the restart: ${(await again.getWorkspace('acme')).held.toString()} credits`);
  await again.settle({ workspaceId: 'acme', replyId: hold.replyId });
  const summary = await again.getWorkspace('acme');
  console.log(`balance: ${summary.balance.toString()} of ${summary.allotment.toString()} credits (plan ${summary.plan})`);
  const page = await again.ledger({ workspaceId: 'acme' });
  console.log(`ledger: ${page.entries.map((entry) => `${entry.kind} ${entry.credits.toString()}`).join(', ')}`);
  await reopened.close();
} finally {
  rmSync(dir, { recursive: true, force: true });
}

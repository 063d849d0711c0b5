/**
 * The whole job on the embedded memory store: a Hobby workspace with three agents
 * answering conversations on mixed models, one of them on the workspace's own OpenAI key,
 * until the credits run out and replies are blocked; then the allotment renews. Then what a
 * billing team does next: a refund for a bad answer, a correction, a cap on one agent, an
 * automatic recharge, and removing a workspace.
 *
 * Deterministic: a fake provider and a clock that moves 7 minutes per conversation turn.
 *
 *   npm run demo
 */
import { CreditMeter, CreditsError, type ReplyProvider } from '../src/index.js';

const start = Date.parse('2026-11-01T09:00:00Z');
let now = start;
const clock = () => new Date(now);

// A stand-in for the host's LLM clients: answers at once, never calls a network.
const fakeLlm: ReplyProvider = {
  async generate(request, { apiKey }) {
    return { output: `[${request.model}${apiKey ? ' via workspace key' : ''}] answer to "${String(request.input)}"` };
  },
};

const recharges: string[] = [];
const meter = new CreditMeter({
  clock,
  // Alerts at an absolute level beside the shares of the allotment.
  lowBalanceLevels: [100],
  // The host charges its customer here; the meter then adds the credits once per rechargeId.
  onRecharge: ({ rechargeId, credits }) => void recharges.push(`${rechargeId}: charged the card for ${credits} credits`),
  providers: { openai: fakeLlm, anthropic: fakeLlm, bookbag: fakeLlm },
  // The host's secret store: this workspace brought its own OpenAI key.
  byoKeys: ({ workspaceId, provider }) => (workspaceId === 'acme' && provider === 'openai' ? 'sk-acme-own-key' : undefined),
});

const alerts: string[] = [];
meter.on(
  'balance.low',
  (e) => void alerts.push(`${new Date(e.at).toISOString().slice(0, 16)}  ${e.threshold * 100}% of the allotment used`),
);
meter.on(
  'period.renewed',
  (e) => void alerts.push(`${e.periodStart.toISOString().slice(0, 16)}  renewed: ${e.allotment} credits (${e.expired} unused expired)`),
);
meter.on(
  'balance.below',
  (e) => void alerts.push(`${e.at.toISOString().slice(0, 16)}  ${e.available} credits left (at or below ${e.level})`),
);

const agents = [
  { agentId: 'support', model: 'claude-sonnet-4-6' }, // 4 credits a reply
  { agentId: 'sales', model: 'claude-haiku-4-5' }, // 2 credits a reply
  { agentId: 'faq', model: 'gpt-4o' }, // provider-backed: free on the workspace's own key
] as const;

await meter.createWorkspace({ workspaceId: 'acme', plan: 'hobby' });
const before = await meter.getWorkspace('acme');
console.log(`Workspace acme on the ${before.plan} plan: ${before.balance} credits, renews ${day(before.renewsAt)}`);

let blocked = 0;
let replies = 0;
for (let conversation = 1; blocked < 10; conversation++) {
  for (const { agentId, model } of agents) {
    // Three replies per conversation: each reply is charged.
    for (let turn = 1; turn <= 3; turn++) {
      try {
        await meter.reply({ workspaceId: 'acme', agentId, conversationId: `${agentId}-${conversation}`, model, input: `question ${turn}` });
        replies++;
      } catch (error) {
        if (CreditsError.is(error) && error.code === 'INSUFFICIENT_CREDITS') blocked++;
        else throw error;
      }
      now += 7 * 60_000;
    }
  }
}
const afterRun = await meter.getWorkspace('acme');

const monthStart = new Date(start);
const monthEnd = afterRun.renewsAt;
const perAgent = await meter.usage({ workspaceId: 'acme', from: monthStart, to: monthEnd, groupBy: 'agent' });
printTable(
  'Usage per agent this period',
  ['agent', 'model', 'replies', 'credits'],
  perAgent.rows.map((row) => [row.key, agents.find((a) => a.agentId === row.key)?.model ?? '', row.replies, row.credits.toString()]),
);

const perDay = await meter.usage({ workspaceId: 'acme', from: monthStart, to: monthEnd, groupBy: 'agent', interval: 'day' });
printTable(
  'Credits per day',
  ['day', ...agents.map((a) => a.agentId)],
  [...new Set(perDay.rows.map((r) => day(r.bucket!)))].map((d) => [
    d,
    ...agents.map((a) => perDay.rows.find((r) => day(r.bucket!) === d && r.key === a.agentId)?.credits.toString() ?? '0'),
  ]),
);

printTable(
  'Balance',
  ['', ''],
  [
    ['replies answered', replies],
    ['replies blocked (out of credits)', blocked],
    ['credits used', afterRun.usedThisPeriod.toString()],
    ['balance', afterRun.balance.toString()],
    ['renews at', afterRun.renewsAt.toISOString().slice(0, 16)],
    ['claude-haiku-4-5 replies left', afterRun.repliesLeft['claude-haiku-4-5'] ?? 'unlimited'],
    ['faq replies (own OpenAI key)', perAgent.rows.find((r) => r.key === 'faq')?.replies ?? 0],
  ],
);

// The next operation after the period end renews the allotment: no cron.
now = afterRun.renewsAt.getTime();
const renewed = await meter.reply({
  workspaceId: 'acme',
  agentId: 'support',
  conversationId: 'after-renewal',
  model: 'claude-sonnet-4-6',
  input: 'hello again',
});
const afterRenewal = await meter.getWorkspace('acme');
console.log(
  `\nAfter renewal: a ${renewed.model} reply cost ${renewed.credits}; balance ${afterRenewal.balance}, renews ${day(afterRenewal.renewsAt)}`,
);

// What support and finance do next.
const lastSupport = (await meter.ledger({ workspaceId: 'acme', agentId: 'support', limit: 1000 })).entries
  .filter((e) => e.kind === 'reply')
  .at(-1)!;
const refund = await meter.refund({
  workspaceId: 'acme',
  replyId: lastSupport.replyId!,
  refundId: 'ticket-4711',
  reason: 'answered with the wrong return policy',
});
const credit = await meter.adjust({
  workspaceId: 'acme',
  adjustmentId: 'fin-2026-12-1',
  credits: 50,
  reason: 'goodwill for the outage on Dec 2',
});
await meter.setAgentLimit({ workspaceId: 'acme', agentId: 'sales', credits: 10, models: ['claude-haiku-4-5', 'gpt-4o-mini'] });
let salesReplies = 0;
let salesCapped = '';
for (let turn = 1; turn <= 10 && !salesCapped; turn++) {
  try {
    await meter.reply({
      workspaceId: 'acme',
      agentId: 'sales',
      conversationId: 'capped',
      model: 'claude-haiku-4-5',
      input: `lead ${turn}`,
    });
    salesReplies++;
  } catch (error) {
    if (CreditsError.is(error) && error.code === 'AGENT_LIMIT_REACHED') salesCapped = error.message;
    else throw error;
  }
}
await meter.setRecharge({ workspaceId: 'acme', recharge: { below: 1700, credits: 1000 } });
for (let turn = 1; turn <= 120; turn++) {
  await meter.reply({
    workspaceId: 'acme',
    agentId: 'support',
    conversationId: 'busy-day',
    model: 'claude-sonnet-4-6',
    input: `question ${turn}`,
  });
  now += 60_000;
}
const afterBilling = await meter.getWorkspace('acme');
console.log('\nBilling operations');
console.log(`  refund for a bad answer: ${refund.credits} credits back, reason "${refund.reason}"`);
console.log(`  adjustment: +${credit.credits} credits, reason "${credit.reason}"`);
console.log(`  sales capped at 10 credits a period: ${salesReplies} replies, then ${salesCapped.split(';')[0]}`);
console.log(`  automatic recharge below 1,700 credits: ${recharges.join('; ') || 'none'}`);
console.log(`  balance now: ${afterBilling.balance} credits`);

const month = await meter.usage({ workspaceId: 'acme', from: afterRun.renewsAt, to: afterBilling.renewsAt, groupBy: 'agent' });
printTable(
  'Usage this period, gross and net of refunds',
  ['agent', 'replies', 'credits', 'refunded', 'net'],
  month.rows.map((row) => [row.key, row.replies, row.credits.toString(), row.refunded.toString(), row.net.toString()]),
);

console.log('\nAlerts');
for (const alert of alerts) console.log(`  ${alert}`);

// Every reply, grant, expiry, refund and adjustment is a ledger entry; the balance is their sum.
let entries = 0;
let sum = 0;
let cursor: string | undefined;
do {
  const page = await meter.ledger({ workspaceId: 'acme', limit: 1000, ...(cursor && { cursor }) });
  entries += page.entries.length;
  for (const entry of page.entries) sum += Math.round(Number(entry.credits) * 1e6);
  cursor = page.nextCursor;
} while (cursor);
const total = afterBilling.balance.plus(afterBilling.held);
console.log(
  `\nLedger: ${entries} entries summing to ${sum / 1e6} credits = balance ${afterBilling.balance} + held ${afterBilling.held}: ${sum / 1e6 === Number(total) ? 'yes' : 'NO'}`,
);

// A customer leaves: remove the workspace, keeping an anonymised ledger for the books.
await meter.createWorkspace({ workspaceId: 'globex', plan: 'free' });
const listed = (await meter.listWorkspaces()).workspaces;
await meter.deleteWorkspace({ workspaceId: 'globex', keepLedger: true });
console.log(
  `Workspaces: ${listed.join(', ')}; globex removed, its ledger kept without agent or conversation ids (${(await meter.ledger({ workspaceId: 'globex' })).entries.length} entry)`,
);
if (sum / 1e6 !== Number(total)) process.exit(1);

function day(date: Date): string {
  return date.toISOString().slice(0, 10);
}

function printTable(title: string, header: readonly string[], rows: ReadonlyArray<ReadonlyArray<string | number>>): void {
  const cells = [header, ...rows].map((row) => row.map(String));
  const widths = header.map((_, i) => Math.max(...cells.map((row) => row[i]?.length ?? 0)));
  const line = (row: readonly string[]) => row.map((cell, i) => (i === 0 ? cell.padEnd(widths[i]!) : cell.padStart(widths[i]!))).join('  ');
  console.log(`\n${title}`);
  if (header.some((h) => h !== '')) {
    console.log(`  ${line(cells[0]!)}`);
    console.log(`  ${widths.map((w) => '─'.repeat(w)).join('  ')}`);
  }
  for (const row of cells.slice(1)) console.log(`  ${line(row)}`);
}

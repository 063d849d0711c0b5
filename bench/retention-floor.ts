/**
 * The floor under any in-memory store that keeps an idempotency key and a ledger row per
 * charged reply: insert a fresh key into a Map and keep one reply record and one ledger row
 * per iteration, nothing else. docs/benchmarks.md compares the memory store against it.
 *
 *   npx tsx bench/retention-floor.ts
 */
const N = 1_000_000;
const ids = Array.from({ length: N }, (_, i) => `reply-${i}`);

function run(): number {
  const replies = new Map<string, { record: object; allocations: null }>();
  const ledger: object[] = [];
  const started = performance.now();
  for (let i = 0; i < N; i++) {
    const replyId = ids[i]!;
    const record = {
      replyId,
      workspaceId: 'w',
      agentId: 'a',
      conversationId: 'c',
      model: 'm',
      route: 'credits',
      amount: 1,
      priceVersion: 'v',
      status: 'settled',
      createdAt: i,
      expiresAt: i,
      finishedAt: i,
      entryId: null,
    };
    replies.set(replyId, { record, allocations: null });
    ledger.push({
      id: String(i),
      workspaceId: 'w',
      kind: 'reply',
      amount: -1,
      at: i,
      replyId,
      agentId: 'a',
      conversationId: 'c',
      model: 'm',
      route: 'credits',
      priceVersion: 'v',
      grantId: null,
      plan: null,
    });
  }
  const elapsed = performance.now() - started;
  if (replies.size !== N || ledger.length !== N) throw new Error('lost writes');
  return (N / elapsed) * 1000;
}

const rounds = [run(), run(), run()].sort((a, b) => a - b);
console.log(
  `retention floor: ${Math.round(rounds[1]!).toLocaleString('en-US')} iterations/s (median of 3; rounds ${rounds.map((r) => Math.round(r).toLocaleString('en-US')).join(' / ')})`,
);

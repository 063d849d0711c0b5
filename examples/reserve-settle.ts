/**
 * For hosts that call their LLM themselves: hold the cost, call the model, then settle
 * (charge) or release (no charge). The replyId makes retries safe.
 *
 *   npx tsx examples/reserve-settle.ts
 */
import { CreditMeter, CreditsError } from '../src/index.js';

const meter = new CreditMeter();
await meter.createWorkspace({ workspaceId: 'ws_1', plan: 'free' });

async function answer(messageId: string, question: string, callModel: (q: string) => Promise<string>): Promise<string> {
  const reply = { workspaceId: 'ws_1', agentId: 'helpdesk', conversationId: 'conv_7', model: 'claude-haiku-4-5', replyId: messageId };
  const quote = await meter.quote(reply); // free: nothing is held or charged
  if (!quote.allowed) return `Out of credits until ${quote.renewsAt?.toISOString()}`;

  const hold = await meter.reserve(reply); // throws INSUFFICIENT_CREDITS if someone spent it meanwhile
  if (hold.status === 'settled') return '(already answered)'; // a retry of a charged reply
  try {
    const text = await callModel(question);
    await meter.settle({ workspaceId: reply.workspaceId, replyId: hold.replyId });
    return text;
  } catch (error) {
    await meter.release({ workspaceId: reply.workspaceId, replyId: hold.replyId });
    throw error;
  }
}

console.log(await answer('msg_1', 'Hi?', async () => 'Hello!'));
console.log(await answer('msg_1', 'Hi?', async () => 'Hello!')); // the same message again: no second charge
await answer('msg_2', 'Hi?', async () => {
  throw new Error('model timed out');
}).catch((error: Error) => console.log(`failed: ${error.message} (nothing charged)`));

const ws = await meter.getWorkspace('ws_1');
console.log(`balance ${ws.balance} (one Claude Haiku 4.5 reply at 2 credits)`);
try {
  await meter.settle({ workspaceId: 'ws_1', replyId: 'msg_2' });
} catch (error) {
  if (CreditsError.is(error)) console.log(`settling a released reply: ${error.code}`);
}

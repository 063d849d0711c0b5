/**
 * A ReplyProvider around the official Anthropic client, with bring-your-own-key support.
 *
 * Runs offline: the client gets a `fetch` that answers like the Anthropic API, so the
 * example exercises the real SDK without a network. In production, drop `fetch`.
 *
 *   npx tsx examples/anthropic-provider.ts
 */
import Anthropic from '@anthropic-ai/sdk';
import { CreditMeter, InsufficientCreditsError, type ReplyProvider } from '../src/index.js';

export function anthropicProvider(options: { platformKey: string; fetch?: typeof fetch }): ReplyProvider {
  const client = (apiKey: string) => new Anthropic({ apiKey, maxRetries: 0, ...(options.fetch && { fetch: options.fetch }) });
  const platform = client(options.platformKey);
  return {
    async generate(request, { apiKey, signal }) {
      const message = await (apiKey ? client(apiKey) : platform).messages.create(
        { model: request.model, max_tokens: 1024, messages: request.input as Anthropic.MessageParam[] },
        signal ? { signal } : {},
      );
      return { output: message.content.map((block) => (block.type === 'text' ? block.text : '')).join('') };
    },
  };
}

// ─── an offline stand-in for the Anthropic API ──────────────────────────────
const offlineFetch: typeof fetch = async (_url, init) => {
  const body = JSON.parse(String(init?.body)) as { model: string };
  return Response.json({
    id: 'msg_1',
    type: 'message',
    role: 'assistant',
    model: body.model,
    content: [{ type: 'text', text: 'Returns are free within 30 days.' }],
    stop_reason: 'end_turn',
    stop_sequence: null,
    usage: { input_tokens: 12, output_tokens: 9 },
  });
};

const meter = new CreditMeter({ providers: { anthropic: anthropicProvider({ platformKey: 'sk-ant-platform', fetch: offlineFetch }) } });
await meter.createWorkspace({ workspaceId: 'shop', plan: 'free' });

const input: Anthropic.MessageParam[] = [{ role: 'user', content: 'Can I return this?' }];
let answered = 0;
try {
  for (;;) {
    await meter.reply({ workspaceId: 'shop', agentId: 'returns', conversationId: `c${answered}`, model: 'claude-sonnet-4-6', input });
    answered++;
  }
} catch (error) {
  if (!(error instanceof InsufficientCreditsError)) throw error;
  console.log(`${answered} Claude Sonnet 4.6 replies at 4 credits used the Free plan's 100 credits.`);
  console.log(`Blocked: needs ${error.required}, has ${error.available}; renews ${error.renewsAt?.toISOString()}`);
}

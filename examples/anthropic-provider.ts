/**
 * The Anthropic entry, `@bookbag/credits/anthropic`, around the official `@anthropic-ai/sdk`
 * client: Claude replies charged until the Free plan's credits run out, then refused before
 * the model is called; a system prompt passed with the messages; a streamed reply.
 *
 * Runs offline: the client talks to a local stand-in for the Anthropic API, started in-process.
 * In production, drop `baseURL`.
 *
 *   npx tsx examples/anthropic-provider.ts
 */
import Anthropic from '@anthropic-ai/sdk';
import { CreditMeter, InsufficientCreditsError } from '../src/index.js';
import { anthropicProvider } from '../src/providers/anthropic.js';
import { startFakeLlmServer } from './shared/fake-llm-server.js';

const api = await startFakeLlmServer(); // stands in for api.anthropic.com

try {
  const meter = new CreditMeter({
    providers: {
      anthropic: anthropicProvider({
        client: (apiKey) => new Anthropic({ apiKey: apiKey ?? 'sk-ant-platform', baseURL: api.anthropicBaseURL }),
        maxTokens: 512,
      }),
    },
  });
  await meter.createWorkspace({ workspaceId: 'shop', plan: 'free' });

  const input = { system: 'You answer questions about returns.', messages: [{ role: 'user', content: 'Can I return this?' }] };
  const stream = await meter.replyStream({
    workspaceId: 'shop',
    agentId: 'returns',
    conversationId: 'c0',
    model: 'claude-sonnet-4-6',
    input,
  });
  process.stdout.write('streamed: ');
  for await (const chunk of stream) process.stdout.write(String(chunk));
  console.log(` (charged ${(await stream.result).credits} credits)`);

  let answered = 1;
  try {
    for (;;) {
      await meter.reply({ workspaceId: 'shop', agentId: 'returns', conversationId: `c${answered}`, model: 'claude-sonnet-4-6', input });
      answered++;
    }
  } catch (error) {
    if (!(error instanceof InsufficientCreditsError)) throw error;
    console.log(`${answered} Claude Sonnet 4.6 replies at 4 credits used the Free plan's 100 credits.`);
    console.log(`Blocked: needs ${error.required}, has ${error.available}; renews ${error.renewsAt?.toISOString()}`);
    console.log(`The API saw ${api.requests.length} requests: the blocked reply never reached it.`);
  }
} finally {
  await api.close();
}

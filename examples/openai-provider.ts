/**
 * The OpenAI entry, `@bookbag/credits/openai`, around the official `openai` client: platform
 * replies charged in credits, a workspace's own key (BYO) used for its replies at no charge,
 * a streamed reply charged once, and the Responses API.
 *
 * Runs offline: the clients talk to a local stand-in for the OpenAI API, started in-process.
 * In production, drop `baseURL`.
 *
 *   npx tsx examples/openai-provider.ts
 */
import OpenAI from 'openai';
import { CreditMeter } from '../src/index.js';
import { openaiProvider } from '../src/providers/openai.js';
import { startFakeLlmServer } from './shared/fake-llm-server.js';

const api = await startFakeLlmServer(); // stands in for api.openai.com
const baseURL = api.openaiBaseURL;

try {
  // A factory, not an instance: a workspace with its own key gets its own client (cached).
  const client = (apiKey: string | undefined) => new OpenAI({ apiKey: apiKey ?? 'sk-platform', baseURL });
  const meter = new CreditMeter({
    providers: { openai: openaiProvider({ client }) },
    byoKeys: ({ workspaceId, provider }) => (workspaceId === 'byo-shop' && provider === 'openai' ? 'sk-their-own' : undefined),
  });
  await meter.createWorkspace({ workspaceId: 'shop', plan: 'free' });
  await meter.createWorkspace({ workspaceId: 'byo-shop', plan: 'free' });

  const messages = [{ role: 'user', content: 'When does my order ship?' }];
  const platform = await meter.reply({ workspaceId: 'shop', agentId: 'support', conversationId: 'c1', model: 'gpt-4o', input: messages });
  console.log(`shop:      "${String(platform.output)}" cost ${platform.credits} credits (route ${platform.route})`);

  // Extra request parameters ride along with the messages.
  const own = await meter.reply({
    workspaceId: 'byo-shop',
    agentId: 'support',
    conversationId: 'c1',
    model: 'gpt-4o',
    input: { messages, temperature: 0.2 },
  });
  console.log(`byo-shop:  "${String(own.output)}" cost ${own.credits} credits (route ${own.route})`);

  const stream = await meter.replyStream({
    workspaceId: 'shop',
    agentId: 'support',
    conversationId: 'c2',
    model: 'gpt-4o-mini',
    input: messages,
  });
  process.stdout.write('streamed:  ');
  for await (const chunk of stream) process.stdout.write(String(chunk));
  console.log(` (charged ${(await stream.result).credits} credit once the stream ended)`);

  const responses = new CreditMeter({ providers: { openai: openaiProvider({ client, api: 'responses' }) } });
  await responses.createWorkspace({ workspaceId: 'shop', plan: 'free' });
  const answer = await responses.reply({
    workspaceId: 'shop',
    agentId: 'support',
    conversationId: 'c3',
    model: 'gpt-4o-mini',
    input: { input: 'When does my order ship?', instructions: 'Answer in one sentence.' },
  });
  console.log(`responses: "${String(answer.output)}" cost ${answer.credits} credit`);
  console.log(`shop balance: ${(await meter.getWorkspace('shop')).balance}`);
} finally {
  await api.close();
}

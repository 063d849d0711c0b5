/**
 * A ReplyProvider around the official OpenAI client, with bring-your-own-key support:
 * a workspace's own key gets its own client; everyone else uses the platform's.
 *
 * Runs offline: the clients get a `fetch` that answers like the OpenAI API, so the
 * example exercises the real SDK without a network. In production, drop `fetch`.
 *
 *   npx tsx examples/openai-provider.ts
 */
import OpenAI from 'openai';
import { CreditMeter, type ReplyProvider } from '../src/index.js';

type ChatMessage = OpenAI.Chat.Completions.ChatCompletionMessageParam;

export function openAiProvider(options: { platformKey: string; fetch?: typeof fetch }): ReplyProvider {
  const clients = new Map<string, OpenAI>();
  const clientFor = (apiKey: string) => {
    let client = clients.get(apiKey);
    if (!client) {
      client = new OpenAI({ apiKey, maxRetries: 0, ...(options.fetch && { fetch: options.fetch }) });
      clients.set(apiKey, client);
    }
    return client;
  };
  return {
    async generate(request, { apiKey, signal }) {
      const completion = await clientFor(apiKey ?? options.platformKey).chat.completions.create(
        { model: request.model, messages: request.input as ChatMessage[] },
        signal ? { signal } : {},
      );
      return { output: completion.choices[0]?.message.content ?? '' };
    },
    async *stream(request, { apiKey, signal }) {
      const stream = await clientFor(apiKey ?? options.platformKey).chat.completions.create(
        { model: request.model, messages: request.input as ChatMessage[], stream: true },
        signal ? { signal } : {},
      );
      for await (const chunk of stream) {
        const text = chunk.choices[0]?.delta.content;
        if (text) yield text;
      }
    },
  };
}

// ─── an offline stand-in for the OpenAI API ─────────────────────────────────
const offlineFetch: typeof fetch = async (_url, init) => {
  const body = JSON.parse(String(init?.body)) as { model: string; stream?: boolean };
  const words = ['Your', ' order', ' ships', ' tomorrow.'];
  if (body.stream) {
    const events = words.map((w, i) => ({ id: 'c1', object: 'chat.completion.chunk', created: 0, model: body.model, choices: [{ index: 0, delta: { content: w }, finish_reason: i === words.length - 1 ? 'stop' : null }] }));
    const text = events.map((e) => `data: ${JSON.stringify(e)}\n\n`).join('') + 'data: [DONE]\n\n';
    return new Response(text, { headers: { 'content-type': 'text/event-stream' } });
  }
  return Response.json({
    id: 'c1',
    object: 'chat.completion',
    created: 0,
    model: body.model,
    choices: [{ index: 0, message: { role: 'assistant', content: words.join(''), refusal: null }, finish_reason: 'stop', logprobs: null }],
  });
};

const meter = new CreditMeter({
  providers: { openai: openAiProvider({ platformKey: 'sk-platform', fetch: offlineFetch }) },
  byoKeys: ({ workspaceId, provider }) => (workspaceId === 'byo-shop' && provider === 'openai' ? 'sk-their-own' : undefined),
});
await meter.createWorkspace({ workspaceId: 'shop', plan: 'free' });
await meter.createWorkspace({ workspaceId: 'byo-shop', plan: 'free' });

const messages: ChatMessage[] = [{ role: 'user', content: 'When does my order ship?' }];
const platform = await meter.reply({ workspaceId: 'shop', agentId: 'support', conversationId: 'c1', model: 'gpt-4o', input: messages });
console.log(`shop:     "${String(platform.output)}" cost ${platform.credits} credits (route ${platform.route})`);
const own = await meter.reply({ workspaceId: 'byo-shop', agentId: 'support', conversationId: 'c1', model: 'gpt-4o', input: messages });
console.log(`byo-shop: "${String(own.output)}" cost ${own.credits} credits (route ${own.route})`);

const stream = await meter.replyStream({ workspaceId: 'shop', agentId: 'support', conversationId: 'c2', model: 'gpt-4o-mini', input: messages });
process.stdout.write('streamed: ');
for await (const chunk of stream) process.stdout.write(String(chunk));
console.log(` — charged ${(await stream.result).credits} credit once the stream ended`);
console.log(`shop balance: ${(await meter.getWorkspace('shop')).balance}`);

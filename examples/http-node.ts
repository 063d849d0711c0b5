/**
 * A node:http endpoint that runs metered replies and answers every failure with
 * `toHttpError`: 402 with `Retry-After` when the credits ran out, 400 naming the field for a bad
 * input, 404 for an unknown workspace, 502 when the model provider failed (nothing charged).
 *
 * Self-checking: it starts the server on an ephemeral port, calls it once per case, prints the
 * answers and exits. Pass `--serve` to keep it running and try it with curl:
 *
 *   npx tsx examples/http-node.ts
 *   npx tsx examples/http-node.ts --serve
 *   curl -s localhost:<port>/reply -d '{"workspaceId":"shop","conversationId":"c1","message":"hi"}'
 */
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import OpenAI from 'openai';
import { toHttpError } from '../src/http/to-http-error.js';
import { CreditMeter } from '../src/index.js';
import { openaiProvider } from '../src/providers/openai.js';
import { startFakeLlmServer } from './shared/fake-llm-server.js';

const api = await startFakeLlmServer(); // stands in for api.openai.com
const meter = new CreditMeter({
  providers: { openai: openaiProvider({ client: new OpenAI({ apiKey: 'sk-platform', baseURL: api.openaiBaseURL, maxRetries: 0 }) }) },
});
await meter.createWorkspace({ workspaceId: 'shop', plan: 'free' });
await meter.createWorkspace({ workspaceId: 'tiny', plan: 'enterprise', allotment: 5 });

async function readJson(req: IncomingMessage): Promise<Record<string, unknown>> {
  const chunks: Buffer[] = [];
  for await (const chunk of req) chunks.push(chunk as Buffer);
  return JSON.parse(Buffer.concat(chunks).toString('utf8') || '{}') as Record<string, unknown>;
}

async function handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
  try {
    if (req.method !== 'POST' || req.url !== '/reply') {
      res.writeHead(404, { 'content-type': 'application/json' }).end(JSON.stringify({ code: 'NOT_FOUND', message: 'POST /reply' }));
      return;
    }
    const body = await readJson(req);
    // Stop the model (and charge nothing if no output yet) when the client hangs up.
    const controller = new AbortController();
    res.on('close', () => controller.abort());
    const reply = await meter.reply({
      workspaceId: body.workspaceId as string,
      agentId: 'web',
      conversationId: body.conversationId as string,
      model: 'gpt-4o',
      input: [{ role: 'user', content: String(body.message ?? '') }],
      signal: controller.signal,
    });
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ answer: reply.output, credits: reply.credits.toString(), replyId: reply.replyId }));
  } catch (error) {
    const { status, headers, body } = toHttpError(error);
    if (status >= 500) console.error('[reply] failed:', error); // the full error stays in your logs
    res.writeHead(status, headers).end(JSON.stringify(body));
  }
}

const server = createServer((req, res) => void handle(req, res));
await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/reply`;

if (process.argv.includes('--serve')) {
  console.log(`POST ${url}  (workspaces: shop, tiny; Ctrl-C to stop)`);
} else {
  const post = async (what: string, payload: Record<string, unknown>) => {
    const response = await fetch(url, { method: 'POST', body: JSON.stringify(payload) });
    const retryAfter = response.headers.get('retry-after');
    console.log(`${what.padEnd(22)} ${response.status} ${retryAfter ? `Retry-After: ${retryAfter}s ` : ''}${await response.text()}`);
    return response.status;
  };
  const statuses = [
    await post('a charged reply', { workspaceId: 'tiny', conversationId: 'c1', message: 'hi' }),
    await post('out of credits', { workspaceId: 'tiny', conversationId: 'c2', message: 'hi' }),
    await post('invalid input', { workspaceId: '', conversationId: 'c3' }),
    await post('unknown workspace', { workspaceId: 'nope', conversationId: 'c4' }),
  ];
  api.script({ kind: 'error', status: 500 });
  const previous = console.error;
  console.error = () => undefined; // keep the check's output short
  statuses.push(await post('provider failed', { workspaceId: 'shop', conversationId: 'c5', message: 'hi' }));
  console.error = previous;
  server.close();
  await api.close();
  const expected = [200, 402, 400, 404, 502];
  if (statuses.join() !== expected.join()) {
    console.error(`expected ${expected.join()}, got ${statuses.join()}`);
    process.exitCode = 1;
  }
}

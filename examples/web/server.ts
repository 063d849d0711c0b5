/**
 * The Plans & billing and Analytics screens, served with node:http on the embedded memory
 * store, seeded with a month of simulated replies (see demo-data.ts).
 *
 *   npx tsx examples/web/server.ts            # serves until Ctrl-C; PORT=8080 to pick the port
 *   npx tsx examples/web/server.ts --check    # CI: fetches both pages once and exits
 *
 * Pages: /billing (balance card, usage this period, buttons to spend, top up and renew) and
 * /analytics?from=YYYY-MM-DD&to=YYYY-MM-DD&interval=day|week|month (both days inclusive, UTC).
 */
import { randomUUID } from 'node:crypto';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { pathToFileURL } from 'node:url';
import { type CreditMeter, DEFAULT_MODEL_PRICES, type UsageInterval } from '../../src/index.js';
import { AGENTS, type DemoClock, seedDemo, WORKSPACE_ID } from './demo-data.js';
import { type HttpErrorAnswer, toHttpError } from './http-error.js';
import { analyticsPage, billingPage, CONTENT_SECURITY_POLICY, errorPage } from './pages.js';

/** Options of {@link startDemoServer}. */
export interface DemoServerOptions {
  /**
   * The port to listen on, on 127.0.0.1.
   * @default 0 (a free port)
   */
  port?: number;
}

/** A running demo server. */
export interface DemoServer {
  /** `http://127.0.0.1:<port>` */
  readonly url: string;
  /** The cloud meter behind the pages. */
  readonly meter: CreditMeter;
  /** The demo's workspace id. */
  readonly workspaceId: string;
  /** The simulated clock (the pages' "now"). */
  readonly clock: DemoClock;
  /** Stops listening and closes open connections. */
  close(): Promise<void>;
}

const DAY = 86_400_000;
const INTERVALS: readonly UsageInterval[] = ['day', 'week', 'month'];
const CLOUD_AGENTS: readonly string[] = AGENTS.filter((agent) => agent.meter === 'cloud').map((agent) => agent.agentId);
const ALL_AGENTS = AGENTS.map((agent) => agent.agentId).filter((agent, index, all) => all.indexOf(agent) === index);
const FLASH: Readonly<Record<string, string>> = {
  'topup-added': '500 credits added.',
  'topup-replayed': 'That purchase was already added: nothing added twice.',
  renewed: 'The clock moved to the renewal: a new period started with a fresh allotment.',
};

/**
 * Seeds the demo and starts the server.
 *
 * @example
 * ```ts
 * const demo = await startDemoServer();
 * const page = await fetch(`${demo.url}/billing`);
 * await demo.close();
 * ```
 */
export async function startDemoServer(options: DemoServerOptions = {}): Promise<DemoServer> {
  const { meter, clock } = await seedDemo();
  const byoProviders = new Set(['openai']);
  // Reply ids from a counter keep every page (and the screenshots) the same from run to run.
  let replies = 0;

  const handle = async (request: IncomingMessage, response: ServerResponse): Promise<void> => {
    const url = new URL(request.url ?? '/', 'http://localhost');
    const route = `${request.method} ${url.pathname}`;
    switch (route) {
      case 'GET /':
        return redirect(response, '/billing');
      case 'GET /billing':
        return html(response, 200, await renderBilling(FLASH[url.searchParams.get('flash') ?? ''] ?? sentMessage(url)));
      case 'GET /analytics':
        return renderAnalytics(url, response);
      case 'POST /reply':
        return sendReplies(request, response);
      case 'POST /top-up': {
        const form = await readForm(request);
        const grantId = form.get('grantId') ?? '';
        if (!/^[\w-]{1,100}$/.test(grantId)) return html(response, 400, errorPage(400, 'A purchase needs a grantId.'));
        const topUp = await meter.addCredits({ workspaceId: WORKSPACE_ID, credits: 500, grantId });
        return redirect(response, `/billing?flash=${topUp.replayed ? 'topup-replayed' : 'topup-added'}`);
      }
      case 'POST /renew': {
        await readForm(request);
        const { renewsAt } = await meter.getWorkspace(WORKSPACE_ID);
        clock.set(renewsAt);
        return redirect(response, '/billing?flash=renewed');
      }
      default: {
        const known = ['/', '/billing', '/analytics', '/reply', '/top-up', '/renew'].includes(url.pathname);
        return html(response, known ? 405 : 404, errorPage(known ? 405 : 404, known ? 'Method not allowed.' : 'No such page.'));
      }
    }
  };

  async function renderBilling(flash?: string, refused?: HttpErrorAnswer): Promise<string> {
    const summary = await meter.getWorkspace(WORKSPACE_ID);
    const window = { workspaceId: WORKSPACE_ID, from: summary.periodStart, to: summary.periodEnd };
    const [byAgent, byModel] = await Promise.all([
      meter.usage({ ...window, groupBy: 'agent' }),
      meter.usage({ ...window, groupBy: 'model' }),
    ]);
    return billingPage({
      summary,
      byAgent,
      byModel,
      agents: CLOUD_AGENTS,
      models: DEFAULT_MODEL_PRICES.models.map((model) => ({
        id: model.id,
        name: model.name,
        credits: model.credits.toString(),
        route:
          model.providerBacked && byoProviders.has(model.provider)
            ? 'own key, free'
            : `${model.credits} ${model.credits.equals(1) ? 'credit' : 'credits'}`,
      })),
      grantId: `topup-${randomUUID()}`,
      flash,
      refused,
    });
  }

  async function renderAnalytics(url: URL, response: ServerResponse): Promise<void> {
    const summary = await meter.getWorkspace(WORKSPACE_ID);
    const today = day(clock());
    const defaults = { from: day(summary.periodStart), to: today, interval: 'day' as UsageInterval };
    const from = url.searchParams.get('from') || defaults.from;
    const to = url.searchParams.get('to') || defaults.to;
    const interval = (url.searchParams.get('interval') || defaults.interval) as UsageInterval;
    const fromDate = parseDay(from);
    const toDate = parseDay(to);
    let error: string | undefined;
    if (!fromDate || !toDate || !INTERVALS.includes(interval)) error = 'Pick two dates (YYYY-MM-DD) and an interval of day, week or month.';
    else if (toDate < fromDate) error = 'The window ends before it starts.';
    else if (toDate.getTime() - fromDate.getTime() > 731 * DAY) error = 'Pick a window of at most two years.';
    const form = error ? defaults : { from, to, interval };
    const window = {
      workspaceId: WORKSPACE_ID,
      from: new Date(`${form.from}T00:00:00Z`),
      to: new Date(Date.parse(`${form.to}T00:00:00Z`) + DAY),
    };
    const [chart, byModel] = await Promise.all([
      meter.usage({ ...window, groupBy: 'agent', interval: form.interval }),
      meter.usage({ ...window, groupBy: 'model' }),
    ]);
    const query = (params: Record<string, string>): string => `/analytics?${new URLSearchParams(params).toString()}`;
    const presets = [
      { label: 'This period by day', href: query({ from: defaults.from, to: today, interval: 'day' }) },
      { label: 'Last 7 days', href: query({ from: day(new Date(clock().getTime() - 6 * DAY)), to: today, interval: 'day' }) },
      { label: 'This period by week', href: query({ from: defaults.from, to: today, interval: 'week' }) },
      {
        label: 'Last 12 months by month',
        href: query({ from: day(new Date(clock().getTime() - 365 * DAY)), to: today, interval: 'month' }),
      },
    ];
    html(response, error ? 400 : 200, analyticsPage({ chart, byModel, agents: ALL_AGENTS, form, presets, error }));
  }

  async function sendReplies(request: IncomingMessage, response: ServerResponse): Promise<void> {
    const form = await readForm(request);
    const agentId = form.get('agent') ?? '';
    const model = form.get('model') ?? '';
    const count = form.get('count') === 'all' ? 100_000 : Number(form.get('count'));
    if (!CLOUD_AGENTS.includes(agentId) || !DEFAULT_MODEL_PRICES.get(model) || ![1, 10, 100, 100_000].includes(count)) {
      return html(response, 400, errorPage(400, 'Pick an agent, a model and a number of replies.'));
    }
    let sent = 0;
    try {
      for (; sent < count; sent++) {
        clock.advance(15_000);
        await meter.reply({
          workspaceId: WORKSPACE_ID,
          agentId,
          model,
          conversationId: `live-${agentId}-${Math.floor(sent / 4)}`,
          replyId: `live-${++replies}`,
          input: 'hello',
        });
      }
    } catch (error) {
      const answer = toHttpError(error, { now: clock() });
      if (answer.status !== 402) throw error;
      for (const [name, value] of Object.entries(answer.headers)) response.setHeader(name, value);
      if ((request.headers.accept ?? '').includes('application/json')) return json(response, answer.status, answer.body);
      return html(
        response,
        answer.status,
        await renderBilling(sent ? `${sent} ${sent === 1 ? 'reply' : 'replies'} sent before the balance ran out.` : undefined, answer),
      );
    }
    redirect(response, `/billing?sent=${sent}&model=${encodeURIComponent(model)}`);
  }

  const server = createServer((request, response) => {
    handle(request, response).catch((error: unknown) => {
      const answer = toHttpError(error, { now: clock() });
      if (answer.status >= 500) console.error(error);
      if (!response.headersSent) html(response, answer.status, errorPage(answer.status, answer.body.message));
      else response.end();
    });
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(options.port ?? 0, '127.0.0.1', resolve);
  });
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    meter,
    workspaceId: WORKSPACE_ID,
    clock,
    close: () =>
      new Promise<void>((resolve, reject) => {
        server.close((error) => (error ? reject(error) : resolve()));
        server.closeAllConnections();
      }),
  };
}

function sentMessage(url: URL): string | undefined {
  const sent = Number(url.searchParams.get('sent'));
  const model = DEFAULT_MODEL_PRICES.get(url.searchParams.get('model') ?? '');
  if (!Number.isInteger(sent) || sent <= 0 || !model) return undefined;
  return `${sent} ${sent === 1 ? 'reply' : 'replies'} sent on ${model.name}.`;
}

function html(response: ServerResponse, status: number, body: string): void {
  response.writeHead(status, {
    'Content-Type': 'text/html; charset=utf-8',
    'Content-Security-Policy': CONTENT_SECURITY_POLICY,
    'X-Content-Type-Options': 'nosniff',
    'Referrer-Policy': 'no-referrer',
    'Cache-Control': 'no-store',
  });
  response.end(body);
}

function json(response: ServerResponse, status: number, body: unknown): void {
  response.writeHead(status, { 'Content-Type': 'application/json; charset=utf-8', 'Cache-Control': 'no-store' });
  response.end(JSON.stringify(body));
}

function redirect(response: ServerResponse, location: string): void {
  response.writeHead(303, { Location: location, 'Cache-Control': 'no-store' });
  response.end();
}

async function readForm(request: IncomingMessage): Promise<URLSearchParams> {
  let body = '';
  for await (const chunk of request) {
    body += String(chunk);
    if (body.length > 8192) throw new RangeError('form too large');
  }
  return new URLSearchParams(body);
}

function day(date: Date): string {
  return date.toISOString().slice(0, 10);
}

function parseDay(value: string): Date | undefined {
  if (!/^\d{4}-\d{2}-\d{2}$/.test(value)) return undefined;
  const date = new Date(`${value}T00:00:00Z`);
  return Number.isNaN(date.getTime()) || day(date) !== value ? undefined : date;
}

// Fetches both pages once and checks them: what CI runs.
async function check(demo: DemoServer): Promise<void> {
  for (const [path, marker] of [
    ['/billing', 'data-field="available"'],
    ['/analytics', 'role="img"'],
    ['/analytics?from=2026-11-01&to=2026-11-27&interval=week', 'data-bucket="2026-11-23"'],
  ] as const) {
    const response = await fetch(`${demo.url}${path}`);
    const body = await response.text();
    if (response.status !== 200 || !body.includes(marker))
      throw new Error(`GET ${path}: HTTP ${response.status}, expected 200 with ${marker}`);
    console.log(`GET ${path}: ${response.status}, ${body.length} bytes`);
  }
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  const port = process.env.PORT ? Number(process.env.PORT) : 0;
  const demo = await startDemoServer({ port });
  console.log(`Billing and analytics demo: ${demo.url}/billing`);
  if (process.argv.includes('--check')) {
    try {
      await check(demo);
    } finally {
      await demo.close();
    }
  } else {
    const stop = (signal: string): void => {
      console.log(`\n${signal}: stopping`);
      demo.close().then(
        () => process.exit(0),
        () => process.exit(1),
      );
    };
    process.once('SIGINT', () => stop('SIGINT'));
    process.once('SIGTERM', () => stop('SIGTERM'));
  }
}

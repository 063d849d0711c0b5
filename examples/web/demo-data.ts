/**
 * A month of simulated replies for the web demo: one Hobby workspace, three agents charged in
 * credits, one agent answering on the workspace's own OpenAI key (BYO, 0 credits) and a
 * self-hosted staging build recording unmetered replies in the same store. Deterministic: a
 * seeded random generator and a clock the demo moves by hand.
 */
import { CreditMeter, CreditsError, MemoryStorage, type ReplyProvider } from '../../src/index.js';

/** The demo's workspace. */
export const WORKSPACE_ID = 'acme';

/** Agents of the demo, in the order the charts colour them. */
export const AGENTS = [
  { agentId: 'support', model: 'claude-sonnet-4-6', perDay: 7, meter: 'cloud' },
  { agentId: 'sales', model: 'claude-haiku-4-5', perDay: 8, meter: 'cloud' },
  { agentId: 'docs', model: 'bookbag-local', perDay: 10, meter: 'cloud' },
  // gpt-4o-mini on the workspace's own OpenAI key: the byo route, 0 credits.
  { agentId: 'faq', model: 'gpt-4o-mini', perDay: 14, meter: 'cloud' },
  // A self-hosted staging build writing to the same store: the unmetered route.
  { agentId: 'staging', model: 'bookbag-local', perDay: 5, meter: 'self-hosted' },
] as const;

/** The subscription start of the demo workspace; the seeded month runs from here. */
export const DEMO_START = new Date('2026-11-01T09:00:00Z');
/** Where the clock stands when seeding ends: "now" for the pages. */
export const DEMO_NOW = new Date('2026-11-27T16:00:00Z');

/** A clock the demo moves by hand. */
export interface DemoClock {
  (): Date;
  /** Moves the clock to `at` (never backwards). */
  set(at: Date): void;
  /** Moves the clock forward. */
  advance(ms: number): void;
}

/** The meters and the clock of a seeded demo. */
export interface DemoData {
  /** The cloud meter the pages use. */
  readonly meter: CreditMeter;
  /** A self-hosted meter on the same store. */
  readonly selfHosted: CreditMeter;
  readonly clock: DemoClock;
}

// Answers at once and never calls a network: a stand-in for the host's LLM clients.
const fakeLlm: ReplyProvider = {
  async generate(request, { apiKey }) {
    return { output: `[${request.model}${apiKey ? ' on the workspace key' : ''}] ${String(request.input)}` };
  },
};

/** Builds the store, both meters and the clock, and seeds a month of replies. */
export async function seedDemo(): Promise<DemoData> {
  let now = DEMO_START.getTime();
  const clock: DemoClock = Object.assign(() => new Date(now), {
    set(at: Date) {
      now = Math.max(now, at.getTime());
    },
    advance(ms: number) {
      now += ms;
    },
  });
  const storage = new MemoryStorage();
  const providers = { openai: fakeLlm, anthropic: fakeLlm, bookbag: fakeLlm };
  const meter = new CreditMeter({
    storage,
    clock,
    providers,
    // The host's secret store: acme brought its own OpenAI key.
    byoKeys: ({ workspaceId, provider }) => (workspaceId === WORKSPACE_ID && provider === 'openai' ? 'sk-acme-demo-key' : undefined),
  });
  const selfHosted = new CreditMeter({ storage, clock, providers, mode: 'self-hosted' });

  await meter.createWorkspace({ workspaceId: WORKSPACE_ID, plan: 'hobby', startsAt: DEMO_START });

  const random = mulberry32(20261101);
  const events: Array<{ at: number; agent: (typeof AGENTS)[number]; n: number }> = [];
  const days = Math.floor((DEMO_NOW.getTime() - DEMO_START.getTime()) / 86_400_000);
  for (let day = 0; day <= days; day++) {
    const date = new Date(DEMO_START.getTime() + day * 86_400_000);
    const weekend = date.getUTCDay() === 0 || date.getUTCDay() === 6;
    const trend = 0.8 + (0.4 * day) / days;
    for (const agent of AGENTS) {
      const count = Math.round(agent.perDay * trend * (weekend ? 0.45 : 1) * (0.6 + random() * 0.8));
      for (let i = 0; i < count; i++) {
        // Working hours, 09:00 to 21:00 UTC
        const at = Date.UTC(date.getUTCFullYear(), date.getUTCMonth(), date.getUTCDate(), 9) + Math.floor(random() * 12 * 3_600_000);
        if (at >= DEMO_START.getTime() && at < DEMO_NOW.getTime()) events.push({ at, agent, n: events.length });
      }
    }
    if (day === 12) events.push({ at: date.getTime() + 3_600_000, agent: AGENTS[0], n: -1 });
  }
  events.sort((a, b) => a.at - b.at || a.n - b.n);

  for (const event of events) {
    now = event.at;
    if (event.n === -1) {
      await meter.addCredits({ workspaceId: WORKSPACE_ID, credits: 250, grantId: 'order-1001' });
      continue;
    }
    const { agentId, model } = event.agent;
    const input = { workspaceId: WORKSPACE_ID, agentId, model, conversationId: `${agentId}-${Math.floor(event.n / 3)}`, input: 'question' };
    try {
      await (event.agent.meter === 'self-hosted' ? selfHosted : meter).reply(input);
    } catch (error) {
      if (!(CreditsError.is(error) && error.code === 'INSUFFICIENT_CREDITS')) throw error;
    }
  }
  now = DEMO_NOW.getTime();
  return { meter, selfHosted, clock };
}

// A small seeded generator, so every run seeds the same month.
function mulberry32(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

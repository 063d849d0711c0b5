/** What a provider is asked to produce. */
export interface ReplyRequest {
  /** The model id from the price table. */
  readonly model: string;
  /** The host's own input (messages, prompt, options): passed through untouched. */
  readonly input: unknown;
  readonly workspaceId: string;
  readonly agentId: string;
  readonly conversationId: string;
}

/** How to call the provider for this reply. */
export interface ReplyContext {
  /** The workspace's own key (BYO), when it brought one for this provider. */
  readonly apiKey?: string;
  /** Aborts the call; an abort before any output charges nothing. */
  readonly signal?: AbortSignal;
}

/**
 * Wraps the host's own LLM client. Ready ones for the official clients ship as
 * `@bookbag/credits/openai` and `@bookbag/credits/anthropic`.
 *
 * @example
 * ```ts
 * const openai: ReplyProvider = {
 *   async generate(request, { apiKey, signal }) {
 *     const client = apiKey ? new OpenAI({ apiKey }) : platformClient;
 *     const completion = await client.chat.completions.create(
 *       { model: request.model, messages: request.input as ChatMessage[] },
 *       { signal },
 *     );
 *     return { output: completion.choices[0]?.message.content ?? '' };
 *   },
 * };
 * ```
 */
export interface ReplyProvider {
  /** Produces a whole reply. */
  generate(request: ReplyRequest, context: ReplyContext): Promise<ProviderResult>;
  /** Produces a reply in chunks; used by `meter.replyStream`, which falls back to `generate`. */
  stream?(request: ReplyRequest, context: ReplyContext): AsyncIterable<unknown>;
}

/**
 * What a provider returns for a whole reply. Anything else (a string, `{}`, unknown fields)
 * is a `PROVIDER_ERROR` and nothing is charged.
 */
export interface ProviderResult {
  /** The reply, handed back to the caller untouched. */
  readonly output: unknown;
  /**
   * The model that produced the reply, when the provider reports it. When it is another
   * model of the price table (a fallback), the reply is charged that model's price.
   */
  readonly model?: string;
  /** Token counts the provider reported, kept on the ledger row. */
  readonly usage?: { readonly inputTokens?: number; readonly outputTokens?: number };
}

/** Looks up a workspace's own key for a provider in the host's secret store. */
export type ByoKeyResolver = (query: {
  readonly workspaceId: string;
  readonly provider: string;
}) => string | undefined | Promise<string | undefined>;

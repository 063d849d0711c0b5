/**
 * What the shipped providers share: the result shape, the client cache for bring-your-own
 * keys, and the input splitting. Internal: each entry re-exports what it documents.
 */

import type { ProviderResult } from '../meter/provider.js';

export type { ProviderResult } from '../meter/provider.js';

/**
 * An SDK client, or a factory that makes one per key (for bring-your-own keys). The factory
 * is called with `undefined` for the platform's client.
 *
 * @example
 * ```ts
 * const client: ClientOption<OpenAIClientLike> = (apiKey) => new OpenAI({ apiKey: apiKey ?? process.env.OPENAI_API_KEY });
 * ```
 */
export type ClientOption<Client> = Client | ((apiKey: string | undefined) => Client);

/**
 * Picks the client for a call. A factory gets one client per key, kept in a bounded LRU cache
 * (the key lives only in the Map and in the client the factory made; it is never logged).
 * An instance serves only calls without a BYO key: a BYO reply costs no credits, so running
 * it on the platform's client would give it away free. That fails closed.
 */
export function clientPicker<Client>(
  option: ClientOption<Client>,
  maxClients: number,
  entry: string,
): (apiKey: string | undefined) => Client {
  if (typeof option !== 'function') {
    const instance = option;
    return (apiKey) => {
      if (apiKey !== undefined) {
        throw new Error(
          `[credits] [${entry}] this workspace brought its own key, but \`client\` is a single instance: pass \`client: (apiKey) => new SDK({ apiKey })\` to run BYO replies on their own key`,
        );
      }
      return instance;
    };
  }
  const factory = option as (apiKey: string | undefined) => Client;
  if (!Number.isInteger(maxClients) || maxClients < 1) throw new RangeError(`[credits] [${entry}] maxClients must be a positive integer`);
  let platform: Client | undefined;
  const byKey = new Map<string, Client>();
  return (apiKey) => {
    if (apiKey === undefined) {
      platform ??= factory(undefined);
      return platform;
    }
    const cached = byKey.get(apiKey);
    if (cached !== undefined) {
      // Map keeps insertion order: re-inserting marks it most recently used.
      byKey.delete(apiKey);
      byKey.set(apiKey, cached);
      return cached;
    }
    const client = factory(apiKey);
    byKey.set(apiKey, client);
    if (byKey.size > maxClients) {
      const oldest = byKey.keys().next();
      if (!oldest.done) byKey.delete(oldest.value);
    }
    return client;
  };
}

/**
 * Splits `request.input` into the main field (`messages` or `input`) and extra request
 * parameters. An array (or, for `allowString`, a string) is the main field alone; an object
 * is `{ [main]: ..., ...extra }`. `model` and `stream` are refused in extra: the model that
 * runs must be the one the meter priced, and streaming is chosen by the call.
 */
export function splitInput(
  input: unknown,
  main: 'messages' | 'input',
  entry: string,
  allowString = false,
): { value: unknown; extra: Record<string, unknown> } {
  if (Array.isArray(input) || (allowString && typeof input === 'string')) return { value: input, extra: {} };
  if (typeof input === 'object' && input !== null) {
    const { [main]: value, ...extra } = input as Record<string, unknown>;
    if (value === undefined) throw new TypeError(`[credits] [${entry}] input must be an array of ${main} or an object with \`${main}\``);
    for (const forbidden of ['model', 'stream']) {
      if (forbidden in extra) {
        throw new TypeError(
          `[credits] [${entry}] input must not set \`${forbidden}\`: the meter's model and the call's streaming decide it`,
        );
      }
    }
    return { value, extra };
  }
  throw new TypeError(`[credits] [${entry}] input must be an array of ${main} or an object with \`${main}\``);
}

export function requestOptions(signal: AbortSignal | undefined): { signal?: AbortSignal } {
  return signal ? { signal } : {};
}

export function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null;
}

export function numberOr(value: unknown): number | undefined {
  return typeof value === 'number' && Number.isFinite(value) ? value : undefined;
}

export function usageOf(inputTokens: unknown, outputTokens: unknown): ProviderResult['usage'] | undefined {
  const input = numberOr(inputTokens);
  const output = numberOr(outputTokens);
  if (input === undefined && output === undefined) return undefined;
  return { ...(input !== undefined && { inputTokens: input }), ...(output !== undefined && { outputTokens: output }) };
}

export function isAsyncIterable(value: unknown): value is AsyncIterable<unknown> {
  return isRecord(value) && typeof (value as { [Symbol.asyncIterator]?: unknown })[Symbol.asyncIterator] === 'function';
}

import { inspect } from 'node:util';
import { describe, expect, it } from 'vitest';
import { ProviderError } from '../../src/core/errors.js';
import { REDACTED, redactSecret, redactText, scrubError, scrubProviderError } from '../../src/core/secrets.js';

// A key with characters that URL-encoding changes, as base64-ish keys have.
const KEY = 'sk-byo/Zx+9QmT2vL8wRp4Kj7Nc1Hd5Fg3Bs6Ye0Ua';

function expectNoKey(value: unknown): void {
  const text = inspect(value, { depth: Infinity, showHidden: true, getters: true });
  expect(text).not.toContain(KEY);
  expect(text).not.toContain(encodeURIComponent(KEY));
  expect(text.toLowerCase()).not.toContain(KEY.slice(7, 30).toLowerCase());
}

/** Every own property (enumerable or not, string or symbol key) of the scrubbed copy. */
function ownKeys(value: object): PropertyKey[] {
  return Reflect.ownKeys(value);
}

describe('redactText - every form of a key', () => {
  it.each([
    ['whole', `Incorrect API key provided: ${KEY}.`],
    ['bearer', `Authorization: Bearer ${KEY}`],
    ['url-encoded', `GET https://api.example.com/v1/models?key=${encodeURIComponent(KEY)}&x=1`],
    ['json-escaped', JSON.stringify({ apiKey: KEY })],
    ['upper case', `key ${KEY.toUpperCase()} refused`],
    ['truncated', `key ${KEY.slice(0, 20)}… refused`],
    ['split tail', `key ...${KEY.slice(-14)} refused`],
    ['base64 basic auth', `Authorization: Basic ${btoa(`user:${KEY}`)}`],
    ['base64 alone', `token=${btoa(KEY)}`],
    ['twice', `${KEY}${KEY} and ${KEY}`],
  ])('%s', (_label, text) => {
    const out = redactText(text, [KEY]);
    expect(out).toContain(REDACTED);
    expect(out).not.toContain(KEY);
    expect(out.toLowerCase()).not.toContain(KEY.slice(10, 22).toLowerCase());
  });

  it('keeps the text around the key', () => {
    expect(redactText(`a ${KEY} b`, [KEY])).toBe(`a ${REDACTED} b`);
    expect(redactText(`Bearer ${KEY}`, [KEY])).toBe(`Bearer ${REDACTED}`);
  });

  it('leaves a text without the key, and ignores empty and missing secrets', () => {
    expect(redactText('upstream 500', [KEY])).toBe('upstream 500');
    expect(redactText('upstream 500', ['', undefined])).toBe('upstream 500');
    // A public prefix shorter than a fragment is not a secret.
    expect(redactText('use an sk-byo/ key', [KEY])).toBe('use an sk-byo/ key');
  });

  it('redacts several secrets and short ones whole', () => {
    expect(redactText('a=abc b=defghi', ['abc', 'defghi'])).toBe(`a=${REDACTED} b=${REDACTED}`);
  });
});

describe('scrubProviderError - a fresh copy of five primitive fields', () => {
  it('copies name, message, status, code and type, redacted', () => {
    const original = Object.assign(new TypeError(`Incorrect API key provided: ${KEY}`), {
      status: 401,
      code: `invalid_api_key:${KEY}`,
      type: 'invalid_request_error',
      headers: { authorization: `Bearer ${KEY}` },
    });
    const scrubbed = scrubProviderError(original, [KEY]);
    expect(scrubbed).not.toBe(original);
    expect(scrubbed).toBeInstanceOf(Error);
    expect(scrubbed.name).toBe('TypeError');
    expect(scrubbed.message).toBe(`Incorrect API key provided: ${REDACTED}`);
    expect(scrubbed.status).toBe(401);
    expect(scrubbed.code).toBe(`invalid_api_key:${REDACTED}`);
    expect(scrubbed.type).toBe('invalid_request_error');
    expect(scrubbed.cause).toBeUndefined();
    expect(Object.isFrozen(scrubbed)).toBe(true);
    expect(ownKeys(scrubbed).sort()).toEqual(['code', 'message', 'name', 'stack', 'status', 'type']);
    expect(scrubbed.stack).toBe(`TypeError: Incorrect API key provided: ${REDACTED}`);
    expectNoKey(scrubbed);
  });

  it('reads statusCode when there is no status, and drops non-primitive fields', () => {
    const scrubbed = scrubProviderError(Object.assign(new Error('x'), { statusCode: 429, code: { key: KEY }, type: [KEY] }), [KEY]);
    expect(scrubbed.status).toBe(429);
    expect(scrubbed.code).toBeUndefined();
    expect(scrubbed.type).toBeUndefined();
  });

  it('drops everything else: nested objects, cause chains, AggregateError members, Headers, Maps, symbols', () => {
    let deep: Error = new Error(`innermost ${KEY}`);
    for (let i = 0; i < 5; i++) deep = new Error(`level ${i}`, { cause: deep });
    const original = Object.assign(new AggregateError([new Error(KEY)], 'all failed', { cause: deep }), {
      response: { request: { options: { headers: { authorization: `Bearer ${KEY}` } } } },
      headers: new Headers({ authorization: `Bearer ${KEY}` }),
      meta: new Map([['apiKey', KEY]]),
      [Symbol('secret')]: KEY,
    });
    Object.defineProperty(original, 'config', { value: { apiKey: KEY }, enumerable: false });
    const scrubbed = scrubProviderError(original, [KEY]);
    expect(scrubbed.name).toBe('AggregateError');
    expect(scrubbed.message).toBe('all failed');
    expect(ownKeys(scrubbed).sort()).toEqual(['message', 'name', 'stack']);
    expectNoKey(scrubbed);
  });

  it('never throws on a hostile error', () => {
    const throwingMessage = Object.defineProperty(new Error(), 'message', {
      get() {
        throw new Error(`getter saw ${KEY}`);
      },
    });
    const throwingEverything = new Proxy(
      {},
      {
        get() {
          throw new Error(KEY);
        },
        getPrototypeOf() {
          throw new Error(KEY);
        },
      },
    );
    const revoked = Proxy.revocable({}, {});
    revoked.revoke();
    const circular: Record<string, unknown> = { key: KEY };
    circular.self = circular;
    const cases: unknown[] = [
      throwingMessage,
      throwingEverything,
      revoked.proxy,
      { message: circular },
      {
        message: {
          toJSON: () => {
            throw new Error(KEY);
          },
        },
      },
      { message: Symbol(KEY) },
      { message: 42n },
      null,
      undefined,
      `a string with ${KEY}`,
      42,
      () => KEY,
    ];
    for (const error of cases) {
      const scrubbed = scrubProviderError(error, [KEY]);
      expect(typeof scrubbed.message).toBe('string');
      expect(typeof scrubbed.name).toBe('string');
      expectNoKey(scrubbed);
    }
    expect(scrubProviderError(throwingMessage, [KEY]).message).toBe('(the error message could not be read)');
    expect(scrubProviderError(`a string with ${KEY}`, [KEY]).message).toBe(`a string with ${REDACTED}`);
    expect(scrubProviderError(42, [KEY]).message).toBe('42');
  });

  it('stringifies a non-string message and redacts it', () => {
    expect(scrubProviderError({ message: { detail: KEY } }, [KEY]).message).toBe(`{"detail":"${REDACTED}"}`);
    expect(scrubProviderError({ message: 503 }, [KEY]).message).toBe('503');
  });

  it('cuts a huge message after redacting it', () => {
    const scrubbed = scrubProviderError(new Error(`${KEY} ${'x'.repeat(100_000)}`), [KEY]);
    expect(scrubbed.message.length).toBeLessThanOrEqual(4001);
    expect(scrubbed.message.startsWith(REDACTED)).toBe(true);
  });

  it('is idempotent: scrubbing a scrubbed copy changes nothing', () => {
    const once = scrubProviderError(Object.assign(new Error(`bad ${KEY}`), { status: 401 }), [KEY]);
    const twice = scrubProviderError(once, []);
    expect({ ...twice, name: twice.name, message: twice.message }).toEqual({ ...once, name: once.name, message: once.message });
  });

  it('the deprecated redactSecret returns a scrubbed copy too', () => {
    const original = Object.assign(new Error('no key here'), { headers: { authorization: KEY } });
    const copy = redactSecret(original, KEY);
    expect(copy).not.toBe(original);
    expectNoKey(copy);
  });
});

describe('scrubError - any thrown value into a safe Error', () => {
  it('keeps redacted stack frames and no cause', () => {
    const original = new Error(`handler saw ${KEY}`, { cause: new Error(KEY) });
    const safe = scrubError(original, [KEY]);
    expect(safe).toBeInstanceOf(Error);
    expect(safe.message).toBe(`handler saw ${REDACTED}`);
    expect(safe.stack).toContain('secrets.test.ts');
    expect(safe.cause).toBeUndefined();
    expectNoKey(safe);
  });
});

describe('ProviderError - the cause is always a scrubbed copy', () => {
  it('scrubs whatever it is given', () => {
    const original = Object.assign(new Error(`Incorrect API key provided: ${KEY}`), {
      status: 401,
      request: { headers: new Headers({ authorization: `Bearer ${KEY}` }) },
    });
    const error = new ProviderError('r1', 'openai', original, [KEY, undefined]);
    expect(error.code).toBe('PROVIDER_ERROR');
    expect(error.cause).not.toBe(original);
    expect(error.cause.message).toBe(`Incorrect API key provided: ${REDACTED}`);
    expect(error.status).toBe(401);
    expect(error.message).toContain('nothing was charged');
    expect(error.message).toContain(REDACTED);
    expectNoKey(error);
  });

  it('drops the original even with no secret to redact', () => {
    const original = Object.assign(new Error('upstream 500'), { request: { apiKey: KEY } });
    const error = new ProviderError('r1', 'openai', original);
    expect(error.cause).toEqual(new Error('upstream 500'));
    expectNoKey(error);
  });
});

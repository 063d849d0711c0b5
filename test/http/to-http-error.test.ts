import { describe, expect, it } from 'vitest';
import { toHttpError } from '../../src/http/to-http-error.js';
import {
  CreditMeter,
  CreditsError,
  Decimal,
  IdempotencyConflictError,
  InsufficientCreditsError,
  InvalidInputError,
  ProviderError,
  ProviderNotFoundError,
  ReplyStateError,
  StorageError,
  UnknownModelError,
  UnknownPlanError,
  WorkspaceExistsError,
  WorkspaceNotFoundError,
} from '../../src/index.js';

const KEY = 'sk-byo-SECRET-abcdef123456';

const insufficient = (renewsAt: Date | undefined) =>
  new InsufficientCreditsError({
    workspaceId: 'ws_1',
    model: 'gpt-4o',
    replyId: 'r1',
    required: new Decimal(5),
    available: new Decimal('2.5'),
    renewsAt,
  });

describe('toHttpError', () => {
  it('INSUFFICIENT_CREDITS - 402 with Retry-After in whole seconds until renewal and the fields as strings', () => {
    const now = Date.parse('2026-01-31T23:59:58.500Z');
    const response = toHttpError(insufficient(new Date('2026-02-01T00:00:00Z')), { now });
    expect(response.status).toBe(402);
    expect(response.headers['Retry-After']).toBe('2');
    expect(response.headers['content-type']).toMatch(/^application\/json/);
    expect(response.body).toEqual({
      code: 'INSUFFICIENT_CREDITS',
      message: expect.stringContaining('needs 5 credits'),
      workspaceId: 'ws_1',
      model: 'gpt-4o',
      replyId: 'r1',
      required: '5',
      available: '2.5',
      renewsAt: '2026-02-01T00:00:00.000Z',
    });
  });

  it('INSUFFICIENT_CREDITS - Retry-After is never negative, and absent without a renewal date', () => {
    expect(
      toHttpError(insufficient(new Date('2026-01-01T00:00:00Z')), { now: new Date('2026-03-01T00:00:00Z') }).headers['Retry-After'],
    ).toBe('0');
    const none = toHttpError(insufficient(undefined));
    expect(none.headers['Retry-After']).toBeUndefined();
    expect(none.body.renewsAt).toBeUndefined();
  });

  it('INVALID_INPUT - 400 naming the field, with every issue', () => {
    const response = toHttpError(
      new InvalidInputError([
        { path: 'credits', message: 'must be ≥ 0' },
        { path: 'grantId', message: 'required' },
      ]),
    );
    expect(response.status).toBe(400);
    expect(response.body).toEqual({
      code: 'INVALID_INPUT',
      message: 'Invalid credits: must be ≥ 0',
      field: 'credits',
      issues: [
        { path: 'credits', message: 'must be ≥ 0' },
        { path: 'grantId', message: 'required' },
      ],
    });
  });

  it.each([
    [new UnknownModelError('gpt-9'), 400, { model: 'gpt-9' }],
    [new UnknownPlanError('platinum'), 400, { plan: 'platinum' }],
    [new WorkspaceNotFoundError('ws_x'), 404, { workspaceId: 'ws_x' }],
    [new ReplyStateError('REPLY_NOT_FOUND', 'r9', 'No reply r9'), 404, { replyId: 'r9' }],
    [new WorkspaceExistsError('ws_1'), 409, { workspaceId: 'ws_1' }],
    [new IdempotencyConflictError('replyId r1', 'model'), 409, { key: 'replyId r1', field: 'model' }],
    [new ReplyStateError('REPLY_IN_PROGRESS', 'r1', 'in progress'), 409, { replyId: 'r1' }],
    [new ReplyStateError('REPLY_RELEASED', 'r1', 'released'), 409, { replyId: 'r1' }],
    [new ReplyStateError('REPLY_SETTLED', 'r1', 'settled'), 409, { replyId: 'r1' }],
    [new ReplyStateError('HOLD_EXPIRED', 'r1', 'expired'), 409, { replyId: 'r1' }],
    [new ProviderNotFoundError('mistral'), 500, { provider: 'mistral' }],
  ])('%s - status and public fields', (error, status, fields) => {
    const response = toHttpError(error);
    expect(response.status).toBe(status);
    expect(response.body).toMatchObject({ code: (error as CreditsError).code, ...fields });
    expect(response.headers['Retry-After']).toBeUndefined();
  });

  it('PROVIDER_ERROR - 502 with the upstream status, never the provider message, cause or key', () => {
    const upstream = Object.assign(new Error(`Incorrect API key provided: ${KEY} (platform key sk-platform-777)`), { status: 401 });
    const response = toHttpError(new ProviderError('r1', 'openai', upstream));
    expect(response.status).toBe(502);
    expect(response.body).toEqual({
      code: 'PROVIDER_ERROR',
      message: 'The model provider "openai" failed; nothing was charged',
      replyId: 'r1',
      provider: 'openai',
      providerStatus: 401,
    });
    const text = JSON.stringify(response);
    expect(text).not.toContain(KEY);
    expect(text).not.toContain('sk-platform-777');
    expect(text).not.toContain('cause');
  });

  it('STORAGE_ERROR - 503, never the driver message', () => {
    const response = toHttpError(
      new StorageError('reserve', new Error('connect ECONNREFUSED postgres://app:hunter2@db:5432/credits'), 'postgres'),
    );
    expect(response.status).toBe(503);
    expect(response.body).toEqual({
      code: 'STORAGE_ERROR',
      message: 'The credit store is unavailable; nothing was charged',
      operation: 'reserve',
      adapter: 'postgres',
    });
    expect(JSON.stringify(response)).not.toContain('hunter2');
  });

  it('any other error - 500 with a generic message, never the original', () => {
    for (const error of [new Error(`boom ${KEY}`), 'a string', undefined, { code: 'INSUFFICIENT_CREDITS', message: KEY }]) {
      const response = toHttpError(error);
      expect(response.status).toBe(500);
      expect(response.body).toEqual({ code: 'INTERNAL_ERROR', message: 'Internal server error' });
      expect(JSON.stringify(response)).not.toContain(KEY);
    }
  });

  it('a CreditsError with a code it does not know - 500, the code kept, a generic message', () => {
    const error = new CreditsError('STORAGE_ERROR', 'x');
    Object.defineProperty(error, 'code', { value: 'SOMETHING_NEW' });
    expect(toHttpError(error)).toMatchObject({ status: 500, body: { code: 'SOMETHING_NEW', message: 'Internal server error' } });
  });

  it('headers are a plain object and the body survives JSON', () => {
    const response = toHttpError(insufficient(new Date('2026-02-01T00:00:00Z')), { now: Date.parse('2026-01-31T00:00:00Z') });
    expect(Object.getPrototypeOf(response.headers)).toBe(Object.prototype);
    expect(JSON.parse(JSON.stringify(response.body))).toEqual(response.body);
    expect(response.headers['Retry-After']).toBe('86400');
  });

  it('maps the errors a real meter throws', async () => {
    const at = new Date('2026-01-15T12:00:00Z');
    const meter = new CreditMeter({ clock: () => at, providers: { openai: { generate: async () => ({ output: 'ok' }) } } });
    await meter.createWorkspace({ workspaceId: 'ws', plan: 'free', startsAt: '2026-01-01T00:00:00Z' });
    const ask = (i: number) => meter.reply({ workspaceId: 'ws', agentId: 'a', conversationId: `c${i}`, model: 'gpt-4o', input: 'hi' });
    for (let i = 0; i < 20; i++) await ask(i);
    const blocked = toHttpError(await ask(20).catch((error: unknown) => error), { now: at });
    expect(blocked.status).toBe(402);
    expect(blocked.body).toMatchObject({ required: '5', available: '0', renewsAt: '2026-02-01T00:00:00.000Z' });
    expect(blocked.headers['Retry-After']).toBe(String(16.5 * 24 * 3600));
    expect(toHttpError(await meter.getWorkspace('nope').catch((error: unknown) => error)).status).toBe(404);
    const invalid = toHttpError(await meter.addCredits({ workspaceId: 'ws', credits: -1, grantId: 'g' }).catch((error: unknown) => error));
    expect(invalid).toMatchObject({ status: 400, body: { code: 'INVALID_INPUT', field: 'credits' } });
  });
});

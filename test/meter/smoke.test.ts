import { describe, expect, inject, it } from 'vitest';
import pg from 'pg';
import { Redis } from 'ioredis';

describe('test servers', () => {
  it('postgres answers', async () => {
    const client = new pg.Client({ connectionString: inject('postgresUrl') });
    await client.connect();
    const { rows } = await client.query('SELECT 1 AS one');
    await client.end();
    expect(rows[0].one).toBe(1);
  });
  it('redis answers', async () => {
    const client = new Redis(inject('redisUrl'));
    expect(await client.ping()).toBe('PONG');
    client.disconnect();
  });
});

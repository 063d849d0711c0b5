/**
 * A meter on PostgreSQL: a Hobby workspace, replies from two "app servers" (two meters, each
 * with its own connection pool) racing on one balance, then the balance, ledger and usage
 * read back. Each meter commits a workspace's concurrent replies together, in one statement
 * that lands only if no other server wrote the workspace since it was read (otherwise that
 * meter reads again and retries), so the servers never overspend.
 *
 *   DATABASE_URL=postgres://user:pass@127.0.0.1:5432/db npx tsx examples/postgres.ts
 *
 * The example creates its tables in a fresh schema and drops that schema at the end.
 */
import { randomUUID } from 'node:crypto';
import { PostgresStorage } from '../src/adapters/postgres/index.js';
import { twoAppServers } from './shared/two-app-servers.js';

const connectionString = process.env['DATABASE_URL'];
if (!connectionString) {
  console.log('Set DATABASE_URL to run this example against a PostgreSQL server, e.g.');
  console.log('  DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres npx tsx examples/postgres.ts');
  process.exit(0);
}

const schema = `credits_example_${randomUUID().replaceAll('-', '')}`;
const stores = [new PostgresStorage({ connectionString, schema }), new PostgresStorage({ connectionString, schema })] as const;
try {
  await twoAppServers(...stores);
} finally {
  await Promise.all(stores.map((storage) => storage.close()));
  // Remove the example's schema with a plain pg client (the store never drops anything).
  const pg = await import('pg');
  const client = new pg.default.Client({ connectionString });
  await client.connect();
  await client.query(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`);
  await client.end();
}

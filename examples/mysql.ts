/**
 * A meter on MySQL or MariaDB: a Hobby workspace, replies from two "app servers" racing on one
 * balance (one store opens its own pool from a URL, the other uses a mysql2 pool the host
 * already has), then the balance, ledger and usage read back. Each meter commits a
 * workspace's concurrent replies together, in one transaction that lands only if no other
 * server wrote the workspace since it was read (otherwise that meter reads again and retries),
 * so the servers never overspend.
 *
 *   MYSQL_URL=mysql://user:pass@127.0.0.1:3306/app npx tsx examples/mysql.ts
 *
 * The example creates its tables under a fresh prefix and drops them at the end.
 */
import { randomUUID } from 'node:crypto';
import { MySqlStorage } from '../src/adapters/mysql/index.js';
import { twoAppServers } from './shared/two-app-servers.js';

const uri = process.env['MYSQL_URL'];
if (!uri) {
  console.log('Set MYSQL_URL to run this example against a MySQL or MariaDB server, e.g.');
  console.log('  MYSQL_URL=mysql://root@127.0.0.1:3306/credits npx tsx examples/mysql.ts');
  process.exit(0);
}

const mysql = await import('mysql2/promise');
const hostPool = mysql.createPool({ uri, connectionLimit: 4 });
const tablePrefix = `credits_example_${randomUUID().replaceAll('-', '').slice(0, 8)}_`;
const stores = [new MySqlStorage({ uri, tablePrefix }), new MySqlStorage({ pool: hostPool, tablePrefix })] as const;
try {
  await twoAppServers(...stores);
} finally {
  await Promise.all(stores.map((storage) => storage.close()));
  // The store never drops anything: remove the example's tables with the host's pool, then end it.
  await hostPool.query(
    `DROP TABLE IF EXISTS ${['workspaces', 'records', 'ledger', 'migrations'].map((t) => `\`${tablePrefix}${t}\``).join(', ')}`,
  );
  await hostPool.end();
}

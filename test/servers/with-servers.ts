/**
 * Runs a command with the test servers on loopback, passing their addresses as DATABASE_URL,
 * REDIS_URL, REDIS_CLUSTER_NODES and MYSQL_URL, then stops them. Provisions them exactly as
 * `npm test` does (variables already set are passed through unchanged). CI runs the examples
 * this way.
 *
 *   npx tsx test/servers/with-servers.ts <command> [args...]
 */
import { spawnSync } from 'node:child_process';
import { provisionServers, serverEnv } from './provision.js';

const [command, ...args] = process.argv.slice(2);
if (!command) {
  console.error('usage: with-servers <command> [args...]');
  process.exit(2);
}
let servers: Awaited<ReturnType<typeof provisionServers>>;
try {
  servers = await provisionServers();
} catch (error) {
  console.error((error as Error).message);
  process.exit(1);
}
let status = 1;
try {
  const result = spawnSync(command, args, { stdio: 'inherit', env: { ...process.env, ...serverEnv(servers) } });
  status = result.status ?? 1;
} finally {
  await servers.stop();
}
process.exit(status);

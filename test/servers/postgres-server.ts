import { execFileSync } from 'node:child_process';
import { chmodSync, existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import { freePort, waitFor } from './free-port.js';
import type { TestServer } from './server.js';

const CANDIDATE_BIN_DIRS = ['/usr/lib/postgresql/17/bin', '/usr/lib/postgresql/16/bin', '/usr/lib/postgresql/15/bin'];

function binDir(): string {
  const found = CANDIDATE_BIN_DIRS.find((dir) => existsSync(join(dir, 'pg_ctl')));
  if (!found) throw new Error('PostgreSQL server binaries not found: install the postgresql package (.ci/run does)');
  return found;
}

const isRoot = process.getuid?.() === 0;

// initdb and postgres refuse to run as root: run them as the postgres user then.
function run(bin: string, args: string[]): void {
  const [command, argv] = isRoot ? ['runuser', ['-u', 'postgres', '--', bin, ...args]] : [bin, args];
  // stdio ignored: a daemon that inherits a pipe keeps execFileSync waiting forever.
  execFileSync(command, argv, { stdio: 'ignore', timeout: 120_000 });
}

/** Starts a throwaway PostgreSQL on 127.0.0.1 with fsync on, trust auth, database `credits`. */
export async function startPostgres(): Promise<TestServer> {
  const bin = binDir();
  const dir = mkdtempSync(join(tmpdir(), 'credits-pg-'));
  chmodSync(dir, 0o777);
  const data = join(dir, 'data');
  const log = join(dir, 'postgres.log');
  const port = await freePort();
  run(join(bin, 'initdb'), ['-D', data, '-U', 'postgres', '-A', 'trust', '--no-sync', '-E', 'UTF8']);
  const start = () =>
    run(join(bin, 'pg_ctl'), [
      '-D', data, '-l', log, '-w', '-t', '60',
      '-o', `-p ${port} -k ${dir} -c listen_addresses=127.0.0.1 -c max_connections=200 -c shared_buffers=128MB`,
      'start',
    ]);
  const stop = () => run(join(bin, 'pg_ctl'), ['-D', data, '-m', 'fast', '-w', 'stop']);
  start();
  const admin = `postgres://postgres@127.0.0.1:${port}/postgres`;
  await waitFor(async () => {
    const client = new pg.Client({ connectionString: admin });
    await client.connect();
    try {
      const exists = await client.query("SELECT 1 FROM pg_database WHERE datname = 'credits'");
      if (exists.rowCount === 0) await client.query('CREATE DATABASE credits');
    } finally {
      await client.end();
    }
  }, 60_000, 'PostgreSQL');
  return {
    url: `postgres://postgres@127.0.0.1:${port}/credits`,
    async restart() {
      stop();
      start();
    },
    async stop() {
      try {
        stop();
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    },
  };
}

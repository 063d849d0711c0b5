import { type ChildProcess, execFile, spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { createConnection } from 'mysql2/promise';
import { commandsFrom, ensureDebianPackages, findCommand } from './apt.js';
import { exitedReason, freePort, waitFor } from './free-port.js';
import type { TestServer } from './server.js';

/** The MariaDB server and its data-directory initialiser, both from Debian's `mariadb-server`. */
export const mariadbRequirement = commandsFrom('mariadb-server', 'mariadbd', 'mariadb-install-db');

const isRoot = process.getuid?.() === 0;

/**
 * Starts a throwaway MariaDB on 127.0.0.1 in a temp dir: user `root` with an empty password,
 * database `credits`. As root the server runs as root (`--user=root`): it is loopback-only and
 * lives in a private folder for the length of the run.
 */
export async function startMariaDb(): Promise<TestServer> {
  ensureDebianPackages([mariadbRequirement]);
  const dir = mkdtempSync(join(tmpdir(), 'credits-mariadb-'));
  const data = join(dir, 'data');
  const asRoot = isRoot ? ['--user=root'] : [];
  let child: ChildProcess | undefined;
  let port = 0;
  const start = async () => {
    const proc = spawn(
      findCommand('mariadbd') ?? 'mariadbd',
      [
        '--no-defaults',
        `--datadir=${data}`,
        `--port=${port}`,
        '--bind-address=127.0.0.1',
        `--socket=${join(dir, 'mariadb.sock')}`,
        `--pid-file=${join(dir, 'mariadb.pid')}`,
        `--log-error=${join(dir, 'error.log')}`,
        '--skip-name-resolve',
        '--innodb-buffer-pool-size=64M',
        '--max-connections=200',
        ...asRoot,
      ],
      { stdio: 'ignore' },
    );
    child = proc;
    await new Promise<void>((resolve, reject) => {
      proc.once('error', (error) => reject(new Error(`mariadbd could not start: ${error.message}`)));
      proc.once('spawn', () => resolve());
    });
    await waitFor(
      async () => {
        const connection = await createConnection({ host: '127.0.0.1', port, user: 'root' });
        try {
          await connection.query('CREATE DATABASE IF NOT EXISTS credits');
        } finally {
          await connection.end();
        }
      },
      60_000,
      'MariaDB',
      exitedReason(proc, join(dir, 'error.log')),
    );
  };
  const halt = async () => {
    const proc = child;
    child = undefined;
    if (!proc || proc.exitCode !== null || proc.signalCode !== null) return;
    const exited = new Promise((resolve) => proc.once('exit', resolve));
    proc.kill('SIGTERM');
    await exited;
  };
  try {
    port = await freePort();
    await promisify(execFile)(
      findCommand('mariadb-install-db') ?? 'mariadb-install-db',
      ['--no-defaults', `--datadir=${data}`, '--auth-root-authentication-method=normal', '--skip-test-db', ...asRoot],
      { timeout: 120_000 },
    );
    await start();
  } catch (error) {
    await halt();
    rmSync(dir, { recursive: true, force: true });
    throw error;
  }
  return {
    url: `mysql://root@127.0.0.1:${port}/credits`,
    async restart() {
      await halt();
      await start();
    },
    async stop() {
      try {
        await halt();
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    },
  };
}

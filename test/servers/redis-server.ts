import { type ChildProcess, spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Redis } from 'ioredis';
import { commandsFrom, ensureDebianPackages } from './apt.js';
import { exitedReason, freePort, waitFor } from './free-port.js';
import type { TestServer } from './server.js';

/** redis-server and redis-cli (the `redis-server` package depends on `redis-tools`, which has redis-cli). */
export const redisRequirement = commandsFrom('redis-server', 'redis-server', 'redis-cli');

/** Starts a throwaway redis-server on 127.0.0.1 with AOF (appendfsync everysec) in a temp dir. */
export async function startRedis(): Promise<TestServer> {
  ensureDebianPackages([redisRequirement]);
  const dir = mkdtempSync(join(tmpdir(), 'credits-redis-'));
  const port = await freePort();
  let child: ChildProcess | undefined;
  const start = async () => {
    const proc = spawn(
      'redis-server',
      [
        '--port',
        String(port),
        '--bind',
        '127.0.0.1',
        '--dir',
        dir,
        '--appendonly',
        'yes',
        '--appendfsync',
        'everysec',
        '--save',
        '',
        '--daemonize',
        'no',
      ],
      { stdio: 'ignore' },
    );
    child = proc;
    await new Promise<void>((resolve, reject) => {
      proc.once('error', (error) => reject(new Error(`redis-server could not start: ${error.message}`)));
      proc.once('spawn', () => resolve());
    });
    await waitFor(
      async () => {
        const client = new Redis({ port, host: '127.0.0.1', lazyConnect: true, maxRetriesPerRequest: 0, retryStrategy: () => null });
        client.on('error', () => undefined);
        try {
          await client.connect();
          await client.ping();
        } finally {
          client.disconnect();
        }
      },
      30_000,
      'Redis',
      exitedReason(proc),
    );
  };
  const halt = async () => {
    const proc = child;
    child = undefined;
    if (!proc || proc.exitCode !== null) return;
    const exited = new Promise((resolve) => proc.once('exit', resolve));
    proc.kill('SIGTERM');
    await exited;
  };
  try {
    await start();
  } catch (error) {
    await halt();
    rmSync(dir, { recursive: true, force: true });
    throw error;
  }
  return {
    url: `redis://127.0.0.1:${port}`,
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

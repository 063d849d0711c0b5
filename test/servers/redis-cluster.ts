import { type ChildProcess, execFile, spawn } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { Redis } from 'ioredis';
import { ensureDebianPackages } from './apt.js';
import { exitedReason, freePorts, waitFor } from './free-port.js';
import { redisRequirement } from './redis-server.js';

/** A Redis Cluster started for tests. */
export interface TestRedisCluster {
  /** The masters as a comma-separated `host:port` list (what `REDIS_CLUSTER_NODES` holds). */
  readonly nodes: string;
  /** Stops every node and removes the temporary directory. */
  stop(): Promise<void>;
}

const MASTERS = 3;

async function stopProcess(proc: ChildProcess): Promise<void> {
  if (proc.exitCode !== null || proc.signalCode !== null) return;
  const exited = new Promise((resolve) => proc.once('exit', resolve));
  proc.kill('SIGTERM');
  await exited;
}

async function clusterInfo(port: number): Promise<string> {
  const client = new Redis({ port, host: '127.0.0.1', lazyConnect: true, maxRetriesPerRequest: 0, retryStrategy: () => null });
  client.on('error', () => undefined);
  try {
    await client.connect();
    return String(await client.call('CLUSTER', 'INFO'));
  } finally {
    client.disconnect();
  }
}

/**
 * Starts a Redis Cluster of three masters (no replicas) on 127.0.0.1, each node in its own
 * folder under one temp dir, joined with `redis-cli --cluster create`. Resolves once every
 * node reports `cluster_state:ok`.
 */
export async function startRedisCluster(): Promise<TestRedisCluster> {
  ensureDebianPackages([redisRequirement]);
  const dir = mkdtempSync(join(tmpdir(), 'credits-redis-cluster-'));
  const children: ChildProcess[] = [];
  const stop = async () => {
    try {
      await Promise.all(children.map(stopProcess));
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  };
  try {
    // The cluster bus ports are given explicitly: the default (port + 10000) may be taken or out of range.
    const picked = await freePorts(MASTERS * 2);
    const ports = picked.slice(0, MASTERS);
    for (const [i, port] of ports.entries()) {
      const busPort = picked[MASTERS + i]!;
      const nodeDir = join(dir, String(port));
      mkdirSync(nodeDir);
      const proc = spawn(
        'redis-server',
        [
          '--port',
          String(port),
          '--cluster-port',
          String(busPort),
          '--bind',
          '127.0.0.1',
          '--dir',
          nodeDir,
          '--cluster-enabled',
          'yes',
          '--cluster-config-file',
          join(nodeDir, 'nodes.conf'),
          '--cluster-node-timeout',
          '5000',
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
      children.push(proc);
      await new Promise<void>((resolve, reject) => {
        proc.once('error', (error) => reject(new Error(`redis-server could not start: ${error.message}`)));
        proc.once('spawn', () => resolve());
      });
    }
    for (const [i, port] of ports.entries())
      await waitFor(() => clusterInfo(port), 30_000, `Redis Cluster node ${port}`, exitedReason(children[i]!));
    const addresses = ports.map((port) => `127.0.0.1:${port}`);
    try {
      await promisify(execFile)('redis-cli', ['--cluster', 'create', ...addresses, '--cluster-yes'], { timeout: 60_000 });
    } catch (error) {
      const { stdout = '', stderr = '' } = error as { stdout?: string; stderr?: string };
      throw new Error(`redis-cli --cluster create failed: ${`${stdout}${stderr}`.trim().split('\n').slice(-5).join(' | ')}`);
    }
    for (const port of ports) {
      await waitFor(
        async () => {
          const info = await clusterInfo(port);
          if (!info.includes('cluster_state:ok')) throw new Error(`node ${port}: ${info.split('\n')[0]?.trim()}`);
        },
        30_000,
        'Redis Cluster (cluster_state:ok)',
      );
    }
    return { nodes: addresses.join(','), stop };
  } catch (error) {
    await stop();
    throw error;
  }
}

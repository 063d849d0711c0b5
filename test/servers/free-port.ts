import type { ChildProcess } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { createServer, type Server } from 'node:net';

/** A TCP port on 127.0.0.1 that was free a moment ago. */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.unref();
    server.on('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      const port = typeof address === 'object' && address ? address.port : 0;
      server.close(() => resolve(port));
    });
  });
}

/** `count` distinct TCP ports on 127.0.0.1, all held open together while picked so none repeats. */
export async function freePorts(count: number): Promise<number[]> {
  const servers = await Promise.all(
    Array.from(
      { length: count },
      () =>
        new Promise<Server>((resolve, reject) => {
          const server = createServer();
          server.unref();
          server.on('error', reject);
          server.listen(0, '127.0.0.1', () => resolve(server));
        }),
    ),
  );
  const ports = servers.map((server) => {
    const address = server.address();
    return typeof address === 'object' && address ? address.port : 0;
  });
  await Promise.all(servers.map((server) => new Promise((resolve) => server.close(resolve))));
  return ports;
}

/**
 * Retries `probe` until it resolves or `timeoutMs` passes. `gaveUp`, when it returns a reason
 * (say the server process already exited), ends the wait at once with that reason.
 */
export async function waitFor(
  probe: () => Promise<unknown>,
  timeoutMs: number,
  what: string,
  gaveUp: () => string | undefined = () => undefined,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  while (Date.now() < deadline) {
    try {
      await probe();
      return;
    } catch (error) {
      last = error;
      const reason = gaveUp();
      if (reason !== undefined) throw new Error(`${what} did not start: ${reason}`);
      await new Promise((r) => setTimeout(r, 100));
    }
  }
  throw new Error(`${what} did not become ready in ${timeoutMs} ms: ${String(last)}`);
}

/** For {@link waitFor}: why a child process can no longer become ready, once it has exited. */
export function exitedReason(proc: ChildProcess, logFile?: string): () => string | undefined {
  return () => {
    if (proc.exitCode === null && proc.signalCode === null) return undefined;
    const tail = logFile && existsSync(logFile) ? ` (${readFileSync(logFile, 'utf8').trim().split('\n').slice(-3).join(' | ')})` : '';
    return `exited with ${proc.signalCode ?? proc.exitCode}${tail}`;
  };
}

/**
 * Several app servers on one store: child processes (bench/lib/worker.ts, run with
 * `node --import tsx`), each with its own connection and meter. A fleet is started once per
 * store and runs tasks one after another; in each, the children start measuring together
 * once all of them are ready.
 */
import { type ChildProcess, fork } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import type { HotResult, RealisticResult, Task, WorkerMessage } from './worker.js';

const WORKER = fileURLToPath(new URL('./worker.ts', import.meta.url));

type ResultOf<T extends Task> = T extends { kind: 'hot' } ? HotResult : RealisticResult;

export interface Fleet {
  readonly processes: number;
  /** Runs `task` in every child at once; resolves with each child's result. */
  run<T extends Task>(task: T): Promise<ResultOf<T>[]>;
  close(): Promise<void>;
}

export function startFleet(processes: number): Fleet {
  const children: ChildProcess[] = [];
  const exits: Promise<void>[] = [];
  for (let p = 0; p < processes; p++) {
    const child = fork(WORKER, [], { execArgv: ['--import', 'tsx'], stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
    children.push(child);
    exits.push(new Promise<void>((resolve) => child.once('exit', () => resolve())));
  }
  return {
    processes,
    async run<T extends Task>(task: T): Promise<ResultOf<T>[]> {
      // Bounded: a child that hangs is given up on after its window plus two minutes.
      const limitMs = task.ms + 120_000;
      const readies: Promise<void>[] = [];
      const results: Promise<ResultOf<T>>[] = [];
      const cleanups: (() => void)[] = [];
      for (const [p, child] of children.entries()) {
        let ready: () => void = () => undefined;
        readies.push(new Promise<void>((resolve) => (ready = resolve)));
        results.push(
          new Promise<ResultOf<T>>((resolve, reject) => {
            const timer = setTimeout(() => reject(new Error(`worker ${p} did not finish within ${limitMs} ms`)), limitMs);
            const onMessage = (message: WorkerMessage) => {
              if (message.type === 'ready') ready();
              else if (message.type === 'result') resolve(message.result as ResultOf<T>);
              else reject(new Error(`worker ${p} failed: ${message.error}`));
            };
            const onExit = (code: number | null) => reject(new Error(`worker ${p} exited (code ${code}) before its result`));
            child.on('message', onMessage);
            child.on('exit', onExit);
            cleanups.push(() => {
              clearTimeout(timer);
              child.off('message', onMessage);
              child.off('exit', onExit);
            });
          }),
        );
        child.send({ task });
      }
      try {
        // A failure while getting ready surfaces at once instead of waiting for the others.
        await Promise.race([Promise.all(readies), Promise.all(results)]);
        for (const child of children) child.send({ go: true });
        return await Promise.all(results);
      } finally {
        for (const cleanup of cleanups) cleanup();
      }
    },
    async close() {
      for (const child of children) if (child.connected) child.send({ close: true });
      const timer = setTimeout(() => {
        for (const child of children) if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
      }, 15_000);
      await Promise.all(exits);
      clearTimeout(timer);
    },
  };
}

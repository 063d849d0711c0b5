/**
 * Where the CPU goes during a measured window: this process (the app server: meter, driver)
 * and the store's server processes (found by the port in the store's address, with all their
 * descendants, e.g. PostgreSQL's backends). Linux only (reads /proc); elsewhere it reports NaN.
 */
import { readdirSync, readFileSync } from 'node:fs';

const TICKS_PER_SECOND = 100; // USER_HZ on Linux

interface Proc {
  ppid: number;
  /** CPU seconds, user + system. */
  cpu: number;
}

function processes(): Map<number, Proc> {
  const all = new Map<number, Proc>();
  let entries: string[];
  try {
    entries = readdirSync('/proc');
  } catch {
    return all;
  }
  for (const entry of entries) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, 'utf8');
      // "pid (comm) state ppid ... utime stime cutime cstime": comm may hold spaces, so split after
      // its ')'. The children's times count too: a PostgreSQL backend that exits mid-window hands
      // its CPU time to the postmaster's cutime, and the total must not drop.
      const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      const ticks = Number(fields[11]) + Number(fields[12]) + Number(fields[13]) + Number(fields[14]);
      all.set(Number(entry), { ppid: Number(fields[1]), cpu: ticks / TICKS_PER_SECOND });
    } catch {
      // the process ended meanwhile
    }
  }
  return all;
}

function commandLine(pid: number): string {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, 'utf8').replaceAll('\0', ' ');
  } catch {
    return '';
  }
}

/** The ports named in an address: a URL or a `host:port,host:port` list. */
export function portsOf(address: string): number[] {
  return [...address.matchAll(/:(\d{2,5})(?=[/,?]|$)/g)].map((m) => Number(m[1]));
}

/** CPU seconds used so far by the servers listening on `ports` and their descendants. */
export function serverCpuSeconds(ports: readonly number[]): number {
  if (ports.length === 0) return Number.NaN;
  const all = processes();
  if (all.size === 0) return Number.NaN;
  const roots = new Set<number>();
  for (const pid of all.keys()) {
    const cmd = commandLine(pid);
    if (!/(postgres|redis-server|mariadbd|mysqld)/.test(cmd)) continue;
    if (ports.some((port) => new RegExp(`(:|-p |--port=)${port}\\b`).test(cmd))) roots.add(pid);
  }
  let total = 0;
  for (const [pid, proc] of all) {
    for (let at: number | undefined = pid, depth = 0; at !== undefined && at > 1 && depth < 8; at = all.get(at)?.ppid, depth++) {
      if (roots.has(at)) {
        total += proc.cpu;
        break;
      }
    }
  }
  return total;
}

/** Cores used (CPU seconds per wall second) by this process and by the store's servers. */
export interface CpuUse {
  client: number;
  server: number;
}

/** Starts measuring; the returned function stops and reports. */
export function cpuWindow(ports: readonly number[]): () => CpuUse {
  const wall = performance.now();
  const client = process.cpuUsage();
  const server = serverCpuSeconds(ports);
  return () => {
    const seconds = (performance.now() - wall) / 1000;
    const used = process.cpuUsage(client);
    return { client: (used.user + used.system) / 1e6 / seconds, server: (serverCpuSeconds(ports) - server) / seconds };
  };
}

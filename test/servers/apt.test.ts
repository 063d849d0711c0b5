import { describe, expect, it } from 'vitest';
import { type AptRunner, type DebianRequirement, ensureDebianPackages } from './apt.js';

function fakeRunner(overrides: Partial<AptRunner> & { installs?: Set<string>; failOn?: string } = {}) {
  const calls: string[][] = [];
  const lines: string[] = [];
  const runner: AptRunner = {
    isRoot: true,
    hasAptGet: true,
    run(args) {
      calls.push([...args]);
      if (overrides.failOn === args[0]) return { status: 100, output: 'E: Unable to locate package\n' };
      if (args[0] === 'install') for (const pkg of args.slice(args.indexOf('--no-install-recommends') + 3)) overrides.installs?.add(pkg);
      return { status: 0, output: '' };
    },
    say: (line) => lines.push(line),
    ...overrides,
  };
  return { runner, calls, lines };
}

const requirement = (pkg: string, installed: Set<string>): DebianRequirement => ({ package: pkg, present: () => installed.has(pkg) });

describe('ensureDebianPackages', () => {
  it('ensure - does nothing when everything is present', () => {
    const installed = new Set(['redis-server']);
    const { runner, calls, lines } = fakeRunner({ installs: installed });
    ensureDebianPackages([requirement('redis-server', installed)], runner);
    expect(calls).toEqual([]);
    expect(lines).toEqual([]);
  });

  it('ensure - as root installs what is missing in one update and one install, announced in one line', () => {
    const installed = new Set(['redis-server']);
    const { runner, calls, lines } = fakeRunner({ installs: installed });
    const needed = [
      requirement('redis-server', installed),
      requirement('mariadb-server', installed),
      requirement('chromium', installed),
      requirement('chromium', installed),
    ];
    ensureDebianPackages(needed, runner);
    expect(calls).toEqual([
      ['update', '-qq', '-o', 'DPkg::Lock::Timeout=600'],
      ['install', '-y', '-qq', '--no-install-recommends', '-o', 'DPkg::Lock::Timeout=600', 'mariadb-server', 'chromium'],
    ]);
    expect(lines).toEqual(['Installing mariadb-server, chromium with apt-get (needed by the tests, missing on this machine)']);
  });

  it('ensure - without root stops with one line naming the command to run', () => {
    const { runner, calls } = fakeRunner({ isRoot: false });
    expect(() => ensureDebianPackages([requirement('redis-server', new Set())], runner)).toThrow(
      'The tests need redis-server: run `sudo apt-get update && sudo apt-get install -y --no-install-recommends redis-server`',
    );
    expect(calls).toEqual([]);
  });

  it('ensure - without apt-get stops and names the packages', () => {
    const { runner } = fakeRunner({ hasAptGet: false });
    expect(() => ensureDebianPackages([requirement('mariadb-server', new Set())], runner)).toThrow(/need mariadb-server/);
  });

  it('ensure - a failing apt-get fails with its output', () => {
    const { runner } = fakeRunner({ failOn: 'install' });
    expect(() => ensureDebianPackages([requirement('chromium', new Set())], runner)).toThrow(
      /apt-get install failed \(exit 100\)[\s\S]*Unable to locate/,
    );
  });

  it('ensure - a package that installs but still is not usable fails', () => {
    const { runner } = fakeRunner({ installs: new Set() });
    expect(() => ensureDebianPackages([requirement('chromium', new Set())], runner)).toThrow(/still not usable/);
  });
});

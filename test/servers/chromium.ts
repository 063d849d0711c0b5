import { execFileSync } from 'node:child_process';
import { type DebianRequirement, ensureDebianPackages, findCommand } from './apt.js';

/** Where Debian's `chromium` package puts the browser, or wherever `chromium` is on the PATH. */
function chromiumOnMachine(): string | undefined {
  return findCommand('chromium');
}

/** Headless Chromium for browser tests, from Debian's `chromium`. */
export const chromiumRequirement: DebianRequirement = {
  package: 'chromium',
  present: () => chromiumOnMachine() !== undefined,
};

/**
 * Makes sure Chromium is installed and runs, and returns its path (`/usr/bin/chromium` on
 * Debian). Browser tests launch it themselves with playwright-core: nothing keeps running here.
 */
export function ensureChromium(): string {
  ensureDebianPackages([chromiumRequirement]);
  const path = chromiumOnMachine();
  if (!path) throw new Error('chromium not found after installing it');
  try {
    execFileSync(path, ['--version'], { stdio: ['ignore', 'pipe', 'pipe'], timeout: 30_000 });
  } catch (error) {
    throw new Error(`${path} --version failed: ${(error as Error).message.split('\n')[0]}`);
  }
  return path;
}

/**
 * The memory store's sequential reserve + settle loop, alone, for a CPU profile:
 *
 *   node --cpu-prof --cpu-prof-dir=<dir> --import tsx bench/memory-profile.ts [seconds]
 *   npx tsx bench/lib/profile-summary.ts <dir>/<file>.cpuprofile
 *
 * Prints the rate it reached; the profile shows where the time of one charge goes.
 */
import { MemoryStorage } from '../src/index.js';
import { sequential } from './lib/harness.js';
import { createWorkspace, newMeter, reserveSettle, Tally } from './lib/workload.js';

const seconds = Number(process.argv[2] ?? 5);
const meter = newMeter(new MemoryStorage());
await createWorkspace(meter, 'hot');
const op = reserveSettle(meter, () => 'hot', new Tally());
await sequential(op, { ms: 300 });
const run = await sequential(op, { ms: seconds * 1000 });
console.log(
  `memory reserve+settle, sequential: ${Math.round(run.perSec).toLocaleString('en-US')}/s over ${(run.ms / 1000).toFixed(1)} s (${run.errors} errors)`,
);

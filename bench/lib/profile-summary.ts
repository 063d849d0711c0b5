/**
 * Summarises a V8 `.cpuprofile`: self time per function (file:function, % of samples), and
 * inclusive time for the functions of this library.
 *
 *   npx tsx bench/lib/profile-summary.ts <file.cpuprofile> [top]
 *
 * With `--import tsx` Node writes two profiles (the main thread and the loader's worker):
 * pass the main thread's, the larger one.
 */
import { readFileSync } from 'node:fs';

interface Node {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
  hitCount?: number;
  children?: number[];
}
interface Profile {
  nodes: Node[];
  samples: number[];
}

const [file, topRaw] = process.argv.slice(2);
if (!file) {
  console.error('usage: profile-summary <file.cpuprofile> [top]');
  process.exit(2);
}
const top = Number(topRaw ?? 25);
const profile = JSON.parse(readFileSync(file, 'utf8')) as Profile;
const byId = new Map(profile.nodes.map((n) => [n.id, n]));
const counts = new Map<number, number>();
for (const id of profile.samples) counts.set(id, (counts.get(id) ?? 0) + 1);
const total = profile.samples.length;

const short = (url: string) => url.replace(/^file:\/\//, '').replace(/^.*?\/(src|bench|node_modules)\//, '$1/') || '(native)';
const label = (n: Node) => `${short(n.callFrame.url)}:${n.callFrame.functionName || `(anonymous, line ${n.callFrame.lineNumber + 1})`}`;

const self = new Map<string, number>();
for (const [id, c] of counts) {
  const key = label(byId.get(id)!);
  self.set(key, (self.get(key) ?? 0) + c);
}
const pct = (c: number) => `${((c / total) * 100).toFixed(1)}%`.padStart(6);
console.log(`${total} samples. Self time:`);
for (const [key, c] of [...self].sort((a, b) => b[1] - a[1]).slice(0, top)) console.log(`${pct(c)}  ${key}`);

// Inclusive time: a sample counts once for every distinct function on its stack.
const parent = new Map<number, number>();
for (const n of profile.nodes) for (const child of n.children ?? []) parent.set(child, n.id);
const inclusive = new Map<string, number>();
for (const [id, c] of counts) {
  const seen = new Set<string>();
  for (let at: number | undefined = id; at !== undefined; at = parent.get(at)) {
    const key = label(byId.get(at)!);
    if (seen.has(key)) continue;
    seen.add(key);
    inclusive.set(key, (inclusive.get(key) ?? 0) + c);
  }
}
console.log('\nInclusive time (src/ only):');
for (const [key, c] of [...inclusive]
  .filter(([k]) => k.startsWith('src/'))
  .sort((a, b) => b[1] - a[1])
  .slice(0, top))
  console.log(`${pct(c)}  ${key}`);

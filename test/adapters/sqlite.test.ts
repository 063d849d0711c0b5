import { randomUUID } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll } from 'vitest';
import { SqliteStorage } from '../../src/adapters/sqlite/index.js';
import { runStorageConformance } from '../../src/testing/index.js';

// Each case gets its own database file in a temporary directory, removed after the run.
const dir = mkdtempSync(join(tmpdir(), 'credits-sqlite-conformance-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

runStorageConformance({
  name: 'sqlite',
  create: () => new SqliteStorage({ filename: join(dir, `${randomUUID()}.db`) }),
});

import { defineConfig } from 'tsup';

export default defineConfig({
  entry: {
    index: 'src/index.ts',
    'adapters/sqlite': 'src/adapters/sqlite/index.ts',
    'adapters/postgres': 'src/adapters/postgres/index.ts',
    'adapters/redis': 'src/adapters/redis/index.ts',
    'testing/index': 'src/testing/index.ts',
  },
  format: ['esm', 'cjs'],
  dts: true,
  clean: true,
  sourcemap: true,
  target: 'node20',
  splitting: true,
  treeshake: true,
  external: ['better-sqlite3', 'pg', 'ioredis', 'vitest'],
});

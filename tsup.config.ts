import { defineConfig } from 'tsup';

export default defineConfig({
  entry: {
    index: 'src/index.ts',
    'storage/index': 'src/storage/index.ts',
    'adapters/sqlite': 'src/adapters/sqlite/index.ts',
    'adapters/postgres': 'src/adapters/postgres/index.ts',
    'adapters/redis': 'src/adapters/redis/index.ts',
    'adapters/mysql': 'src/adapters/mysql/index.ts',
    'providers/openai': 'src/providers/openai.ts',
    'providers/anthropic': 'src/providers/anthropic.ts',
    'providers/ai-sdk': 'src/providers/ai-sdk.ts',
    'report/index': 'src/report/index.ts',
    'testing/index': 'src/testing/index.ts',
  },
  format: ['esm', 'cjs'],
  dts: true,
  clean: true,
  sourcemap: true,
  target: 'node20',
  splitting: true,
  treeshake: true,
  external: ['better-sqlite3', 'pg', 'ioredis', 'mysql2', 'mysql2/promise', 'vitest', 'openai', '@anthropic-ai/sdk', 'ai'],
});

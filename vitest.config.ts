import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    globalSetup: ['test/global-setup.ts'],
    testTimeout: 60_000,
    hookTimeout: 120_000,
    pool: 'forks',
    server: {
      deps: {
        // The built package is loaded by Node itself, as a user's code would load it, not transformed by Vite.
        external: [/\/dist\/.+\.js$/],
      },
    },
  },
});

import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    // Integration files share one broker and a 2-core machine: one file at a time.
    fileParallelism: false,
    projects: [
      {
        test: { name: 'unit', include: ['test/unit/**/*.test.ts'], testTimeout: 20_000 },
      },
      {
        test: {
          name: 'integration',
          include: ['test/integration/**/*.test.ts'],
          // The stack is started once (idempotently) by the project's own launcher.
          globalSetup: ['test/integration/global-setup.ts'],
          testTimeout: 180_000,
          hookTimeout: 600_000,
          pool: 'forks',
        },
      },
    ],
  },
});

import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
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
          // Integration files share one broker and one machine with 2 cores: run them one at a time.
          fileParallelism: false,
          pool: 'forks',
        },
      },
    ],
  },
});

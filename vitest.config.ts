import { defineConfig } from "vitest/config";

// Integration tests start real processes on real files; two cores, so keep
// the number of test files running at once small.
export default defineConfig({
  test: {
    include: ["test/**/*.test.ts"],
    testTimeout: 120_000,
    hookTimeout: 120_000,
    fileParallelism: true,
    maxWorkers: 2,
    reporters: ["default"],
  },
});

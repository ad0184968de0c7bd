// The logger the CLI's clients hand to their links: it logs nothing, because what goes wrong on a
// control call is the caller's to report, in one line. No-ops rather than pino's own silent logger:
// loading pino cost every short command (`status`) about 25 ms (docs/benchmarks.md, CLI start).
import type { Logger } from "pino";

const noop = (): void => {};

export const silentLogger = {
  level: "silent",
  fatal: noop,
  error: noop,
  warn: noop,
  info: noop,
  debug: noop,
  trace: noop,
  silent: noop,
  isLevelEnabled: () => false,
  child: () => silentLogger,
} as unknown as Logger;

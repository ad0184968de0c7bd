// Invariant checks that stay on in production. A broken invariant is a bug:
// the process says so loudly and exits rather than write a volume wrong.
import type { ErrorCode } from "./errors/codes.ts";

export class InvariantError extends Error {
  readonly code = "TM_INVARIANT" satisfies ErrorCode;
  constructor(message: string) {
    super(`invariant broken: ${message}`);
    this.name = "InvariantError";
  }
}

/** The seeded simulation hears of every broken invariant here, wherever it is caught. */
let watcher: ((err: InvariantError) => void) | null = null;

export function watchInvariants(fn: ((err: InvariantError) => void) | null): void {
  watcher = fn;
}

export function assert(condition: unknown, message: string): asserts condition {
  if (!condition) {
    const err = new InvariantError(message);
    watcher?.(err);
    throw err;
  }
}

/** For the subsystem's top level: an InvariantError anywhere ends the process. */
export function installInvariantExit(log: (err: Error) => void): void {
  const die = (err: unknown) => {
    const e = err instanceof Error ? err : new Error(String(err));
    log(e);
    process.exit(70);
  };
  process.on("uncaughtException", die);
  process.on("unhandledRejection", die);
}

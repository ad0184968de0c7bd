// Invariant checks that stay on in production. A broken invariant is a bug:
// the process says so loudly and exits rather than write a volume wrong.
export class InvariantError extends Error {
  readonly code = "TM_INVARIANT";
  constructor(message: string) {
    super(`invariant broken: ${message}`);
    this.name = "InvariantError";
  }
}

export function assert(condition: unknown, message: string): asserts condition {
  if (!condition) throw new InvariantError(message);
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

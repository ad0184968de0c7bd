// What the engines take from their process besides storage and network: the
// wall clock they show in status and idle timers, and their timers. The
// subsystem passes the real ones (`realRuntime`); the seeded simulation
// passes its own, so the same engine code runs a day of sync intervals in
// milliseconds and replays a seed exactly (STYLE.md item 2).

/** An opaque timer handle: only the runtime that made it can clear it. */
export type TimerHandle = { readonly __timer: unique symbol } | NodeJS.Timeout;

export interface Runtime {
  /** Milliseconds of the wall clock: status, idle times, deadlines. Never a stamp. */
  nowMs(): number;
  setTimeout(fn: () => void, ms: number): TimerHandle;
  clearTimeout(t: TimerHandle): void;
  setInterval(fn: () => void, ms: number): TimerHandle;
  clearInterval(t: TimerHandle): void;
  /** Runs fn after the I/O of this turn of the loop: the group commits' batching point. */
  setImmediate(fn: () => void): void;
  /** A promise that resolves after ms. */
  sleep(ms: number): Promise<void>;
  /**
   * A broken invariant caught where the engine cannot go on (an async loop):
   * the process stops loudly (exit 70 through installInvariantExit); the
   * simulation records a failure and kills the simulated process.
   */
  fatal(err: Error): void;
}

export const realRuntime: Runtime = {
  nowMs: () => Date.now(),
  setTimeout: (fn, ms) => setTimeout(fn, ms),
  clearTimeout: (t) => clearTimeout(t as NodeJS.Timeout),
  setInterval: (fn, ms) => setInterval(fn, ms),
  clearInterval: (t) => clearInterval(t as NodeJS.Timeout),
  setImmediate: (fn) => void setImmediate(fn),
  sleep: (ms) => new Promise((r) => setTimeout(r, ms)),
  fatal: (err) =>
    void setImmediate(() => {
      throw err;
    }),
};

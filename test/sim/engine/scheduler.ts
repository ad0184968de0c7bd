// The simulation's one event loop: simulated time, one seeded PRNG, and an
// ordered queue of events. Every timer, I/O completion and message delivery
// of the simulated processes is an event here; between two events the
// microtasks the last one started run to the end (the engines' awaits), so a
// seed replays exactly. A simulated process owns its events: kill -9 drops
// every one it has not run yet, so nothing of it runs again.
import { prng } from "../../../appliance/drill/prng.ts";
import type { Runtime, TimerHandle } from "../../../appliance/runtime/runtime.ts";

/** Events at one instant past which time is taken to have stopped (a livelock, not work). */
const LIVELOCK_EVENTS = 100_000;

/** Nanoseconds of simulated true time per millisecond. */
export const NS_PER_MS = 1_000_000n;

interface SimEvent {
  atMs: number;
  seq: number;
  owner: SimProcess | null;
  run: () => void;
  cancelled: boolean;
  interval?: number;
}

/** A min-heap of events by (time, seq): seq keeps same-time events in the order they were made. */
class EventQueue {
  private heap: SimEvent[] = [];

  get size(): number {
    return this.heap.length;
  }

  push(e: SimEvent): void {
    const h = this.heap;
    h.push(e);
    let i = h.length - 1;
    while (i > 0) {
      const p = (i - 1) >> 1;
      if (!before(h[i], h[p])) break;
      [h[i], h[p]] = [h[p], h[i]];
      i = p;
    }
  }

  pop(): SimEvent | undefined {
    const h = this.heap;
    if (h.length === 0) return undefined;
    const top = h[0];
    const last = h.pop()!;
    if (h.length > 0) {
      h[0] = last;
      let i = 0;
      for (;;) {
        const l = 2 * i + 1;
        const r = l + 1;
        let m = i;
        if (l < h.length && before(h[l], h[m])) m = l;
        if (r < h.length && before(h[r], h[m])) m = r;
        if (m === i) break;
        [h[i], h[m]] = [h[m], h[i]];
        i = m;
      }
    }
    return top;
  }

  peek(): SimEvent | undefined {
    return this.heap[0];
  }
}

function before(a: SimEvent, b: SimEvent): boolean {
  return a.atMs < b.atMs || (a.atMs === b.atMs && a.seq < b.seq);
}

/** Lets every microtask started by the last event run: no real I/O is pending in a simulation. */
const settle = () => new Promise<void>((r) => setImmediate(r));

export class Scheduler {
  readonly random: () => number;
  private readonly queue = new EventQueue();
  private seq = 0;
  private now = 0;
  /** Clock reads within one millisecond: each read sees a later true time. */
  private bump = 0n;
  events = 0;
  /** Set when simulated time stopped moving: events keep coming at one instant. */
  stalled: string | null = null;
  private eventsThisMs = 0;

  constructor(readonly seed: number) {
    this.random = prng(seed);
  }

  get nowMs(): number {
    return this.now;
  }

  /**
   * True time in ns. Every read is 1 ns after the previous one, so events
   * that depend on each other (an ack, then a dependent write) always see
   * increasing times, as on a real clock.
   */
  trueNs(): bigint {
    this.bump++;
    return BigInt(this.now) * NS_PER_MS + this.bump;
  }

  /** Uniform integer in [lo, hi]. */
  int(lo: number, hi: number): number {
    return lo + Math.floor(this.random() * (hi - lo + 1));
  }

  chance(p: number): boolean {
    return this.random() < p;
  }

  pick<T>(xs: readonly T[]): T {
    return xs[Math.floor(this.random() * xs.length)];
  }

  at(delayMs: number, run: () => void, owner: SimProcess | null = null): SimEvent {
    const e: SimEvent = { atMs: this.now + Math.max(0, delayMs), seq: this.seq++, owner, run, cancelled: false };
    this.queue.push(e);
    return e;
  }

  /** Runs one event and the microtasks it starts; false when nothing is left. */
  async step(): Promise<boolean> {
    for (;;) {
      const e = this.queue.pop();
      if (!e) return false;
      if (e.cancelled || (e.owner && !e.owner.alive)) continue;
      if (e.atMs > this.now) {
        this.now = e.atMs;
        this.bump = 0n;
        this.eventsThisMs = 0;
      }
      if (++this.eventsThisMs > LIVELOCK_EVENTS) {
        this.stalled ??= `livelock: more than ${LIVELOCK_EVENTS} events at ${this.now} ms of simulated time (last owner ${e.owner?.name ?? "none"})`;
        return false;
      }
      this.events++;
      if (e.interval !== undefined) {
        e.atMs = this.now + e.interval;
        e.seq = this.seq++;
        this.queue.push(e);
      }
      e.run();
      await settle();
      return true;
    }
  }

  /** Runs events until `until` says stop or time passes `deadlineMs`. */
  async runUntil(until: () => boolean, deadlineMs: number): Promise<boolean> {
    while (!until()) {
      if (this.stalled) return false;
      const next = this.queue.peek();
      if (!next || next.atMs > deadlineMs) {
        this.now = Math.max(this.now, deadlineMs);
        return until();
      }
      await this.step();
    }
    return true;
  }

  /**
   * Runs events until `work` settles, for at most `ms` of simulated time:
   * its value, or its error. A test drives an RCM procedure or a host call
   * to its end this way.
   */
  async settle<T>(work: Promise<T>, ms: number): Promise<T> {
    let out: { v: T } | { e: unknown } | null = null;
    work.then(
      (v) => (out = { v }),
      (e: unknown) => (out = { e }),
    );
    if (!(await this.runUntil(() => out !== null, this.now + ms))) throw new Error(`simulation: the work did not settle within ${ms} ms of simulated time`);
    const r = out as unknown as { v: T } | { e: unknown };
    if ("e" in r) throw r.e;
    return r.v;
  }

  /** Runs every event up to `ms` from now. */
  async runFor(ms: number): Promise<void> {
    const end = this.now + ms;
    await this.runUntil(() => false, end);
  }

  /** An event kept for one process: timers and I/O completions of that process. */
  process(name: string): SimProcess {
    return new SimProcess(this, name);
  }
}

/**
 * One incarnation of a simulated process. Its runtime's timers are events it
 * owns; once killed, none of them runs, and a new incarnation starts with
 * none.
 */
export class SimProcess {
  alive = true;
  /** The error the process stopped on (runtime.fatal). */
  fatal: Error | null = null;
  readonly runtime: Runtime;
  private immediateAt = 0;

  constructor(
    readonly sched: Scheduler,
    readonly name: string,
  ) {
    const handle = (e: SimEvent) => e as unknown as TimerHandle;
    this.runtime = {
      nowMs: () => sched.nowMs,
      setTimeout: (fn, ms) => handle(sched.at(ms, fn, this)),
      clearTimeout: (t) => {
        (t as unknown as SimEvent).cancelled = true;
      },
      setInterval: (fn, ms) => {
        const e = sched.at(Math.max(1, ms), fn, this);
        e.interval = Math.max(1, ms);
        return handle(e);
      },
      clearInterval: (t) => {
        (t as unknown as SimEvent).cancelled = true;
      },
      // A turn of the loop takes time on a busy process: 0 or 1 ms, in order.
      setImmediate: (fn) => {
        this.immediateAt = Math.max(this.immediateAt, sched.nowMs + (sched.chance(0.3) ? 1 : 0));
        sched.at(this.immediateAt - sched.nowMs, fn, this);
      },
      sleep: (ms) => new Promise<void>((r) => void sched.at(ms, r, this)),
      fatal: (err) => {
        this.fatal ??= err;
        this.kill();
      },
    };
  }

  /** Runs fn after delayMs unless this process died meanwhile (an I/O completion). */
  after(delayMs: number, fn: () => void): void {
    this.sched.at(delayMs, fn, this);
  }

  kill(): void {
    this.alive = false;
  }
}

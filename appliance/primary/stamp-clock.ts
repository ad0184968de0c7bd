// Timestamps for RCRs. DESIGN.md's rule: a write acknowledged to a host has a
// smaller stamp than any write any primary accepts afterwards. On one host
// every process reads the same CLOCK_MONOTONIC, and stamps are kept strictly
// increasing over a persisted floor (the clock restarts at boot). Pure: the
// clock reading is injected.
import { assert } from "../invariant.ts";

export type ClockSource = "monotonic" | "realtime";

export class StampClock {
  private last: bigint;

  constructor(
    private readonly readNs: () => bigint,
    floor: bigint,
  ) {
    this.last = floor;
  }

  /** The next stamp: max(clock, last + 1). Strictly increasing. */
  stamp(): bigint {
    const now = this.readNs();
    const ts = now > this.last ? now : this.last + 1n;
    assert(ts > this.last, "timestamps strictly increase");
    this.last = ts;
    return ts;
  }

  /** The greatest stamp handed out (or announced) so far. */
  get lastStamp(): bigint {
    return this.last;
  }

  /** The current reading, without consuming a stamp. */
  now(): bigint {
    return this.readNs();
  }
}

/** Nanoseconds of CLOCK_MONOTONIC: the same clock in every process of a host. */
export function monotonicNs(): bigint {
  return process.hrtime.bigint();
}

const realtimeOrigin = BigInt(Date.now()) * 1_000_000n - process.hrtime.bigint();
/**
 * Nanoseconds since the epoch. Subsystems on several hosts use it, with each
 * acknowledgement delayed past ts + maxClockOffsetMs (commit wait), which also
 * covers this process's sub-millisecond origin error.
 */
export function realtimeNs(): bigint {
  return realtimeOrigin + process.hrtime.bigint();
}

export function clockReader(source: ClockSource): () => bigint {
  return source === "monotonic" ? monotonicNs : realtimeNs;
}

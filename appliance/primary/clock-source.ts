// The clocks stamps are read from. "monotonic": every process of one host
// reads CLOCK_MONOTONIC, one clock for all of them, offset by the boot time
// the kernel gives every process alike (/proc/stat btime), so the stamps of a
// later boot stay above those of an earlier one. "realtime": several hosts;
// acknowledgements wait out maxClockOffsetMs (commit wait), which also covers
// this process's sub-millisecond origin error.
import { readFileSync } from "node:fs";

export type ClockSource = "monotonic" | "realtime";

function bootEpochNs(): bigint {
  try {
    const m = /^btime (\d+)$/m.exec(readFileSync("/proc/stat", "utf8"));
    if (m) return BigInt(m[1]) * 1_000_000_000n;
  } catch {
    /* not Linux: the plain monotonic clock */
  }
  return 0n;
}

const bootEpoch = bootEpochNs();
const realtimeOrigin = BigInt(Date.now()) * 1_000_000n - process.hrtime.bigint();

/** Nanoseconds: CLOCK_MONOTONIC plus the boot time in whole seconds, identical in every process of a boot. */
export function monotonicNs(): bigint {
  return bootEpoch + process.hrtime.bigint();
}

/** Nanoseconds since the epoch. */
export function realtimeNs(): bigint {
  return realtimeOrigin + process.hrtime.bigint();
}

export function clockReader(source: ClockSource): () => bigint {
  return source === "monotonic" ? monotonicNs : realtimeNs;
}

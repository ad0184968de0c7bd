// The clocks the simulated subsystems stamp with, read through the product's
// own clock source (appliance/primary/clock-source.ts, createHostClock) with
// simulated readers: true time for CLOCK_MONOTONIC, and a wall clock that the
// seed steps back and forth (NTP makestep, an admin's `date -s`). Monotonic
// mode is one host: every process reads the epoch file of the one boot.
// Realtime mode is a host per subsystem, each wall clock skewed within
// maxClockOffsetMs of true time. The epoch files are real files in a
// temporary folder of the seed's own.
import { mkdtempSync, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { createHostClock, type HostClock } from "../../../appliance/primary/clock-source.ts";
import { NS_PER_MS, type Scheduler, type SimProcess } from "./scheduler.ts";
import type { SimClockModel } from "./cluster.ts";

export interface SimClockOptions {
  mode: "monotonic" | "realtime";
  maxClockOffsetMs: number;
  /**
   * Negative control: the clock before issue 11's fix, each process adding
   * the boot time it read at its start (/proc/stat btime, which moves with
   * every wall-clock step) to CLOCK_MONOTONIC.
   */
  perProcessEpoch: boolean;
}

/** Wall clock 2026-ish: far above any monotonic reading, as on a real host. */
const WALL_BASE_NS = 1_790_000_000n * 1_000_000_000n;

export function simClock(sched: Scheduler, o: SimClockOptions): SimClockModel & { close(): void } {
  const dir = mkdtempSync(path.join(os.tmpdir(), "tidemark-sim-clock-"));
  /** The wall clock's steps so far (makestep, manual set). */
  let stepNs = 0n;
  const skew = new Map<number, bigint>();
  const clocks: HostClock[] = [];
  // Wall-clock steps at random moments, either way, up to 3 s.
  const step = () => {
    stepNs += BigInt(sched.int(-3000, 3000)) * NS_PER_MS;
    sched.at(sched.int(50, 1500), step);
  };
  sched.at(sched.int(50, 1500), step);
  const wallOf = (hostId: number) => () => WALL_BASE_NS + sched.trueNs() + stepNs + (skew.get(hostId) ?? 0n);
  const hostClock = (hostId: number) => {
    const c = createHostClock({
      dir: path.join(dir, o.mode === "monotonic" ? "host" : `host${hostId}`),
      bootId: "00000000-0000-4000-8000-000000000001",
      wallNs: wallOf(hostId),
      monoNs: () => sched.trueNs(),
      warn: () => {},
      syncIntervalMs: 0,
    });
    clocks.push(c);
    return c;
  };
  return {
    readerFor(hostId: number, _proc: SimProcess): () => bigint {
      if (o.mode === "realtime") {
        if (!skew.has(hostId)) skew.set(hostId, BigInt(Math.round(((sched.random() - 0.5) * o.maxClockOffsetMs * 1e6) | 0)));
        return hostClock(hostId).reader("realtime");
      }
      if (o.perProcessEpoch) {
        // btime in whole seconds, read once at this process's start.
        const btimeNs = ((wallOf(hostId)() - sched.trueNs()) / 1_000_000_000n) * 1_000_000_000n;
        return () => btimeNs + sched.trueNs();
      }
      return hostClock(hostId).reader("monotonic");
    },
    close: () => {
      for (const c of clocks) c.close();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

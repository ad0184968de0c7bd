// Measured clock offsets between subsystems (docs/clock.md, "Measured
// offsets"), the way NTP measures them: the RCM reads its own clock (t0),
// asks a subsystem for its stamp clock (r), reads its clock again (t1); the
// subsystem's clock is then r - (t0 + t1) / 2 ahead of the RCM's, give or take
// half the round trip. The RCM's own offset cancels between two subsystems,
// so it need not be right: only the pairs count. Of the last few samples of a
// subsystem the one with the shortest round trip is kept, as NTP's clock
// filter does, since a long round trip is a wide error bar.
// Why the RCM and not the links: commit wait covers the offset between the
// primaries of a group (dependent writes alternate between them), and
// primaries never link to each other; the RCM reaches every subsystem.
// Pure: samples come in as numbers.

/** Samples kept per subsystem; the shortest round trip among them is the estimate. */
export const OFFSET_SAMPLES_KEPT = 8;
/** A sample older than this says nothing of the clock now (a clock may be stepped). */
export const OFFSET_SAMPLE_MAX_AGE_MS = 60_000;
/**
 * The real-time clock is read at 1 ms resolution (Date.now under the stamp
 * clock): each of the two readings a pair's offset rests on may be off by up
 * to this much.
 */
export const CLOCK_READ_RESOLUTION_MS = 1;

export interface OffsetSample {
  /** The subsystem's clock minus the RCM's, in ms. */
  offsetMs: number;
  roundTripMs: number;
  /** When it was taken (the RCM's ms clock). */
  atMs: number;
}

/** One sample from the RCM's readings before (t0) and after (t1) the request and the subsystem's reading r, all ns. */
export function offsetSample(t0Ns: bigint, remoteNs: bigint, t1Ns: bigint, atMs: number): OffsetSample {
  const rtt = t1Ns - t0Ns;
  // The mid-point, doubled, so no precision is lost to halving an odd number.
  const offsetDoubled = 2n * remoteNs - (t0Ns + t1Ns);
  return { offsetMs: Number(offsetDoubled) / 2e6, roundTripMs: Number(rtt < 0n ? 0n : rtt) / 1e6, atMs };
}

export interface OffsetEstimate {
  offsetMs: number;
  /** Half the round trip plus the clock's read resolution: the true offset lies within offsetMs ± this. */
  uncertaintyMs: number;
  roundTripMs: number;
  atMs: number;
}

export interface PairOffset {
  /** The subsystem whose clock is ahead, and the one behind. */
  ahead: number;
  behind: number;
  offsetMs: number;
  uncertaintyMs: number;
}

export class ClockOffsets {
  private readonly samples = new Map<number, OffsetSample[]>();

  add(subsystem: number, s: OffsetSample): void {
    const list = this.samples.get(subsystem) ?? [];
    list.push(s);
    if (list.length > OFFSET_SAMPLES_KEPT) list.shift();
    this.samples.set(subsystem, list);
  }

  /** A subsystem restarted or went away: its old samples may be of another clock. */
  forget(subsystem: number): void {
    this.samples.delete(subsystem);
  }

  /** The estimate from the subsystem's recent samples, or null with none. */
  estimate(subsystem: number, nowMs: number): OffsetEstimate | null {
    let best: OffsetSample | null = null;
    for (const s of this.samples.get(subsystem) ?? []) {
      if (nowMs - s.atMs > OFFSET_SAMPLE_MAX_AGE_MS) continue;
      if (best === null || s.roundTripMs < best.roundTripMs) best = s;
    }
    if (best === null) return null;
    return { offsetMs: best.offsetMs, uncertaintyMs: best.roundTripMs / 2 + CLOCK_READ_RESOLUTION_MS, roundTripMs: best.roundTripMs, atMs: best.atMs };
  }

  /** Every pair of `subsystems` with estimates, the widest apart first. */
  pairs(subsystems: readonly number[], nowMs: number): PairOffset[] {
    const known = subsystems.flatMap((id) => {
      const e = this.estimate(id, nowMs);
      return e === null ? [] : [{ id, e }];
    });
    const out: PairOffset[] = [];
    for (let i = 0; i < known.length; i++) {
      for (let j = i + 1; j < known.length; j++) {
        const [a, b] = known[i].e.offsetMs >= known[j].e.offsetMs ? [known[i], known[j]] : [known[j], known[i]];
        out.push({ ahead: a.id, behind: b.id, offsetMs: a.e.offsetMs - b.e.offsetMs, uncertaintyMs: a.e.uncertaintyMs + b.e.uncertaintyMs });
      }
    }
    return out.sort((x, y) => y.offsetMs - x.offsetMs);
  }

  /**
   * The widest pair of `subsystems` whose clocks are certainly further apart
   * than `boundMs`: its offset less its uncertainty is above the bound. A
   * measurement too coarse to tell suspends nothing; status shows it.
   */
  beyond(subsystems: readonly number[], boundMs: number, nowMs: number): PairOffset | null {
    for (const p of this.pairs(subsystems, nowMs)) if (p.offsetMs - p.uncertaintyMs > boundMs) return p;
    return null;
  }
}

/** What the RCM's status reports of the clocks (docs/status.md, `clockOffsets`). */
export interface ClockOffsetReport {
  /** Per subsystem with a recent estimate: its clock minus the RCM's. */
  subsystems: { subsystem: number; offsetMs: number; uncertaintyMs: number; roundTripMs: number; ageMs: number }[];
  /** The pair of subsystems furthest apart, or null with fewer than two estimates. */
  widest: PairOffset | null;
  boundMs: number;
}

/** The monitor's condition for a pair beyond the bound: names both subsystems and the offset. */
export function offsetCondition(p: PairOffset, boundMs: number): string {
  return `clock of subsystem #${p.ahead} is ${p.offsetMs.toFixed(1)} ms (±${p.uncertaintyMs.toFixed(1)}) ahead of subsystem #${p.behind}'s, beyond maxClockOffsetMs ${boundMs}: commit wait no longer orders dependent writes between them`;
}

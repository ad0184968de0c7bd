// Timestamps for RCRs. DESIGN.md's rule: a write acknowledged to a host has a
// smaller stamp than any write any primary accepts afterwards. Stamps are
// kept strictly increasing over a persisted floor. Pure: the clock reading is
// injected (appliance/primary/clock-source.ts reads the real clocks).
import { assert } from "../invariant.ts";

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

  /** Every later stamp exceeds `floor` (a turn's Ts, which the other side rests at). */
  raiseFloor(floor: bigint): void {
    if (floor > this.last) this.last = floor;
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

// The RCM's clock-offset arithmetic (appliance/rcm/clock-offsets.ts), exhaustively on small cases.
import { describe, expect, it } from "vitest";
import { CLOCK_READ_RESOLUTION_MS, ClockOffsets, OFFSET_SAMPLE_MAX_AGE_MS, OFFSET_SAMPLES_KEPT, offsetCondition, offsetSample } from "../../appliance/rcm/clock-offsets.ts";

const ms = (x: number) => BigInt(Math.round(x * 1e6));

describe("clock offsets", () => {
  it("one sample: the remote reading against the mid-point of the round trip, to the nanosecond", () => {
    expect(offsetSample(ms(1000), ms(1006), ms(1002), 0)).toEqual({ offsetMs: 5, roundTripMs: 2, atMs: 0 });
    expect(offsetSample(ms(1000), ms(999), ms(1002), 0)).toEqual({ offsetMs: -2, roundTripMs: 2, atMs: 0 });
    // An odd round trip in ns keeps its half nanosecond.
    expect(offsetSample(0n, 10n, 3n, 0).offsetMs).toBeCloseTo(8.5e-6, 12);
    // A clock stepped back under the probe gives no negative round trip.
    expect(offsetSample(ms(10), ms(10), ms(9), 0).roundTripMs).toBe(0);
  });

  it("the estimate is the shortest round trip of the kept samples, with half of it plus the read resolution as its uncertainty", () => {
    const o = new ClockOffsets();
    o.add(1, { offsetMs: 9, roundTripMs: 8, atMs: 0 });
    o.add(1, { offsetMs: 4.2, roundTripMs: 0.4, atMs: 1 });
    o.add(1, { offsetMs: 6, roundTripMs: 3, atMs: 2 });
    expect(o.estimate(1, 10)).toEqual({ offsetMs: 4.2, uncertaintyMs: 0.2 + CLOCK_READ_RESOLUTION_MS, roundTripMs: 0.4, atMs: 1 });
    expect(o.estimate(2, 10)).toBeNull();
    // Old samples drop out: by count, and by age.
    for (let i = 0; i < OFFSET_SAMPLES_KEPT; i++) o.add(1, { offsetMs: 7, roundTripMs: 5, atMs: 3 + i });
    expect(o.estimate(1, 20)?.offsetMs).toBe(7);
    expect(o.estimate(1, 3 + OFFSET_SAMPLES_KEPT + OFFSET_SAMPLE_MAX_AGE_MS)).toBeNull();
    o.forget(1);
    expect(o.estimate(1, 20)).toBeNull();
  });

  it("pairs: the RCM's own offset cancels; the widest first; beyond() only when offset minus uncertainty passes the bound", () => {
    const o = new ClockOffsets();
    // Every subsystem read against an RCM clock 100 ms off: the pairs do not see it.
    o.add(1, { offsetMs: 100, roundTripMs: 0, atMs: 0 });
    o.add(2, { offsetMs: 112.5, roundTripMs: 1, atMs: 0 });
    o.add(3, { offsetMs: 99, roundTripMs: 0, atMs: 0 });
    const pairs = o.pairs([1, 2, 3], 0);
    expect(pairs.map((p) => [p.ahead, p.behind, p.offsetMs])).toEqual([
      [2, 3, 13.5],
      [2, 1, 12.5],
      [1, 3, 1],
    ]);
    // #2 vs #3: 13.5 ms ± (0.5 + 1 + 0 + 1) = 2.5 ms.
    expect(pairs[0].uncertaintyMs).toBe(2.5);
    expect(o.beyond([1, 2, 3], 10, 0)?.ahead).toBe(2);
    expect(o.beyond([1, 2, 3], 11, 0)).toBeNull(); // 13.5 - 2.5 = 11: not certainly beyond
    expect(o.beyond([1, 3], 0.5, 0)).toBeNull(); // 1 - 2 < 0.5
    expect(o.beyond([1, 2], 9.9, 0)?.behind).toBe(1); // 12.5 - 2.5 = 10 > 9.9
    expect(offsetCondition(pairs[0], 10)).toBe(
      "clock of subsystem #2 is 13.5 ms (±2.5) ahead of subsystem #3's, beyond maxClockOffsetMs 10: commit wait no longer orders dependent writes between them",
    );
  });
});

import { describe, expect, it } from "vitest";
import { initialTimes, mayApply, onSync, withPrimaries, type GroupTimes } from "../../appliance/secondary/time-parameters.ts";

const T = (n: number) => BigInt(n);

describe("time parameters: the seed's Fig. 5", () => {
  it("time parameters: SYNC-C1-#1-T7 lifts 111 #1 to T7 and 112 to T5, moving io-12 (T4) but not io-13 (T6) or io-14 (T7)", () => {
    // Fig. 5A on subsystem #3: 111 #1 = T3, 111 #2 = T5, 112 = T3; io-10 (T0) and io-11 (T3) were already moved.
    const before: GroupTimes = { first: new Map([[1, T(3)], [2, T(5)]]), second: T(3) };
    const queue = [
      { io: "io-12", ts: T(4) },
      { io: "io-13", ts: T(6) },
      { io: "io-14", ts: T(7) },
    ];
    const out = onSync(before, 1, T(7));
    expect(out.kind).toBe("raised");
    if (out.kind !== "raised") return;
    expect(out.times.first.get(1)).toBe(T(7));
    expect(out.times.first.get(2)).toBe(T(5));
    expect(out.times.second).toBe(T(5));
    expect(out.release).toEqual({ from: T(3), to: T(5) });
    const moved = queue.filter((q) => q.ts > out.release!.from && q.ts <= out.release!.to).map((q) => q.io);
    expect(moved).toEqual(["io-12"]);
    expect(queue.filter((q) => mayApply(out.times, q.ts)).map((q) => q.io)).toEqual(["io-12"]);
  });

  it("time parameters: a stale or repeated SYNC changes nothing", () => {
    const t0: GroupTimes = { first: new Map([[1, T(9)], [2, T(5)]]), second: T(5) };
    expect(onSync(t0, 1, T(9)).kind).toBe("stale");
    expect(onSync(t0, 1, T(2)).kind).toBe("stale");
    expect(onSync(t0, 7, T(20)).kind).toBe("unknown-primary");
  });

  it("time parameters: raising a primary that is not the minimum moves nothing", () => {
    const t0: GroupTimes = { first: new Map([[1, T(9)], [2, T(5)]]), second: T(5) };
    const out = onSync(t0, 1, T(12));
    expect(out.kind === "raised" && out.release).toBe(null);
  });

  it("time parameters: a primary joining a group starts at the current 112, not zero", () => {
    const t0: GroupTimes = { first: new Map([[1, T(9)], [2, T(5)]]), second: T(5) };
    const t1 = withPrimaries(t0, [1, 2, 3]);
    expect(t1.first.get(3)).toBe(T(5));
    expect(t1.second).toBe(T(5));
    expect(initialTimes([1, 2]).second).toBe(0n);
  });
});

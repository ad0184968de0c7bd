// The seed's Figs. 7A-7G as a test of the pure after-failure logic: the RCM's
// synchronized time from the collected 111s, and each secondary's split of its
// queue into RCRs applied (ts <= Ts) and bitmap blocks (ts > Ts).
import { describe, expect, it } from "vitest";
import { synchronizedTime } from "../../appliance/rcm/synchronized-time.ts";
import { splitAtSynchronizedTime, type QueuedRcr } from "../../appliance/secondary/synchronized-apply.ts";
import { minFirst } from "../../appliance/secondary/time-parameters.ts";

const T = (n: number) => BigInt(n);
const rcr = (io: string, ts: number, primaryId: number, block: number): QueuedRcr & { io: string } => ({
  io,
  ts: T(ts),
  primaryId,
  seq: ts,
  volume: `vol-${io.slice(3, 4)}`,
  offset: block * 4096,
  length: 4096,
});

describe("takeover: the seed's Fig. 7", () => {
  // 102 #3..#5 hold 111-1..111-3. The text gives: the greatest 111 for primary
  // #1 is T3 (on #3), io-11 (T3) was already applied on #3, io-23 (T2) and
  // io-31 (T2) were still queued on #4 and #5 (their 112 was below T2).
  const first = new Map([
    [3, new Map([[1, T(3)], [2, T(5)]])],
    [4, new Map([[1, T(1)], [2, T(5)]])],
    [5, new Map([[1, T(1)], [2, T(4)]])],
  ]);
  const queues = new Map([
    [3, [rcr("io-13", 6, 1, 3), rcr("io-14", 7, 1, 4)]],
    [4, [rcr("io-23", 2, 1, 3), rcr("io-24", 4, 2, 4)]],
    [5, [rcr("io-31", 2, 2, 1), rcr("io-32", 5, 2, 2)]],
  ]);

  it("takeover: the RCM picks T3 as the synchronized time (Fig. 7A, steps 601-602)", () => {
    expect(synchronizedTime(first)).toBe(T(3));
    // 112 at each secondary never exceeds Ts (DESIGN.md's invariant).
    for (const f of first.values()) expect(minFirst(f) <= T(3)).toBe(true);
  });

  it("takeover: SYNC(T3) applies io-23 (T2) and io-31 (T2) and turns the rest into bitmap blocks (Figs. 7B-7F)", () => {
    const ts = synchronizedTime(first);
    const applied: string[] = [];
    const dropped: string[] = [];
    const bits: string[] = [];
    for (const [s, q] of queues) {
      const out = splitAtSynchronizedTime(q, ts);
      applied.push(...out.apply.map((r) => r.io));
      dropped.push(...out.drop.map((r) => r.io));
      for (const [v, set] of out.bitmap) for (const b of set) bits.push(`#${s}:${v}:${b}`);
    }
    expect(applied.sort()).toEqual(["io-23", "io-31"]);
    expect(dropped.sort()).toEqual(["io-13", "io-14", "io-24", "io-32"]);
    expect(bits.sort()).toEqual(["#3:vol-1:3", "#3:vol-1:4", "#4:vol-2:4", "#5:vol-3:2"]);
  });

  it("takeover: applied RCRs come out in (ts, primary, seq) order and a range marks every block it touches", () => {
    const q: QueuedRcr[] = [
      { ts: T(5), primaryId: 2, seq: 9, volume: "v", offset: 0, length: 512 },
      { ts: T(5), primaryId: 1, seq: 3, volume: "v", offset: 0, length: 512 },
      { ts: T(1), primaryId: 2, seq: 1, volume: "v", offset: 0, length: 512 },
      { ts: T(9), primaryId: 1, seq: 4, volume: "v", offset: 4096 - 512, length: 8192 },
    ];
    const out = splitAtSynchronizedTime(q, T(5));
    expect(out.apply.map((r) => `${r.ts}/${r.primaryId}`)).toEqual(["1/2", "5/1", "5/2"]);
    expect([...out.bitmap.get("v")!].sort()).toEqual([0, 1, 2]);
  });
});

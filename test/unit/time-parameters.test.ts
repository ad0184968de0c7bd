import { describe, expect, it } from "vitest";
import { prng } from "../../appliance/drill/prng.ts";
import { CutConflict, procedureCut, resyncCut, type ResyncReport } from "../../appliance/rcm/synchronized-time.ts";
import {
  barrierOf,
  initialTimes,
  mayApply,
  minFirst,
  onCopied,
  onSync,
  startHold,
  withPrimaries,
  type GroupTimes,
  type SyncOutcome,
} from "../../appliance/secondary/time-parameters.ts";

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

describe("time parameters: a resync's hold and barrier (docs/resync.md)", () => {
  const rested = (first: [number, number][], floor: number): GroupTimes => startHold({ first: new Map(first.map(([p, t]) => [p, T(t)])), second: T(floor), hold: null }, T(floor));
  const raised = (out: SyncOutcome) => {
    expect(out.kind).toBe("raised");
    if (out.kind !== "raised") throw new Error("not raised");
    return out;
  };

  it("resync: 112 stays at T_old through SYNCs until every primary's COPIED is in and min 111 reaches C", () => {
    // Two primaries rest at T_old = 10; their SYNCs go on during the copy.
    let t = rested([[1, 12], [2, 10]], 10);
    let out = raised(onSync(t, 2, T(20)));
    expect(out.times.second).toBe(T(10));
    expect(out.release).toBe(null);
    t = out.times;
    // COPIED(1, 30): C is not known while primary 2 is still copying.
    out = raised(onCopied(t, 1, T(30)));
    expect(barrierOf(out.times.first, out.times.hold!)).toBe(null);
    expect(out.times.second).toBe(T(10));
    t = out.times;
    // COPIED(2, 25): C = 30, but min 111 = 12 < C: still held.
    out = raised(onCopied(t, 2, T(25)));
    expect(barrierOf(out.times.first, out.times.hold!)).toBe(T(30));
    expect(out.times.second).toBe(T(10));
    expect(out.lifted).toBe(false);
    t = out.times;
    out = raised(onSync(t, 1, T(29)));
    expect(out.times.second).toBe(T(10));
    t = out.times;
    // min 111 = 20 still < 30; then primary 2 passes C: the hold lifts and 112 = min 111.
    out = raised(onSync(t, 1, T(40)));
    expect(out.lifted).toBe(false);
    out = raised(onSync(out.times, 2, T(31)));
    expect(out.lifted).toBe(true);
    expect(out.times.hold).toBe(null);
    expect(out.times.second).toBe(T(31));
    expect(out.release).toEqual({ from: T(10), to: T(31) });
    // After the lift 112 follows min 111 again; a late COPIED is stale.
    expect(onCopied(out.times, 1, T(30)).kind).toBe("stale");
  });

  it("resync: a repeated COPIED is stale, one of an unknown primary is refused, one without a hold changes nothing", () => {
    const t = raised(onCopied(rested([[1, 5]], 5), 1, T(9))).times;
    expect(onCopied(t, 1, T(9)).kind).toBe("stale");
    expect(onCopied(t, 3, T(9)).kind).toBe("unknown-primary");
    expect(onCopied(initialTimes([1, 2]), 1, T(9)).kind).toBe("stale");
  });

  it("resync: barrierOf is null until every primary of the group has copied, then the greatest C_k", () => {
    const first = new Map([[1, T(0)], [2, T(0)], [3, T(0)]]);
    expect(barrierOf(first, { floor: 0n, copied: new Map([[1, T(5)], [2, T(9)]]) })).toBe(null);
    expect(barrierOf(first, { floor: 0n, copied: new Map([[1, T(5)], [2, T(9)], [3, T(7)]]) })).toBe(T(9));
    // A COPIED of a primary outside the group does not count.
    expect(barrierOf(first, { floor: 0n, copied: new Map([[1, T(5)], [2, T(9)], [4, T(70)]]) })).toBe(null);
  });

  it("resync: startHold refuses a floor below 112", () => {
    expect(() => startHold({ first: new Map([[1, T(9)]]), second: T(9) }, T(8))).toThrow(/floor/);
  });

  it("resync: a restart (withPrimaries) keeps 112 where a cut put it, below min 111, and keeps the hold", () => {
    // A takeover during a resync cut at T_old = 10 while the primaries had announced up to 40:
    // 112 = 10 < min 111. Reloading the state must not lift 112 to min 111 (the next resync's
    // startHold(times, 10) would then refuse: the simulation found this, seed 67 of --resync).
    const cut: GroupTimes = { first: new Map([[1, T(40)], [2, T(45)]]), second: T(10), hold: null };
    const loaded = withPrimaries(cut, [1, 2]);
    expect(loaded.second).toBe(T(10));
    expect(() => startHold(loaded, T(10))).not.toThrow();
    // A holding group reloads holding.
    const held = raised(onCopied(rested([[1, 12], [2, 10]], 10), 1, T(30))).times;
    const reheld = withPrimaries(held, [1, 2]);
    expect(reheld.second).toBe(T(10));
    expect(reheld.hold).toEqual(held.hold);
    // A primary joining during a hold starts at 112 and must report COPIED too.
    const joined = withPrimaries(reheld, [1, 2, 3]);
    expect(joined.first.get(3)).toBe(T(10));
    expect(barrierOf(joined.first, raised(onCopied(joined, 2, T(20))).times.hold!)).toBe(null);
  });

  /**
   * A reference model: 112 is T_old while the hold is set; the hold lifts
   * once every primary's COPIED is in and min 111 >= C; then 112 = min 111.
   * Random histories of SYNCs (some stale), COPIEDs (some repeated) and
   * restarts, checked against the module at every step.
   */
  it("resync: random histories agree with a reference model; 112 never falls, releases are contiguous, the hold lifts once", () => {
    let lifts = 0;
    let stillHeld = 0;
    const failures: string[] = [];
    for (let seed = 1; seed <= 1000 && failures.length === 0; seed++) {
      const rnd = prng(seed);
      const int = (a: number, b: number) => a + Math.floor(rnd() * (b - a + 1));
      const n = int(1, 4);
      const ids = Array.from({ length: n }, (_, i) => i + 1);
      const floor = int(0, 20);
      const first0 = ids.map((p) => [p, floor + int(0, 10)] as [number, number]);
      let t = rested(first0, floor);
      const model = { first: new Map(first0), copied: new Map<number, number>(), held: true };
      let released = floor;
      let lifted = 0;
      const ok = (cond: boolean, what: string) => {
        if (!cond) failures.push(`seed ${seed}: ${what}`);
        return cond;
      };
      for (let step = 0; step < 60 && failures.length === 0; step++) {
        const p = ids[int(0, n - 1)];
        const r = rnd();
        let out: SyncOutcome | null = null;
        if (r < 0.6) {
          const v = model.first.get(p)! + int(-3, 8);
          out = onSync(t, p, T(v));
          if (v > model.first.get(p)!) model.first.set(p, v);
        } else if (r < 0.85) {
          // C_k is one stamp per primary; repeats carry the same one.
          const c = model.copied.get(p) ?? floor + int(1, 40);
          out = onCopied(t, p, T(c));
          if (model.held) model.copied.set(p, c);
        } else {
          t = withPrimaries(t, ids);
        }
        const min = Math.min(...model.first.values());
        const c = ids.every((q) => model.copied.has(q)) ? Math.max(...model.copied.values()) : null;
        const wasHeld = model.held;
        if (model.held && c !== null && min >= c) model.held = false;
        const want = model.held ? floor : min;
        if (out?.kind === "raised") {
          ok(out.times.second >= t.second, `step ${step}: 112 fell`);
          if (out.release) {
            ok(out.release.from === t.second && Number(out.release.from) === released, `step ${step}: release ${out.release.from} does not start at ${released}`);
            released = Number(out.release.to);
          }
          if (out.lifted) lifted++;
          ok(out.lifted === (wasHeld && !model.held), `step ${step}: lifted ${out.lifted}, the model ${wasHeld && !model.held}`);
          t = out.times;
        } else if (out) ok(!(wasHeld && !model.held), `step ${step}: ${out.kind} but the model lifted`);
        ok(Number(t.second) === want, `step ${step}: 112 ${t.second}, the model ${want}`);
        ok(!!t.hold === model.held, `step ${step}: hold ${!!t.hold}, the model ${model.held}`);
        if (t.hold) {
          const b = barrierOf(t.first, t.hold);
          ok((b === null ? null : Number(b)) === c, `step ${step}: barrier ${b}, the model ${c}`);
        }
        ok(!mayApply(t, T(want + 1)) && mayApply(t, T(want)), `step ${step}: mayApply disagrees with 112`);
        ok(Number(minFirst(t.first)) === min, `step ${step}: min 111`);
      }
      ok(lifted <= 1, `lifted ${lifted} times`);
      ok(released === Number(t.second), `releases end at ${released}, 112 is ${t.second}`);
      lifts += lifted;
      if (model.held) stillHeld++;
    }
    expect(failures).toEqual([]);
    // The histories exercise both outcomes.
    expect(lifts).toBeGreaterThan(100);
    expect(stillHeld).toBeGreaterThan(100);
  });
});

describe("resyncCut: the cut of a suspension or takeover during a resync", () => {
  const R = (floor: number | null, barrier: number | null): ResyncReport => ({ floor: floor === null ? null : T(floor), barrier: barrier === null ? null : T(barrier) });

  it("resyncCut: no resync (nobody holds) or a lifted hold somewhere: Ts", () => {
    expect(resyncCut(T(50), [R(null, null), R(null, null)])).toBe(T(50));
    expect(resyncCut(T(50), [R(10, 30), R(null, null)])).toBe(T(50));
  });

  it("resyncCut: every secondary holds T_old: T_old until C is known and Ts >= C, then Ts", () => {
    expect(resyncCut(T(50), [R(10, null), R(10, null)])).toBe(T(10));
    expect(resyncCut(T(50), [R(10, 60), R(10, null)])).toBe(T(10));
    expect(resyncCut(T(50), [R(10, 50), R(10, null)])).toBe(T(50));
    expect(resyncCut(T(50), [R(10, 40), R(10, 40)])).toBe(T(50));
  });

  it("resyncCut: secondaries holding different floors is an error, never a guess", () => {
    expect(() => resyncCut(T(50), [R(10, null), R(11, null)])).toThrow(/different floors/);
  });

  it("resyncCut: exhaustively over small reports, the cut is Ts or the one floor, never below the floor, T_old unless the barrier is known and passed", () => {
    const values = [null, 1, 2, 3, 4, 5, 6];
    let cases = 0;
    const reportsOf = function* (m: number): Generator<ResyncReport[]> {
      if (m === 0) {
        yield [];
        return;
      }
      for (const rest of reportsOf(m - 1)) {
        for (const floor of [null, 2]) for (const barrier of values) if (floor !== null || barrier === null) yield [...rest, R(floor, barrier)];
      }
    };
    for (let m = 1; m <= 3; m++) {
      for (const reports of reportsOf(m)) {
        for (let ts = 2; ts <= 7; ts++) {
          cases++;
          const cut = resyncCut(T(ts), reports);
          const holding = reports.filter((r) => r.floor !== null);
          const barriers = holding.map((r) => r.barrier).filter((b): b is bigint => b !== null);
          const c = barriers.length > 0 ? barriers.reduce((a, b) => (a > b ? a : b)) : null;
          if (holding.length < reports.length) expect(cut).toBe(T(ts));
          else if (c !== null && T(ts) >= c) expect(cut).toBe(T(ts));
          else expect(cut).toBe(T(2));
          expect(cut === T(ts) || cut === T(2)).toBe(true);
        }
      }
    }
    expect(cases).toBeGreaterThan(2000);
  });
});

describe("procedureCut: the cut the RCM applies", () => {
  const hold = (floor: bigint | null, barrier: bigint | null = null): ResyncReport => ({ floor, barrier });
  it("procedureCut: a secondary already resting at a synchronized time fixes the cut, whatever Ts is now", () => {
    expect(procedureCut(90n, [{ synchronizedTs: 40n, resync: hold(40n) }, { synchronizedTs: null, resync: hold(null) }])).toBe(40n);
  });
  it("procedureCut: nobody rests: the resync rule decides (Ts, or T_old below the barrier)", () => {
    expect(procedureCut(90n, [{ synchronizedTs: null, resync: hold(null) }])).toBe(90n);
    expect(procedureCut(90n, [{ synchronizedTs: null, resync: hold(10n, 95n) }, { synchronizedTs: null, resync: hold(10n) }])).toBe(10n);
    expect(procedureCut(90n, [{ synchronizedTs: null, resync: hold(10n, 80n) }, { synchronizedTs: null, resync: hold(10n) }])).toBe(90n);
  });
  it("procedureCut: two different resting times cannot be reconciled", () => {
    expect(() => procedureCut(90n, [{ synchronizedTs: 40n, resync: hold(40n) }, { synchronizedTs: 50n, resync: hold(50n) }])).toThrow(CutConflict);
  });
});

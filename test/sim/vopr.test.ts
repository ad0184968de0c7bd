// CI's fixed seeds for the seeded simulator (test/sim/vopr.ts): every seed
// must keep every invariant and end with secondary images equal to the
// primaries' as of Ts. The negative controls show that the simulator catches
// each broken rule DESIGN.md names. Resync histories (docs/resync.md) go on
// through a resync, its interruption at a chosen step and a resync to the
// end. Long sweeps: scripts/sim-sweep.ts.
import { describe, expect, it } from "vitest";
import { INTERRUPT_PHASES, LEADING_FLOOR_NS, PRODUCT_FLOOR_LEAD_NS, replayCommand, simulate, type SimOptions } from "./vopr.ts";

const SEEDS = Number(process.env.TIDEMARK_VOPR_SEEDS ?? 500);
const CI: Omit<SimOptions, "seed"> = { floorLeadNs: PRODUCT_FLOOR_LEAD_NS };
const POWER_CUT_SEEDS = Number(process.env.TIDEMARK_VOPR_POWER_CUT_SEEDS ?? 200);
/** Power cuts, as the product handles them (docs/simulation.md, Findings 2 and 3 are fixed). */
const CUTS: Omit<SimOptions, "seed"> = { ...CI, powerCuts: true };
const RESYNC_SEEDS = Number(process.env.TIDEMARK_VOPR_RESYNC_SEEDS ?? 300);
const RESYNC_POWER_CUT_SEEDS = Number(process.env.TIDEMARK_VOPR_RESYNC_POWER_CUT_SEEDS ?? 150);
const RESYNC: Omit<SimOptions, "seed"> = { ...CI, resync: true };
const RESYNC_CUTS: Omit<SimOptions, "seed"> = { ...CI, resync: true, powerCuts: true };

/** The first failing seed among `count` seeds from 1, or null. */
function firstFailure(o: Omit<SimOptions, "seed">, count: number) {
  for (let seed = 1; seed <= count; seed++) {
    const r = simulate({ ...o, seed });
    if (!r.ok) return r;
  }
  return null;
}

describe("vopr: seeded simulation of primaries, secondaries and the RCM over the real pure modules", () => {
  it(`vopr: ${SEEDS} fixed seeds keep every invariant and end at the primaries' images as of Ts`, () => {
    const started = Date.now();
    let writes = 0;
    let dropped = 0;
    let runs = 0;
    const failed: string[] = [];
    for (let seed = 1; seed <= SEEDS; seed++) {
      const r = simulate({ ...CI, seed });
      writes += r.writes;
      dropped += r.dropped;
      runs += r.procedureRuns;
      if (!r.ok) failed.push(`seed ${seed}: ${r.failure}\n  replay: ${replayCommand(seed, CI)}`);
    }
    const secs = (Date.now() - started) / 1000;
    console.log(`vopr: ${SEEDS} seeds, ${writes} writes, ${runs} procedure runs, ${dropped} RCRs dropped at Ts, ${(SEEDS / secs).toFixed(0)} seeds/s`);
    expect(failed, failed.join("\n")).toEqual([]);
  });

  it("vopr: the same seed replays the same history", () => {
    for (const seed of [7, 42, 1234]) {
      const a: string[] = [];
      const b: string[] = [];
      const ra = simulate({ ...CI, seed, log: (l) => a.push(l) });
      const rb = simulate({ ...CI, seed, log: (l) => b.push(l) });
      expect(rb).toEqual(ra);
      expect(b).toEqual(a);
    }
  });

  // Negative controls: each broken rule must make some seed fail, both at the
  // per-step invariants and at the after-takeover outcome alone.
  const controls: [string, Omit<SimOptions, "seed">][] = [
    ["a SYNC carrying the bare clock reading instead of syncTime", { ...CI, bareClockSync: true }],
    ["a secondary that answers the fence but keeps taking old-generation frames", { ...CI, noFence: true }],
    ["realtime clocks with per-process origins and no commit wait", { ...CI, noCommitWait: true }],
  ];
  for (const [name, o] of controls) {
    it(`vopr negative control: ${name} is caught`, () => {
      const step = firstFailure(o, 300);
      expect(step, "no seed failed").not.toBeNull();
      const outcome = firstFailure({ ...o, outcomeChecksOnly: true }, 300);
      expect(outcome, "no seed failed on the after-takeover checks alone").not.toBeNull();
      console.log(`vopr control (${name}): seed ${step!.seed}: ${step!.failure}; outcome only: seed ${outcome!.seed}: ${outcome!.failure}`);
    });
  }

  it(`vopr power cuts: ${POWER_CUT_SEEDS} seeds lose un-synced writes and recover through the journal and the activity log`, () => {
    const started = Date.now();
    let cuts = 0;
    const failed: string[] = [];
    for (let seed = 1; seed <= POWER_CUT_SEEDS; seed++) {
      const r = simulate({ ...CUTS, seed });
      cuts += r.powerCuts;
      if (!r.ok) failed.push(`seed ${seed}: ${r.failure}\n  replay: ${replayCommand(seed, CUTS)}`);
    }
    const secs = (Date.now() - started) / 1000;
    console.log(`vopr power cuts: ${POWER_CUT_SEEDS} seeds, ${cuts} power cuts, ${(POWER_CUT_SEEDS / secs).toFixed(0)} seeds/s`);
    expect(cuts).toBeGreaterThan(POWER_CUT_SEEDS / 4);
    expect(failed, failed.join("\n")).toEqual([]);
  });

  const cutControls: [string, Omit<SimOptions, "seed">, RegExp][] = [
    ["no activity log (hot regions not put in the bitmap after a power cut)", { ...CUTS, noActivityLog: true }, /differs with nothing to show it/],
    ["the secondary's RCR queue commit NORMAL instead of FULL (acks before durable)", { ...CUTS, normalQueueCommit: true }, /.*/],
  ];
  for (const [name, o, outcomeMessage] of cutControls) {
    it(`vopr power-cut control: ${name} is caught`, () => {
      const step = firstFailure(o, 300);
      expect(step, "no seed failed").not.toBeNull();
      const outcome = firstFailure({ ...o, outcomeChecksOnly: true }, 300);
      expect(outcome, "no seed failed on the after-takeover checks alone").not.toBeNull();
      expect(outcome!.failure).toMatch(outcomeMessage);
      console.log(`vopr power-cut control (${name}): seed ${step!.seed}: ${step!.failure}; outcome only: seed ${outcome!.seed}: ${outcome!.failure}`);
    });
  }

  // Findings 2 and 3 (docs/simulation.md), kept as a control: without the
  // durable seq lease a seq reused after a power cut is skipped by the
  // secondary as a duplicate, and NORMAL commits undo a completed takeover.
  it("vopr power-cut control (no seq lease, procedure commits NORMAL): seq reuse and an undone takeover are caught", () => {
    const asIs: Omit<SimOptions, "seed"> = { ...CI, powerCuts: true, noPowerCutFixes: true };
    const seen = { seqReuse: false, takeoverUndone: false };
    for (let seed = 1; seed <= 300 && !(seen.seqReuse && seen.takeoverUndone); seed++) {
      const r = simulate({ ...asIs, seed });
      if (r.ok) continue;
      if (/is not queued there|differs with nothing to show it/.test(r.failure!)) seen.seqReuse = true;
      if (/112 fell from/.test(r.failure!)) seen.takeoverUndone = true;
    }
    expect(seen).toEqual({ seqReuse: true, takeoverUndone: true });
  });

  // The simulator's finding, kept as a control: a stamp floor persisted ahead
  // of the clock (primary.ts once led it by 2 s) makes a primary restarted
  // after kill -9 stamp above dependent writes that other primaries accept later.
  it("vopr control (stamp floor leading the clock): breaks causal chains after a primary restart", () => {
    const r = firstFailure({ floorLeadNs: LEADING_FLOOR_NS, clock: "monotonic", outcomeChecksOnly: true }, 300);
    expect(r, "no seed failed").not.toBeNull();
    expect(r!.failure).toMatch(/chain \d+: write/);
  });

  // Resync histories: a suspension or takeover, a resync with crashes and power cuts during it,
  // a second suspension or takeover at a step of it (cut by resyncCut), a resync to the end.
  // Steps the interruption must have come at, with the cut it got (T_old before the barrier, Ts after).
  const STEPS = ["before->floor", "begin->floor", "copying->floor", "copied->floor", "copied->ts", "apply->ts", "after->ts"];
  for (const [name, o, count, steps] of [
    ["resync", RESYNC, RESYNC_SEEDS, STEPS],
    // (Ts between the copies and the barrier is rarer; the larger run covers it.)
    ["resync with power cuts", RESYNC_CUTS, RESYNC_POWER_CUT_SEEDS, STEPS.filter((x) => x !== "copied->ts")],
  ] as const) {
    it(`vopr ${name}: ${count} seeds keep every invariant, cut at T_old or Ts, and end with every secondary equal to its primary`, () => {
      const started = Date.now();
      let copies = 0;
      let resyncs = 0;
      const seen = new Map<string, number>();
      const failed: string[] = [];
      for (let seed = 1; seed <= count; seed++) {
        const r = simulate({ ...o, seed });
        copies += r.copies;
        resyncs += r.resyncsCompleted;
        if (r.interrupt) seen.set(`${r.interrupt.phase}->${r.interrupt.cut}`, (seen.get(`${r.interrupt.phase}->${r.interrupt.cut}`) ?? 0) + 1);
        if (!r.ok) failed.push(`seed ${seed}: ${r.failure}\n  replay: ${replayCommand(seed, o)}`);
      }
      const secs = (Date.now() - started) / 1000;
      console.log(`vopr ${name}: ${count} seeds, ${resyncs} resyncs completed, ${copies} copies, ${(count / secs).toFixed(0)} seeds/s; interrupted at ${[...seen].sort().map(([k, n]) => `${k} ${n}`).join(", ")}`);
      expect(failed, failed.join("\n")).toEqual([]);
      expect(resyncs).toBeGreaterThan(count / 2);
      // The interruption comes at every step of a resync, before the barrier (cut at T_old) and after (Ts).
      for (const step of steps) expect(seen.get(step) ?? 0, `no seed interrupted the resync at ${step}`).toBeGreaterThan(0);
    });
  }

  it("vopr resync: the same seed replays the same history", () => {
    for (const seed of [3, 77, 1234]) {
      const a: string[] = [];
      const b: string[] = [];
      const ra = simulate({ ...RESYNC_CUTS, seed, log: (l) => a.push(l) });
      const rb = simulate({ ...RESYNC_CUTS, seed, log: (l) => b.push(l) });
      expect(rb).toEqual(ra);
      expect(b).toEqual(a);
    }
  });

  it("vopr resync: a forced step is the step the interruption comes at", () => {
    for (const phase of INTERRUPT_PHASES.filter((p) => p !== "none" && p !== "before")) {
      let hits = 0;
      for (let seed = 1; seed <= 12; seed++) {
        const r = simulate({ ...RESYNC, interruptAt: phase, seed });
        expect(r.ok, `seed ${seed} at ${phase}: ${r.failure}`).toBe(true);
        if (r.interrupt?.phase === phase) hits++;
      }
      expect(hits, `interruptions at ${phase}`).toBeGreaterThan(3);
    }
  });

  // Resync controls: each broken rule of docs/resync.md must make seeds fail, at the per-step
  // checks and at the outcome alone (images as of the cut, chains, bitmaps, the final comparison).
  const resyncControls: [string, Omit<SimOptions, "seed">][] = [
    ["secondaries ignore the hold (112 = min 111 during a resync)", { ...RESYNC, noBarrier: true }],
    ["a copy stamped, then read without the range lock", { ...RESYNC, copyOutsideLock: true }],
    ["the copier clears a bit before its copy's journal row is durable (kill -9 and power cuts)", { ...RESYNC_CUTS, clearBitBeforeJournal: true }],
  ];
  for (const [name, o] of resyncControls) {
    it(`vopr resync control: ${name} is caught`, () => {
      const step = firstFailure(o, 300);
      expect(step, "no seed failed").not.toBeNull();
      const outcome = firstFailure({ ...o, outcomeChecksOnly: true }, 300);
      expect(outcome, "no seed failed on the outcome checks alone").not.toBeNull();
      console.log(`vopr resync control (${name}): seed ${step!.seed}: ${step!.failure}; outcome only: seed ${outcome!.seed}: ${outcome!.failure}`);
    });
  }

  // The copier as first written (primary.ts before it waited per link): C_k once every link of the
  // group's volumes has acknowledged the primary's last seq. Acks are per link, so with host writes
  // stopped a link whose last entry is older never gets there, and the resync never ends
  // (docs/simulation.md, Finding 6).
  // Finding 5 (fixed in withPrimaries): a secondary's restart lifted 112 above a cut at T_old,
  // and the next resync-begin then failed startHold's assertion.
  it("vopr resync control (a restart lifts 112 to min 111): 112 leaves the cut and the next resync cannot begin", () => {
    const r = firstFailure({ ...RESYNC, restartLifts112: true }, 300);
    expect(r, "no seed failed").not.toBeNull();
    expect(r!.failure).toMatch(/after takeover, not Ts|a resync's floor .* is not below 112/);
  });

  it("vopr resync control (COPIED waits for the last seq on every link): the resync never completes", () => {
    const r = firstFailure({ ...RESYNC, copiedWaitsForLastSeq: true }, 200);
    expect(r, "no seed failed").not.toBeNull();
    expect(r!.failure).toMatch(/no end of the resync history/);
  });
});

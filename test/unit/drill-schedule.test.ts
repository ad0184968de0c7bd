// The drill's round schedule (appliance/drill/schedule.ts): the same seed gives the same round,
// and over thousands of seeds every schedule keeps its invariants (no process killed while down,
// every fault inside the write phase) while every kind of fault shows up.
import { describe, expect, it } from "vitest";
import { FAULTS_MAX, RCM_ID, RESYNC_KILL_MS_MAX, ScheduleError, TAKEOVER_KILL_MS_MAX, WRITE_PHASE_MS_MAX, WRITE_PHASE_MS_MIN, scheduleRound, type Fault } from "../../appliance/drill/schedule.ts";

const FIG1 = { primaries: [1, 2], secondaries: [3, 4, 5] };
const SEEDS = 5000;

describe("drill schedule", () => {
  it("drill schedule: the same seed gives the same schedule; another seed another", () => {
    expect(scheduleRound(7, FIG1)).toEqual(scheduleRound(7, FIG1));
    const distinct = new Set(Array.from({ length: 50 }, (_, s) => JSON.stringify(scheduleRound(s, FIG1))));
    expect(distinct.size).toBe(50);
  });

  it(`drill schedule: invariants hold over ${SEEDS} seeds (write phase bounds, no second fault on a failed process or link, restarts before the takeover)`, () => {
    for (let seed = 0; seed < SEEDS; seed++) {
      const s = scheduleRound(seed, FIG1);
      const at = `seed ${seed}`;
      expect(s.takeoverAtMs, at).toBeGreaterThanOrEqual(WRITE_PHASE_MS_MIN);
      expect(s.takeoverAtMs, at).toBeLessThanOrEqual(WRITE_PHASE_MS_MAX);
      expect(s.faults.length, at).toBeLessThanOrEqual(FAULTS_MAX);
      const downUntil = new Map<string, number>();
      let prev = 0;
      for (const f of s.faults) {
        expect(f.atMs, at).toBeGreaterThanOrEqual(prev);
        prev = f.atMs;
        expect(f.atMs, at).toBeGreaterThan(0);
        expect(f.atMs, at).toBeLessThan(s.takeoverAtMs);
        const key = f.kind === "kill" ? `${f.role}${f.target}` : `link${f.secondary}`;
        expect((downUntil.get(key) ?? -1) < f.atMs, `${at}: ${key} failed again while down`).toBe(true);
        const back = f.kind === "kill" ? f.restartAtMs : f.restoreAtMs;
        if (back !== null) {
          expect(back, at).toBeGreaterThan(f.atMs);
          expect(back, at).toBeLessThan(s.takeoverAtMs);
        }
        downUntil.set(key, back ?? Infinity);
        if (f.kind === "kill") {
          const pool = f.role === "primary" ? FIG1.primaries : f.role === "secondary" ? FIG1.secondaries : [RCM_ID];
          expect(pool, at).toContain(f.target);
        } else expect(FIG1.secondaries, at).toContain(f.secondary);
      }
      if (s.rcmKillDuringTakeoverMs !== null) expect(s.rcmKillDuringTakeoverMs).toBeLessThanOrEqual(TAKEOVER_KILL_MS_MAX);
      if (s.resyncKill) {
        const pool = s.resyncKill.role === "primary" ? FIG1.primaries : s.resyncKill.role === "secondary" ? FIG1.secondaries : [RCM_ID];
        expect(pool, at).toContain(s.resyncKill.target);
        expect(s.resyncKill.afterMs).toBeLessThanOrEqual(RESYNC_KILL_MS_MAX);
        expect(s.resyncKill.restartAfterMs).toBeGreaterThan(0);
      }
      expect(s.secondaryWrites).toBeGreaterThanOrEqual(0);
      // A failback needs a primary that was down through the takeover and comes back.
      if (s.wayBack === "failback") expect(s.faults.some((f) => f.kind === "kill" && f.role === "primary" && f.restartAtMs === null), at).toBe(true);
    }
  });

  it(`drill schedule: over ${SEEDS} seeds every kind of fault happens, including outages left open at the takeover, and both ways home`, () => {
    const seen = new Set<string>();
    const label = (f: Fault) =>
      f.kind === "kill" ? `kill ${f.role}${f.restartAtMs === null ? " left down" : ""}` : `${f.kind}${f.restoreAtMs === null ? " left failed" : ""}`;
    let rcmMidTakeover = 0;
    let clean = 0;
    let failbacks = 0;
    const resyncKills = new Set<string>();
    for (let seed = 0; seed < SEEDS; seed++) {
      const s = scheduleRound(seed, FIG1);
      for (const f of s.faults) seen.add(label(f));
      if (s.rcmKillDuringTakeoverMs !== null) rcmMidTakeover++;
      if (s.faults.length === 0) clean++;
      if (s.resyncKill) resyncKills.add(s.resyncKill.role);
      if (s.wayBack === "failback") failbacks++;
    }
    // Both ways home, failbacks in a good share of the rounds.
    expect(failbacks).toBeGreaterThan(SEEDS / 20);
    expect(failbacks).toBeLessThan(SEEDS / 2);
    expect([...resyncKills].sort()).toEqual(["primary", "rcm", "secondary"]);
    expect([...seen].sort()).toEqual(
      [
        "cut",
        "cut left failed",
        "hang",
        "hang left failed",
        "kill primary",
        "kill primary left down",
        "kill rcm",
        "kill rcm left down",
        "kill secondary",
        "kill secondary left down",
      ].sort(),
    );
    expect(rcmMidTakeover).toBeGreaterThan(SEEDS / 10);
    expect(clean).toBeGreaterThan(0);
  });

  it("drill schedule: refuses a shape without primaries or secondaries", () => {
    expect(() => scheduleRound(1, { primaries: [], secondaries: [3] })).toThrow(ScheduleError);
    expect(() => scheduleRound(1, { primaries: [1, 2], secondaries: [] })).toThrow(/needs primaries and secondaries/);
  });
});

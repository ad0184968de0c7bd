// CI's seeds for the simulation of the product's own engines
// (test/sim/engine/, docs/simulation.md): SubsystemCore, the engines and the
// RCM's procedures over simulated time, network and storage. Every seed must
// keep every check, and a seed replays exactly. Power cuts and the negative
// controls are in engines-faults.test.ts (the two files run side by side).
// Long sweeps: `npm run sim`.
import { describe, expect, it } from "vitest";
import { STORIES, simulateEngines } from "./engine/simulation.ts";
import { TIMEOUT_MS, sweep } from "./engine/ci-seeds.ts";

const SEEDS = Number(process.env.TIDEMARK_SIM_SEEDS ?? 16);
const OUTAGE_SEEDS = Number(process.env.TIDEMARK_SIM_OUTAGE_SEEDS ?? 12);
const STORM_SEEDS = Number(process.env.TIDEMARK_SIM_STORM_SEEDS ?? 6);
const WIDE_SEEDS = Number(process.env.TIDEMARK_SIM_WIDE_SEEDS ?? 12);

describe("sim: the product's engines under simulated time, network and storage", () => {
  it(`sim: ${SEEDS} seeds (takeover, resync, reverse resync, swap; kill -9, partitions, RCM kills) keep every check`, { timeout: TIMEOUT_MS }, async () => {
    const started = Date.now();
    const r = await sweep({}, SEEDS);
    console.log(
      `sim: ${SEEDS} seeds, ${r.writes} host writes, ${r.kills} kill -9, stories ${JSON.stringify(Object.fromEntries(r.stories))}, ${((Date.now() - started) / 1000).toFixed(1)} s`,
    );
    expect(r.failed, r.failed.join("\n")).toEqual([]);
    // A history that does not finish is printed above; more than a quarter of them would be a collapse, not a corner.
    expect(r.stuck.length, r.stuck.join("\n")).toBeLessThanOrEqual(Math.ceil(r.stories.size > 0 ? [...r.stories.values()].reduce((a, b) => a + b, 0) / 4 : 0));
    for (const s of STORIES) expect(r.stories.get(s) ?? 0, `story ${s} drawn`).toBeGreaterThan(0);
  });

  it(`sim: outage story (issue 16), ${OUTAGE_SEEDS} seeds: a primary down through the takeover comes back and resync --reverse takes it over and turns the group, the RCM and the returning primary killed in the middle`, { timeout: TIMEOUT_MS }, async () => {
    const started = Date.now();
    const r = await sweep({ story: "outage" }, OUTAGE_SEEDS);
    console.log(`sim outage: ${OUTAGE_SEEDS} seeds, ${r.writes} host writes, ${r.kills} kill -9, ${((Date.now() - started) / 1000).toFixed(1)} s`);
    expect(r.failed, r.failed.join("\n")).toEqual([]);
    expect(r.stuck, r.stuck.join("\n")).toEqual([]);
  });

  it(`sim: storm story (issue 17, race 3), ${STORM_SEEDS} seeds: suspensions and resyncs within one sync interval of each other`, { timeout: TIMEOUT_MS }, async () => {
    const started = Date.now();
    const r = await sweep({ story: "storm" }, STORM_SEEDS);
    console.log(`sim storm: ${STORM_SEEDS} seeds, ${r.writes} host writes, ${r.kills} kill -9, ${((Date.now() - started) / 1000).toFixed(1)} s`);
    expect(r.failed, r.failed.join("\n")).toEqual([]);
    expect(r.stuck, r.stuck.join("\n")).toEqual([]);
  });

  it(`sim: issue 17's scope, ${WIDE_SEEDS} seeds: two groups on shared subsystems, a second RCM overlapping the story's procedures (held off by the lease), the RCM killed at a drawn control step`, { timeout: TIMEOUT_MS }, async () => {
    const started = Date.now();
    const r = await sweep({ wide: true }, WIDE_SEEDS);
    console.log(
      `sim wide: ${WIDE_SEEDS} seeds (${r.twoGroups} with two groups), ${r.writes} host writes, RCM killed at ${[...r.killedAt].sort().join(" ")}, second RCM ${r.overlaps.join("; ")}, ${((Date.now() - started) / 1000).toFixed(1)} s`,
    );
    expect(r.failed, r.failed.join("\n")).toEqual([]);
    expect(r.stuck, r.stuck.join("\n")).toEqual([]);
    expect(r.twoGroups).toBeGreaterThan(0);
    expect(r.killedAt.size).toBeGreaterThan(0);
    expect(r.overlaps.length).toBeGreaterThan(0);
  });

  it("sim: the same seed replays the same history", async () => {
    for (const seed of [3, 11]) {
      const a: string[] = [];
      const b: string[] = [];
      const ra = await simulateEngines({ seed, powerCuts: true, log: (l) => a.push(l) });
      const rb = await simulateEngines({ seed, powerCuts: true, log: (l) => b.push(l) });
      expect(rb).toEqual(ra);
      expect(b).toEqual(a);
      expect(a.length).toBeGreaterThan(10);
    }
  });

});

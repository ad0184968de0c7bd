// CI's seeds for the simulation of the product's own engines
// (test/sim/engine/, docs/simulation.md): SubsystemCore, the engines and the
// RCM's procedures over simulated time, network and storage. Every seed must
// keep every check; a seed replays exactly; and each negative control (a rule
// broken on purpose in the engines, appliance/runtime/controls.ts) must make
// some seed fail. Long sweeps: `npm run sim`.
import { describe, expect, it } from "vitest";
import { STORIES, replayCommand, simulateEngines, type EngineSimOptions, type EngineSimResult } from "./engine/simulation.ts";

const SEEDS = Number(process.env.TIDEMARK_SIM_SEEDS ?? 60);
const POWER_CUT_SEEDS = Number(process.env.TIDEMARK_SIM_POWER_CUT_SEEDS ?? 40);
/** How far a control may search for a failing seed. */
const CONTROL_SEEDS = Number(process.env.TIDEMARK_SIM_CONTROL_SEEDS ?? 150);

async function sweep(o: Omit<EngineSimOptions, "seed">, count: number) {
  const failed: string[] = [];
  const stories = new Map<string, number>();
  let writes = 0;
  let kills = 0;
  let cuts = 0;
  for (let seed = 1; seed <= count; seed++) {
    const r = await simulateEngines({ ...o, seed });
    stories.set(r.story, (stories.get(r.story) ?? 0) + 1);
    writes += r.writes;
    kills += r.kills;
    cuts += r.powerCuts;
    if (!r.ok) failed.push(`seed ${seed}: ${r.failure}\n  replay: ${replayCommand({ ...o, seed })}`);
  }
  return { failed, stories, writes, kills, cuts };
}

/** The first failing seed among `count` from 1, or null. */
async function firstFailure(o: Omit<EngineSimOptions, "seed">, count: number): Promise<EngineSimResult | null> {
  for (let seed = 1; seed <= count; seed++) {
    const r = await simulateEngines({ ...o, seed });
    if (!r.ok) return r;
  }
  return null;
}

describe("sim: the product's engines under simulated time, network and storage", () => {
  it(`sim: ${SEEDS} seeds (takeover, resync, reverse resync, swap; kill -9, partitions, RCM kills) keep every check`, async () => {
    const started = Date.now();
    const r = await sweep({}, SEEDS);
    console.log(
      `sim: ${SEEDS} seeds, ${r.writes} host writes, ${r.kills} kill -9, stories ${JSON.stringify(Object.fromEntries(r.stories))}, ${((Date.now() - started) / 1000).toFixed(1)} s`,
    );
    expect(r.failed, r.failed.join("\n")).toEqual([]);
    for (const s of STORIES) expect(r.stories.get(s) ?? 0, `story ${s} drawn`).toBeGreaterThan(0);
  });

  it(`sim: ${POWER_CUT_SEEDS} power-cut seeds keep every check`, async () => {
    const started = Date.now();
    const r = await sweep({ powerCuts: true }, POWER_CUT_SEEDS);
    console.log(`sim power cuts: ${POWER_CUT_SEEDS} seeds, ${r.writes} host writes, ${r.cuts} power cuts, ${((Date.now() - started) / 1000).toFixed(1)} s`);
    expect(r.cuts).toBeGreaterThan(0);
    expect(r.failed, r.failed.join("\n")).toEqual([]);
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

  // Each control breaks one rule in the engines themselves; some seed must fail.
  const controls: [string, Omit<EngineSimOptions, "seed">][] = [
    ["issue 11 bug 1: holes of the initial copy decided outside the range lock", { controls: { copyHoleOutsideLock: true } }],
    ["issue 11 bug 3: a per-process boot-time epoch on the monotonic clock", { perProcessEpoch: true }],
    ["a SYNC carrying the bare clock reading", { controls: { bareClockSync: true } }],
    ["a fenced secondary still taking frames of older generations", { controls: { noFence: true } }],
    ["COPIED waiting for the primary's last seq on every link", { controls: { copiedWaitsForLastSeq: true } }],
  ];
  for (const [name, o] of controls) {
    it(`sim negative control: ${name} is caught`, async () => {
      const r = await firstFailure(o, CONTROL_SEEDS);
      expect(r, `no seed of 1-${CONTROL_SEEDS} failed`).not.toBeNull();
      console.log(`sim control (${name}): seed ${r!.seed}: ${r!.failure!.split("\n")[0]}`);
    });
  }
});

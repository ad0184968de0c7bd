// Issue 17: a takeover while a pair's initial copy is still running must not
// present the never-copied secondary volume as part of the image. On the real
// engines under the simulation: the secondary records, durably, the volumes
// whose initial copy has not passed a resync barrier; the dry run and the
// takeover report mark them not usable, and status lists them.
import pino from "pino";
import { describe, expect, it } from "vitest";
import { Scheduler } from "./engine/scheduler.ts";
import { SimNetwork } from "./engine/network.ts";
import { SimCluster, sharedMonotonicClock, simTopology } from "./engine/cluster.ts";
import { runProcedure, type ProcedureReport } from "../../appliance/rcm/procedure.ts";
import { renderProcedure } from "../../appliance/cli/procedure-view.ts";

const silent = pino({ level: "silent" });

async function scenario(copyFirst: boolean) {
  const sched = new Scheduler(3);
  const topo = simTopology(
    { primaries: 1, secondaries: 1, volumesPerPrimary: 2, blocks: 64, clock: "monotonic", maxClockOffsetMs: 0, syncIntervalMs: 10, linkTimeoutMs: 5_000, reconnectMs: 10 },
    sched,
  );
  const net = new SimNetwork(sched, { delayMinMs: 0, delayMaxMs: 1, connectTimeoutMs: 100 });
  const cluster = new SimCluster(sched, net, topo, sharedMonotonicClock(sched), { probe: {}, logger: silent }, false, 64);
  const secondary = () => cluster.node(2).core!.status().secondary![0];
  // Unless asked to copy first, the link hangs from the start: the initial copy cannot finish.
  if (!copyFirst) net.partition(1, 2, "hold");
  void cluster.start(1);
  void cluster.start(2);
  expect(await sched.runUntil(() => cluster.isUp(1) && cluster.isUp(2), 5_000)).toBe(true);
  if (copyFirst) expect(await sched.runUntil(() => secondary().state === "active", sched.nowMs + 10_000)).toBe(true);
  const before = [...(secondary().uncopiedVolumes ?? [])];
  // A restart keeps the record (it is in the state file).
  cluster.kill(2);
  void cluster.start(2);
  expect(await sched.runUntil(() => cluster.isUp(2), sched.nowMs + 5_000)).toBe(true);
  const afterRestart = [...(secondary().uncopiedVolumes ?? [])];
  const run = (mode: "dry-run" | "takeover"): Promise<ProcedureReport> =>
    sched.settle(runProcedure(cluster.rcmTopology(), "C1", { mode, reason: "test", by: "test", logger: silent }), 20_000);
  const dry = await run("dry-run");
  const taken = await run("takeover");
  return { before, afterRestart, dry, taken };
}

describe("sim: a takeover during a pair's initial copy", () => {
  it("initial copy not finished: status lists the secondary volumes, and the dry run and the takeover mark them not usable", async () => {
    const r = await scenario(false);
    expect(r.before).toEqual(["s2a", "s2b"]);
    expect(r.afterRestart, "the record survives a restart").toEqual(["s2a", "s2b"]);
    for (const rep of [r.dry, r.taken]) {
      const vols = rep.secondaries.flatMap((s) => s.volumes);
      expect(vols.map((v) => [v.volume, v.notUsable === true])).toEqual([
        ["s2a", true],
        ["s2b", true],
      ]);
      expect(renderProcedure(rep)).toMatch(/WARNING: s2a, s2b: the pair's initial copy never finished/);
    }
  });

  it("initial copy finished: nothing is marked", async () => {
    const r = await scenario(true);
    expect(r.before).toEqual([]);
    expect(r.afterRestart).toEqual([]);
    expect(r.taken.secondaries.flatMap((s) => s.volumes).some((v) => v.notUsable)).toBe(false);
    expect(renderProcedure(r.taken)).not.toMatch(/NOT USABLE/);
  });
});

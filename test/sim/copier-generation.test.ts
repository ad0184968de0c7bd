// Issue 17, race 3, on the real engines under the simulation's time, network
// and storage: a copier asleep in its acknowledgement wait when its resync is
// suspended, and a new resync begun within that sleep, must not finish the
// new resync. Before the fix it woke at the new generation, stamped C_k and
// sent COPIED without copying the bitmap the new resync merged: the
// secondaries passed the barrier and cleared their bitmaps, and the pair
// stayed different while the group showed active.
import pino from "pino";
import { describe, expect, it } from "vitest";
import { Scheduler } from "./engine/scheduler.ts";
import { SimNetwork } from "./engine/network.ts";
import { SIM_BLOCK_BYTES, SimCluster, sharedMonotonicClock, simTopology } from "./engine/cluster.ts";
import type { NegativeControls } from "../../appliance/runtime/controls.ts";
import { runProcedure } from "../../appliance/rcm/procedure.ts";
import { startResync } from "../../appliance/rcm/resync.ts";

const silent = pino({ level: "silent" });
const BLOCKS = 16;

/** Returns the blocks where primary and secondary differ once the group is active and settled again. */
async function resyncDuringAckWait(controls?: NegativeControls): Promise<{ differing: number[]; state: string }> {
  const sched = new Scheduler(7);
  // A long sync interval: the copier's acknowledgement wait sleeps that long.
  const topo = simTopology(
    { primaries: 1, secondaries: 1, volumesPerPrimary: 1, blocks: BLOCKS, clock: "monotonic", maxClockOffsetMs: 0, syncIntervalMs: 400, linkTimeoutMs: 5_000, reconnectMs: 10 },
    sched,
  );
  const net = new SimNetwork(sched, { delayMinMs: 0, delayMaxMs: 1, connectTimeoutMs: 100 });
  const cluster = new SimCluster(sched, net, topo, sharedMonotonicClock(sched), { probe: {}, logger: silent }, false, BLOCKS, controls);
  void cluster.start(1);
  void cluster.start(2);
  const primaryGroup = () => cluster.node(1).core!.status().primary!.groups[0];
  const secondaryGroup = () => cluster.node(2).core!.status().secondary![0];
  const write = (block: number, fill: number) =>
    cluster.hostCall(1, (core) => core.exports.get("p1a")!.write(block * SIM_BLOCK_BYTES, Buffer.alloc(SIM_BLOCK_BYTES, fill), false));
  const rcm = <T>(f: () => Promise<T>): Promise<T> => sched.settle(f(), 20_000);

  expect(await sched.runUntil(() => cluster.isUp(1) && cluster.isUp(2) && primaryGroup().state === "active" && secondaryGroup().state === "active", 20_000)).toBe(true);
  // Suspended, hosts write blocks 0-3: they go to the primary's bitmap.
  await rcm(() => runProcedure(cluster.rcmTopology(), "C1", { mode: "suspend", reason: "test", by: "test", logger: silent }));
  for (let b = 0; b < 4; b++) await rcm(() => write(b, 0x10 + b));
  // A resync copies them; its acknowledgements are held, so its copier sleeps in the wait.
  net.partition(1, 2, "hold");
  await rcm(() => startResync(cluster.rcmTopology(), "C1", { logger: silent, by: "test" }));
  expect(await sched.runUntil(() => primaryGroup().copy?.phase === "acknowledging", 5_000)).toBe(true);
  // Within that sleep: suspended again (the unacknowledged copies and these writes become bitmap blocks), and a new resync begins.
  const beforeSuspend = sched.nowMs;
  await rcm(() => runProcedure(cluster.rcmTopology(), "C1", { mode: "suspend", reason: "test", by: "test", logger: silent }));
  for (let b = 8; b < 12; b++) await rcm(() => write(b, 0x20 + b));
  await rcm(() => startResync(cluster.rcmTopology(), "C1", { logger: silent, by: "test" }));
  expect(sched.nowMs - beforeSuspend, "both procedures fit in one sleep of the copier").toBeLessThan(300);
  net.heal(1, 2);
  // Hosts go on writing one block: their acknowledgements cover every seq issued before.
  let n = 0;
  const active = () => primaryGroup().state === "active" && secondaryGroup().state === "active";
  const deadline = sched.nowMs + 20_000;
  while (!active() && sched.nowMs < deadline) {
    await rcm(() => write(BLOCKS - 1, n++ & 0xff));
    await sched.runUntil(active, sched.nowMs + 50);
  }
  // The group ends active on both sides; then every block must match.
  const settled = await sched.runUntil(active, sched.nowMs + 1_000);
  expect(settled, `primary ${JSON.stringify(primaryGroup())} links ${JSON.stringify(cluster.node(1).core!.status().primary!.links)}, secondary ${JSON.stringify(secondaryGroup())}`).toBe(true);
  await sched.runFor(2_000);
  const pv = cluster.node(1).disk.volume("p1a");
  const sv = cluster.node(2).disk.volume("s2a");
  const differing: number[] = [];
  for (let b = 0; b < BLOCKS; b++) {
    if (!pv.readNow(b * SIM_BLOCK_BYTES, SIM_BLOCK_BYTES).equals(sv.readNow(b * SIM_BLOCK_BYTES, SIM_BLOCK_BYTES))) differing.push(b);
  }
  return { differing, state: primaryGroup().state };
}

describe("sim: a copier belongs to one resync generation", () => {
  it("copier generation: a suspension and a new resync within the copier's acknowledgement sleep still copy the new bitmap", async () => {
    const r = await resyncDuringAckWait();
    expect(r.state).toBe("active");
    expect(r.differing, "blocks that differ though the group is active").toEqual([]);
  });

  it("copier generation, negative control: the copier that outlived its generation finishes the new resync without copying", async () => {
    const r = await resyncDuringAckWait({ copierOutlivesGeneration: true });
    expect(r.differing.length).toBeGreaterThan(0);
  });
});

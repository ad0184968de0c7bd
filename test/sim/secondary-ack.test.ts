// Issue 11, bug 2, on the real engines under the simulation's time, network
// and storage: a secondary whose last queue commit is not yet durable (its
// WAL sync has not finished) must not acknowledge that commit to a primary
// whose link attaches meanwhile, or a power cut takes back what the primary
// then trims. Before the fix, attach acknowledged the committed seq.
import pino from "pino";
import { describe, expect, it } from "vitest";
import { Scheduler } from "./engine/scheduler.ts";
import { SimNetwork } from "./engine/network.ts";
import { SIM_BLOCK_BYTES, SimCluster, sharedMonotonicClock, simTopology } from "./engine/cluster.ts";
import type { StateStore } from "../../appliance/state/store.ts";
import type { NegativeControls } from "../../appliance/runtime/controls.ts";

/** Runs the scenario; returns the acks the reconnecting primary heard, and the seq that was durable. */
async function attachDuringSync(controls?: NegativeControls): Promise<{ acks: number[]; durable: number; later: boolean }> {
  {
    const sched = new Scheduler(1);
    const topo = simTopology(
      { primaries: 1, secondaries: 1, volumesPerPrimary: 1, blocks: 16, clock: "monotonic", maxClockOffsetMs: 0, syncIntervalMs: 5, linkTimeoutMs: 200, reconnectMs: 10 },
      sched,
    );
    const net = new SimNetwork(sched, { delayMinMs: 0, delayMaxMs: 1, connectTimeoutMs: 100 });
    const acks: number[] = [];
    net.observe = (from, to, f) => {
      if (from === 2 && to === 1 && f.type === "ack") acks.push(f.seq);
    };
    const cluster = new SimCluster(sched, net, topo, sharedMonotonicClock(sched), { probe: {}, logger: pino({ level: "silent" }) }, false, 16, controls);
    // The secondary's WAL syncs can be held: they start only when released.
    const disk = cluster.node(2).disk;
    const storeOf = disk.store.bind(disk);
    // Held: the WAL syncs of commits that queue RCRs beyond `holdAfter` (SYNC-only commits go through).
    let holdAfter = Number.POSITIVE_INFINITY;
    const held: (() => void)[] = [];
    disk.store = (proc) => {
      const s = storeOf(proc);
      const gated: StateStore = {
        ...s,
        syncWal: () => {
          const received = cluster.node(2).core?.secondary?.received ?? 0;
          return received > holdAfter ? new Promise<void>((r) => held.push(() => void s.syncWal().then(r))) : s.syncWal();
        },
      };
      return gated;
    };
    void cluster.start(1);
    void cluster.start(2);
    const secondary = () => cluster.node(2).core!.status().secondary![0];
    const primaryLink = () => cluster.node(1).core!.status().primary!.links[0];
    const write = (block: number) => cluster.hostCall(1, (core) => core.exports.get("p1a")!.write(block * SIM_BLOCK_BYTES, Buffer.alloc(SIM_BLOCK_BYTES, block + 1), false));

    expect(await sched.runUntil(() => cluster.isUp(1) && cluster.isUp(2) && secondary().state === "active", 5_000)).toBe(true);
    for (let b = 0; b < 4; b++) {
      void write(b);
      await sched.runFor(5);
    }
    expect(await sched.runUntil(() => primaryLink().ackedSeq > 0 && primaryLink().ackedSeq === primaryLink().sentSeq, 5_000)).toBe(true);
    const durable = primaryLink().ackedSeq;

    // One more write is committed on the secondary, its WAL sync held.
    const received = secondary().received;
    holdAfter = received;
    void write(8);
    expect(await sched.runUntil(() => secondary().received > received && held.length > 0, 5_000)).toBe(true);
    // The link drops and the primary reconnects while that sync is still running.
    acks.length = 0;
    net.partition(1, 2, "drop");
    await sched.runFor(5);
    net.heal(1, 2);
    expect(await sched.runUntil(() => primaryLink().state === "up" && acks.length > 0, 5_000)).toBe(true);
    await sched.runFor(20);
    const afterReconnect = [...acks];

    // Once the sync completes, the commit is acknowledged.
    holdAfter = Number.POSITIVE_INFINITY;
    for (const release of held.splice(0)) release();
    const later = await sched.runUntil(() => acks.some((a) => a > durable), 5_000);
    return { acks: afterReconnect, durable, later };
  }
}

describe("sim: a secondary acknowledges only durable RCRs", () => {
  it("secondary ack at attach: a commit whose WAL sync is still running is not acknowledged to a reconnecting primary", async () => {
    const r = await attachDuringSync();
    expect(Math.max(...r.acks), `acks after the reconnect: ${r.acks.join(", ")}; durable up to ${r.durable}`).toBeLessThanOrEqual(r.durable);
    expect(r.later, "the commit is acknowledged once durable").toBe(true);
  });

  it("secondary ack at attach, negative control: the code before the fix acknowledges the commit before it is durable", async () => {
    const r = await attachDuringSync({ ackBeforeDurable: true });
    expect(Math.max(...r.acks)).toBeGreaterThan(r.durable);
  });
});

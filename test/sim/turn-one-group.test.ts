// Issue 17, race 1, on the real engines under the simulation's time, network
// and storage: subsystem #1 is primary of two groups, A (p1a -> s2a on #2)
// and B (p1b -> s3a on #3). A is taken over and failed back (resync
// --reverse turns it) while hosts keep writing B at queue depth 8. The turn
// must change A's roles only: every write acknowledged on B reads back, B
// keeps replicating to #3 and ends identical there, and the turn completes.
// Before the fix a turn rebuilt both engines of #1 with B's writes in flight.
import pino from "pino";
import { describe, expect, it } from "vitest";
import { Scheduler } from "./engine/scheduler.ts";
import { SimNetwork } from "./engine/network.ts";
import { SIM_BLOCK_BYTES, SimCluster, sharedMonotonicClock, simConfig, simSubsystem } from "./engine/cluster.ts";
import type { LoadedTopology } from "../../config/load.ts";
import { runProcedure } from "../../appliance/rcm/procedure.ts";
import { reverseResync } from "../../appliance/rcm/failback.ts";

const silent = pino({ level: "silent" });
const BLOCKS = 32;

function twoGroups(): LoadedTopology {
  return simConfig(
    { syncIntervalMs: 10, linkTimeoutMs: 300, reconnectMs: 20 },
    [simSubsystem(1, ["p1a", "p1b"]), simSubsystem(2, ["s2a"]), simSubsystem(3, ["s3a"])],
    [{ name: "A", pairs: [{ primary: "p1a", secondary: "s2a" }] }, { name: "B", pairs: [{ primary: "p1b", secondary: "s3a" }] }],
  );
}

describe("sim: a turn changes the roles of one group only", () => {
  it("turn of one group: group B on the same primary keeps every acknowledged write and keeps replicating while A is turned", async () => {
    const sched = new Scheduler(11);
    const topo = twoGroups();
    const net = new SimNetwork(sched, { delayMinMs: 0, delayMaxMs: 2, connectTimeoutMs: 100 });
    const cluster = new SimCluster(sched, net, topo, sharedMonotonicClock(sched), { probe: {}, logger: silent }, false, BLOCKS);
    for (const id of [1, 2, 3]) void cluster.start(id);
    const groupOn = (id: number, g: string) => {
      const s = cluster.node(id).core!.status();
      return s.primary?.groups.find((x) => x.name === g)?.state ?? s.secondary?.find((x) => x.name === g)?.state;
    };
    const rcm = <T>(f: () => Promise<T>): Promise<T> => sched.settle(f(), 60_000);
    expect(await sched.runUntil(() => [1, 2, 3].every((id) => cluster.isUp(id)) && groupOn(1, "A") === "active" && groupOn(1, "B") === "active", 20_000)).toBe(true);

    // Hosts write B at queue depth 8: what each block must read back once acknowledged.
    const acked = new Map<number, Buffer>();
    let stop = false;
    let failedWrites = 0;
    let n = 0;
    const writer = async () => {
      while (!stop) {
        const block = sched.int(0, BLOCKS - 1);
        const data = Buffer.alloc(SIM_BLOCK_BYTES, (++n % 250) + 1);
        data.writeUInt32LE(n, 0);
        try {
          await cluster.hostCall(1, (core) => core.exports.get("p1b")!.write(block * SIM_BLOCK_BYTES, data, false));
          const prev = acked.get(block);
          if (!prev || prev.readUInt32LE(0) < n) acked.set(block, data);
        } catch {
          failedWrites++;
        }
        await new Promise<void>((r) => cluster.node(1).proc!.runtime.setTimeout(r, sched.int(0, 3)));
      }
    };
    const writers = Array.from({ length: 8 }, () => writer());

    // A is taken over and failed back while B is written.
    await rcm(() => runProcedure(cluster.rcmTopology(), "A", { mode: "takeover", reason: "test", by: "test", logger: silent }));
    const back = await rcm(() => reverseResync(cluster.rcmTopology(), "A", { logger: silent, by: "test" }));
    expect(back.direction).toBe("reverse");
    expect(await sched.runUntil(() => groupOn(1, "A") === "active" && groupOn(2, "A") === "active", sched.nowMs + 20_000), "A resynced back onto #1").toBe(true);
    stop = true;
    await sched.runUntil(() => false, sched.nowMs + 200);
    void writers;

    expect(failedWrites, "B's host writes all succeed during A's turn").toBe(0);
    const pb = cluster.node(1).disk.volume("p1b");
    for (const [block, data] of acked) {
      expect(pb.readNow(block * SIM_BLOCK_BYTES, SIM_BLOCK_BYTES).equals(data), `p1b block ${block} holds its last acknowledged write`).toBe(true);
    }
    // B still replicates: #3 converges to #1.
    const s3a = cluster.node(3).disk.volume("s3a");
    const same = () => Array.from({ length: BLOCKS }, (_, b) => b).every((b) => pb.readNow(b * SIM_BLOCK_BYTES, SIM_BLOCK_BYTES).equals(s3a.readNow(b * SIM_BLOCK_BYTES, SIM_BLOCK_BYTES)));
    expect(await sched.runUntil(same, sched.nowMs + 10_000), "s3a catches up with p1b").toBe(true);
    expect(groupOn(1, "B")).toBe("active");
    expect(groupOn(3, "B")).toBe("active");
    expect(cluster.node(1).core!.status().primary!.links.find((l) => l.secondary === 3)!.state).toBe("up");
  });
});

// docs/simulation.md finding 30, on the real engines and the real swap under
// the simulation's time, network and storage. A swap's takeover reaches
// primary #1, whose record of `taken-over` fails on a full state disk: hosts
// are refused (the state in memory), but the state file still says `frozen`.
// Status used to show the group taken over, so the swap's turn went ahead;
// #1's turn, which reads the state file, refused, and every rerun refused the
// same way: the group stayed `mixed` for good. Now status shows the record
// missing, the turn takes #1 over again first, and a group left mixed by the
// old code is finished by the rerun.
import pino from "pino";
import { describe, expect, it } from "vitest";
import { Scheduler } from "./engine/scheduler.ts";
import { SimNetwork } from "./engine/network.ts";
import { SIM_BLOCK_BYTES, SimCluster, sharedMonotonicClock, simConfig, simSubsystem } from "./engine/cluster.ts";
import type { LoadedTopology } from "../../config/load.ts";
import { swap } from "../../appliance/rcm/failback.ts";
import type { NegativeControls } from "../../appliance/runtime/controls.ts";

const silent = pino({ level: "silent" });
const BLOCKS = 16;

function onePair(): LoadedTopology {
  return simConfig(
    { syncIntervalMs: 10, linkTimeoutMs: 300, reconnectMs: 20 },
    [simSubsystem(1, ["p1a"]), simSubsystem(2, ["s2a"])],
    [{ name: "C1", pairs: [{ primary: "p1a", secondary: "s2a" }] }],
  );
}

interface Run {
  cluster: SimCluster;
  sched: Scheduler;
  /** Directions each subsystem holds for C1, and its state there. */
  sides: () => string[];
  /** Runs the swap on the RCM (its error's code, or "done"). */
  swapOnce: () => Promise<string>;
  refusedCommits: () => number;
  /** The next commit of #1 whose SQL matches fails on a full state disk (instead of the next suspension's record). */
  failNext: (match: string) => void;
  /** Blocks that differ from what hosts wrote, on either side. */
  wrongBlocks: () => string[];
}

/**
 * Both sides up and paired, hosts' writes replicated, then the next record of
 * a suspension on #1 meets a full state disk once. `controls` are the
 * engines' (a test may change them between runs).
 */
async function paired(seed: number, controls: NegativeControls = {}): Promise<Run> {
  const sched = new Scheduler(seed);
  const topo = onePair();
  const net = new SimNetwork(sched, { delayMinMs: 0, delayMaxMs: 2, connectTimeoutMs: 100 });
  let armed = false;
  let refused = 0;
  const probe = {
    leaving: ({ primary, group }: { primary: number; group: string }) => {
      if (!armed || primary !== 1 || group !== "C1") return;
      armed = false;
      const state = cluster.node(1).disk.state;
      state.diskFull = true;
      // The disk has room again once this one commit has failed.
      state.onRefusedCommit = () => {
        refused++;
        state.diskFull = false;
      };
    },
  };
  const cluster = new SimCluster(sched, net, topo, sharedMonotonicClock(sched), { probe, logger: silent }, false, BLOCKS, controls);
  void cluster.start(1);
  void cluster.start(2);
  const side = (id: number) => {
    const s = cluster.node(id).core!.status();
    const g = s.primary?.groups.find((x) => x.name === "C1");
    const sg = s.secondary?.find((x) => x.name === "C1");
    return `#${id} ${s.directions?.C1 ?? "forward"} ${g ? `primary ${g.state}${g.unrecorded ? " (unrecorded)" : ""}` : `secondary ${sg?.state}`}`;
  };
  const primaryState = () => cluster.node(1).core!.status().primary?.groups.find((x) => x.name === "C1")?.state;
  expect(await sched.runUntil(() => cluster.isUp(1) && cluster.isUp(2) && primaryState() === "active", 20_000)).toBe(true);
  for (let b = 0; b < BLOCKS; b++) {
    const data = Buffer.alloc(SIM_BLOCK_BYTES, b + 1);
    await sched.settle(cluster.hostCall(1, (core) => core.exports.get("p1a")!.write(b * SIM_BLOCK_BYTES, data, false)), 5_000);
  }
  armed = true;
  return {
    cluster,
    sched,
    sides: () => [side(1), side(2)],
    swapOnce: async () => {
      try {
        await sched.settle(swap(cluster.rcmTopology(), "C1", { logger: silent, by: "test", timeoutMs: 10_000 }), 60_000);
        return "done";
      } catch (err) {
        return (err as { code?: string }).code ?? String(err);
      }
    },
    refusedCommits: () => refused,
    failNext: (match: string) => {
      armed = false;
      const state = cluster.node(1).disk.state;
      state.diskFull = (sql) => sql?.includes(match) === true;
      state.onRefusedCommit = () => {
        refused++;
        state.diskFull = false;
      };
    },
    wrongBlocks: () =>
      (
        [
          [1, "p1a"],
          [2, "s2a"],
        ] as const
      ).flatMap(([id, v]) =>
        Array.from({ length: BLOCKS }, (_, b) => b)
          .filter((b) => !cluster.node(id).disk.volume(v).readNow(b * SIM_BLOCK_BYTES, SIM_BLOCK_BYTES).equals(Buffer.alloc(SIM_BLOCK_BYTES, b + 1)))
          .map((b) => `${v} block ${b}`),
      ),
  };
}

/** The swap finished: #2 is the primary, #1 its secondary, both active and holding what hosts wrote. */
async function expectSwapped(r: Run): Promise<void> {
  const swapped = "#1 reverse secondary active,#2 reverse primary active";
  expect(await r.sched.runUntil(() => r.sides().join() === swapped, r.sched.nowMs + 20_000), r.sides().join("; ")).toBe(true);
  expect(r.wrongBlocks()).toEqual([]);
}

describe("sim: a swap whose takeover record failed on a primary (finding 30)", () => {
  it("the turn takes the primary over again first, and the swap completes", async () => {
    const r = await paired(5);
    expect(await r.swapOnce()).toBe("done");
    expect(r.refusedCommits(), "the full disk refused the record of #1's takeover").toBe(1);
    await expectSwapped(r);
  });

  it("a group the old rule left mixed is finished by a rerun", async () => {
    // The negative control shows the unrecorded takeover as done: the first run turns #2 only.
    const controls: NegativeControls = { unrecordedShownRecorded: true };
    const r = await paired(6, controls);
    expect(await r.swapOnce()).toBe("TM_NOT_TAKEN_OVER");
    expect(r.refusedCommits()).toBe(1);
    expect(r.sides()).toEqual(["#1 forward primary taken-over", "#2 reverse primary suspended"]);
    // With the control on, every rerun refuses the same way: stuck.
    expect(await r.swapOnce()).toBe("TM_NOT_TAKEN_OVER");
    // The fixed rule: #1 is taken over again (its own generation), then turned.
    delete controls.unrecordedShownRecorded;
    expect(await r.swapOnce()).toBe("done");
    await expectSwapped(r);
  });

  it("a group left mixed whose primary restarted from its state file (frozen) is finished by a rerun", async () => {
    const controls: NegativeControls = { unrecordedShownRecorded: true };
    const r = await paired(7, controls);
    expect(await r.swapOnce()).toBe("TM_NOT_TAKEN_OVER");
    delete controls.unrecordedShownRecorded;
    // kill -9 and restart: #1 comes back as its state file has it, frozen at the swap's freeze.
    r.cluster.kill(1);
    void r.cluster.start(1);
    expect(await r.sched.runUntil(() => r.cluster.isUp(1), r.sched.nowMs + 10_000)).toBe(true);
    expect(r.sides()).toEqual(["#1 forward primary frozen", "#2 reverse primary suspended"]);
    expect(await r.swapOnce()).toBe("done");
    await expectSwapped(r);
  });

  it("a freeze whose record fails leaves the primary as its state file has it (active, writable), and the swap's rerun completes", async () => {
    const r = await paired(8);
    r.failNext("frozen_ts");
    expect(await r.swapOnce()).not.toBe("done");
    expect(r.refusedCommits()).toBe(1);
    expect(r.sides()).toEqual(["#1 forward primary active", "#2 forward secondary active"]);
    // Hosts may write: the state file says active, and so does the engine.
    const data = Buffer.alloc(SIM_BLOCK_BYTES, 1);
    await r.sched.settle(r.cluster.hostCall(1, (core) => core.exports.get("p1a")!.write(0, data, false)), 5_000);
    expect(await r.swapOnce()).toBe("done");
    await expectSwapped(r);
  });
});

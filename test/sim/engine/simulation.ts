// The seeded simulation of the product's own engines (docs/simulation.md):
// SubsystemCore instances (PrimaryEngine, SecondaryEngine, LinkSender, the
// copier) and the RCM's runProcedure, over simulated time, network and
// storage. A seed picks the topology, the clocks, the hosts' writes, the
// faults (partitions, kill -9, power cuts, RCM kills) and when the RCM runs;
// the oracle judges the outcome from outside. A seed replays exactly.
import pino from "pino";
import { runProcedure, type ProcedureMode, type ProcedureReport } from "../../../appliance/rcm/procedure.ts";
import { Scheduler } from "./scheduler.ts";
import { SimNetwork } from "./network.ts";
import { SIM_BLOCK_BYTES, SimCluster, simTopology, type SimShape } from "./cluster.ts";
import { Oracle, SimFailure } from "./oracle.ts";
import { SimHosts } from "./hosts.ts";
import { simClock } from "./clocks.ts";
import type { NegativeControls } from "../../../appliance/runtime/controls.ts";

export interface EngineSimOptions {
  seed: number;
  powerCuts?: boolean;
  clock?: "monotonic" | "realtime";
  /** Negative control (issue 11, bug 3): each process adds its own boot-time epoch to the monotonic clock. */
  perProcessEpoch?: boolean;
  /** Negative controls restored in the product's engines (appliance/runtime/controls.ts). */
  controls?: NegativeControls;
  log?: (line: string) => void;
}

export interface EngineSimResult {
  seed: number;
  ok: boolean;
  failure?: string;
  writes: number;
  acked: number;
  kills: number;
  powerCuts: number;
  procedureRuns: number;
  ts: string | null;
  events: number;
  simMs: number;
}

const silent = pino({ level: "silent" });
/** Simulated time a history may take before it counts as stuck. */
const HISTORY_LIMIT_MS = 120_000;

export function replayCommand(o: EngineSimOptions): string {
  const flags = [
    o.powerCuts ? "--power-cuts" : "",
    o.clock === "realtime" ? "--clock realtime" : "",
    o.perProcessEpoch ? "--per-process-epoch" : "",
    o.controls?.copyHoleOutsideLock ? "--copy-hole-outside-lock" : "",
    o.controls?.ackBeforeDurable ? "--ack-before-durable" : "",
  ].filter(Boolean);
  return `node --import tsx scripts/sim-engines.ts --seed ${o.seed}${flags.length ? " " + flags.join(" ") : ""} --verbose`;
}

function shapeOf(sched: Scheduler, o: EngineSimOptions): SimShape {
  const clock = o.clock ?? "monotonic";
  return {
    primaries: sched.int(1, 3),
    secondaries: sched.int(1, 3),
    volumesPerPrimary: sched.int(1, 2),
    blocks: 16,
    clock,
    maxClockOffsetMs: clock === "realtime" ? sched.int(1, 5) : 0,
    syncIntervalMs: sched.int(3, 20),
    linkTimeoutMs: sched.int(100, 300),
    reconnectMs: sched.int(10, 50),
  };
}

export async function simulateEngines(o: EngineSimOptions): Promise<EngineSimResult> {
  const sched = new Scheduler(o.seed);
  const log = (line: string) => o.log?.(`${String(sched.nowMs).padStart(6)} ms  ${line}`);
  const shape = shapeOf(sched, o);
  const topo = simTopology(shape, sched);
  const pairs = topo.pairs.map((p) => ({ primary: p.primary.subsystemId, pv: p.primary.name, secondary: p.secondary.subsystemId, sv: p.secondary.name }));
  const linkOf = new Map(pairs.map((p) => [p.pv, p.secondary]));
  const primaries = [...new Set(pairs.map((p) => p.primary))];
  const secondaries = topo.groups.get("C1")!.secondaries;
  log(`shape ${JSON.stringify(shape)}; pairs ${pairs.map((p) => `${p.pv}->${p.sv}`).join(" ")}`);

  const net = new SimNetwork(sched, { delayMinMs: 0, delayMaxMs: sched.int(1, 6), connectTimeoutMs: 200 });
  const oracle = new Oracle((v) => linkOf.get(v)!);
  net.observe = (from, to, f) => {
    if (f.type === "ack") oracle.secondaryAck(to, from, f.seq);
  };
  let failure: string | null = null;
  const check = (f: () => void) => {
    if (failure) return;
    try {
      f();
    } catch (err) {
      failure = err instanceof SimFailure ? err.message : `${(err as Error).name}: ${(err as Error).message}\n${(err as Error).stack}`;
    }
  };
  const clock = simClock(sched, { mode: shape.clock, maxClockOffsetMs: shape.maxClockOffsetMs, perProcessEpoch: o.perProcessEpoch === true });
  let kills = 0;
  let cuts = 0;
  const cluster = new SimCluster(
    sched,
    net,
    topo,
    clock,
    {
      probe: {
        stamped: (e) => {
          if (e.copy) log(`#${e.primary} copy ${e.volume} ${e.offset / SIM_BLOCK_BYTES}+${e.length / SIM_BLOCK_BYTES} ${e.data ? "data" : "zero"} ts ${e.ts}`);
          check(() => oracle.stamped(e));
        },
      },
      died: (id, how) => {
        log(`#${id} ${how === "kill" ? "kill -9" : "power cut"}`);
        if (how === "power" && primaries.includes(id)) {
          const floor = cluster.node(id).disk.seqFloor();
          oracle.powerCut(id, floor);
        }
      },
    },
    o.powerCuts === true,
    shape.blocks,
    o.controls,
    // Scaled down as the volumes are: 4-block activity regions, copy runs of 1-4 blocks, a copier that waits for the journal.
    {
      activityRegionBytes: 4 * SIM_BLOCK_BYTES,
      copyRunBytes: sched.int(1, 4) * SIM_BLOCK_BYTES,
      copyZeroRunBytes: sched.int(1, 8) * SIM_BLOCK_BYTES,
      copyJournalBytes: sched.pick([8, 32, 1024]) * 1024,
    },
  );
  const hosts = new SimHosts(sched, cluster, oracle, () => pairs.map((p) => ({ primary: p.primary, volume: p.pv })), {
    hosts: sched.int(1, 4),
    blocks: shape.blocks,
    fuaShare: sched.pick([0, 0.05, 0.3]),
    gapMaxMs: sched.int(0, 8),
  });

  // Existing data on the primary volumes, with holes between: the initial
  // copy reads the data runs and sends the holes as zero runs while hosts write.
  for (const p of pairs) {
    const v = cluster.node(p.primary).disk.volume(p.pv);
    for (let b = 0; b < shape.blocks; b++) {
      if (!sched.chance(0.5)) continue;
      const data = Buffer.alloc(SIM_BLOCK_BYTES, sched.int(1, 255));
      v.writeNow(b * SIM_BLOCK_BYTES, data);
      oracle.base(p.primary, p.pv, b, data);
    }
    v.syncStart()();
  }

  // A primary back from a crash must hold every acknowledged write.
  const start = (id: number) =>
    cluster.start(id).then(() => {
      if (!cluster.isUp(id) || !primaries.includes(id)) return;
      check(() => {
        for (const p of pairs.filter((x) => x.primary === id)) {
          const v = cluster.node(id).disk.volume(p.pv);
          oracle.checkPrimary(id, p.pv, shape.blocks, (b) => v.readNow(b * SIM_BLOCK_BYTES, SIM_BLOCK_BYTES));
        }
      });
    });
  const all = [...cluster.nodes.keys()];
  for (const id of all) void start(id);
  hosts.start();

  // Faults until the procedure has run once and a while after.
  let faults = true;
  const faultTick = () => {
    if (!faults) return;
    const r = sched.random();
    if (r < 0.25) {
      const p = sched.pick(primaries);
      const s = sched.pick(secondaries);
      const mode = sched.chance(0.5) ? "hold" : "drop";
      net.partition(p, s, mode);
      log(`partition #${p} | #${s} (${mode})`);
      sched.at(sched.int(20, 500), () => net.heal(p, s));
    } else if (r < 0.4) {
      const id = sched.pick(all);
      if (cluster.isUp(id)) {
        const power = o.powerCuts === true && sched.chance(0.4);
        if (power) {
          cluster.powerCut(id);
          cuts++;
        } else {
          cluster.kill(id);
          kills++;
        }
        sched.at(sched.int(0, 300), () => void start(id));
      }
    }
    sched.at(sched.int(20, 150), faultTick);
  };
  sched.at(sched.int(50, 200), faultTick);

  // The RCM: a takeover (after a planned suspension in a quarter of seeds), killed at random, run again until it completes.
  const modes: ProcedureMode[] = sched.chance(0.25) ? ["suspend", "takeover"] : ["takeover"];
  const reports: ProcedureReport[] = [];
  let runs = 0;
  let rcmDone = false;
  const rcmRun = () => {
    if (rcmDone) return;
    const mode = modes[Math.min(reports.length, modes.length - 1)];
    const rtopo = cluster.rcmTopology();
    const incarnation = cluster.rcmIncarnations;
    runs++;
    log(`rcm #${incarnation}: ${mode}`);
    if (sched.chance(0.4)) {
      sched.at(sched.int(0, 60), () => {
        if (cluster.rcmIncarnations === incarnation && cluster.rcmAlive) {
          log(`rcm #${incarnation} kill -9`);
          cluster.killRcm();
          sched.at(sched.int(10, 200), rcmRun);
        }
      });
    }
    runProcedure(rtopo, "C1", { mode, reason: "simulation", by: "sim", logger: silent }).then(
      (rep) => {
        if (cluster.rcmIncarnations !== incarnation) return;
        log(`rcm #${incarnation}: ${mode} ${rep.complete ? "complete" : "incomplete"} at Ts ${rep.ts}`);
        if (!rep.complete) return void sched.at(sched.int(20, 200), rcmRun);
        reports.push(rep);
        if (reports.length < modes.length) sched.at(sched.int(0, 200), rcmRun);
        else rcmDone = true;
      },
      (err: Error) => {
        if (cluster.rcmIncarnations !== incarnation) return;
        log(`rcm #${incarnation}: ${mode} failed: ${err.message}`);
        sched.at(sched.int(20, 200), rcmRun);
      },
    );
  };
  sched.at(sched.int(300, 1500), rcmRun);

  const until = (f: () => boolean, ms: number, what: string) =>
    sched.runUntil(() => failure !== null || f(), sched.nowMs + ms).then((ok) => {
      if (!ok && failure === null) failure = `stuck: ${what} not reached within ${ms} ms of simulated time`;
    });

  await until(() => rcmDone, HISTORY_LIMIT_MS, "the first procedure");
  hosts.stop();
  await sched.runFor(sched.int(0, 300));
  faults = false;
  net.healAll();
  for (const id of all) if (!cluster.node(id).proc) void start(id);
  await until(() => hosts.idle && all.every((id) => cluster.isUp(id)), 30_000, "every subsystem up and every host write answered");

  // The rerun reaches the same Ts and the same images.
  if (failure === null) {
    rcmDone = false;
    const before = reports.length;
    modes.splice(0, modes.length, "takeover");
    reports.splice(0, reports.length, ...reports);
    const rerun = () => {
      const rtopo = cluster.rcmTopology();
      runs++;
      runProcedure(rtopo, "C1", { mode: "takeover", reason: "rerun", by: "sim", logger: silent }).then(
        (rep) => {
          if (!rep.complete) return void sched.at(50, rerun);
          reports.push(rep);
          rcmDone = true;
        },
        (err: Error) => {
          log(`rerun failed: ${err.message}`);
          sched.at(50, rerun);
        },
      );
    };
    rerun();
    await until(() => rcmDone && reports.length > before, 30_000, "the rerun of the takeover");
  }

  const ts = reports.length > 0 ? BigInt(reports[reports.length - 1].ts) : null;
  check(() => {
    const distinct = [...new Set(reports.map((r) => r.ts))];
    if (distinct.length > 1) throw new SimFailure(`the procedure's runs reached different Ts: ${distinct.join(", ")}`);
  });
  if (failure === null && ts !== null) {
    check(() => {
      for (const p of pairs) {
        const sv = cluster.node(p.secondary).disk.volume(p.sv);
        const pv = cluster.node(p.primary).disk.volume(p.pv);
        const pBits = new Set(cluster.node(p.primary).disk.bitmapBlocks(p.pv));
        const sBits = new Set(cluster.node(p.secondary).disk.bitmapBlocks(p.sv));
        for (let b = 0; b < shape.blocks; b++) {
          const got = sv.readNow(b * SIM_BLOCK_BYTES, SIM_BLOCK_BYTES);
          oracle.checkSecondary(ts, p.pv, p.sv, b, got, Buffer.alloc(SIM_BLOCK_BYTES));
          const mine = pv.readNow(b * SIM_BLOCK_BYTES, SIM_BLOCK_BYTES);
          if (!mine.equals(got) && !pBits.has(b) && !sBits.has(b)) {
            throw new SimFailure(`${p.pv} and ${p.sv} differ at block ${b} with nothing to show it: in neither bitmap`);
          }
        }
      }
    });
  }
  clock.close();
  log(failure ? `FAILED: ${failure}` : `ok: Ts ${ts}`);
  return {
    seed: o.seed,
    ok: failure === null,
    ...(failure !== null ? { failure } : {}),
    writes: hosts.issued,
    acked: hosts.acked,
    kills,
    powerCuts: cuts,
    procedureRuns: runs,
    ts: ts?.toString() ?? null,
    events: sched.events,
    simMs: sched.nowMs,
  };
}

// The seeded simulation of the product's own engines (docs/simulation.md):
// SubsystemCore instances (PrimaryEngine, SecondaryEngine, LinkSender, the
// copier) and the RCM's runProcedure, over simulated time, network and
// storage. A seed picks the topology, the clocks, the hosts' writes, the
// faults (partitions, kill -9, power cuts, RCM kills) and when the RCM runs;
// the oracle judges the outcome from outside. A seed replays exactly.
import pino from "pino";
import { runProcedure } from "../../../appliance/rcm/procedure.ts";
import { startResync, watchResync } from "../../../appliance/rcm/resync.ts";
import { reverseResync, swap } from "../../../appliance/rcm/failback.ts";
import { withGroupLease } from "../../../appliance/rcm/lease.ts";
import { withControlPlane } from "../../../appliance/cli/control-plane.ts";
import { liveTopology } from "../../../appliance/cli/live-topology.ts";
import { controlPlaneOf } from "../../../appliance/cli/control-client.ts";
import { directed } from "../../../config/direction.ts";
import type { LoadedTopology } from "../../../config/load.ts";
import { Scheduler } from "./scheduler.ts";
import { SimNetwork } from "./network.ts";
import { SIM_BLOCK_BYTES, SimCluster, simTopology, type SimShape } from "./cluster.ts";
import { Oracle, SimFailure, describeBlock } from "./oracle.ts";
import { SimHosts } from "./hosts.ts";
import { simClock } from "./clocks.ts";
import { watchInvariants } from "../../../appliance/invariant.ts";
import type { NegativeControls } from "../../../appliance/runtime/controls.ts";

export interface EngineSimOptions {
  seed: number;
  powerCuts?: boolean;
  clock?: "monotonic" | "realtime";
  /** Negative control (issue 11, bug 3): each process adds its own boot-time epoch to the monotonic clock. */
  perProcessEpoch?: boolean;
  /** Negative controls restored in the product's engines (appliance/runtime/controls.ts). */
  controls?: NegativeControls;
  /** The journal size past which the copier waits (default: drawn, 16, 64 or 1024 KiB); small ones widen the copier's windows. */
  copyJournalKiB?: number;
  /** Fixes the payload segments' size (KiB); by default histories with power cuts draw 16, 64, 1024 or 65536 (finding 18), others keep 64 MiB. */
  segmentKiB?: number;
  /** The steps the RCM takes (default: drawn by the seed). */
  story?: Story;
  /**
   * Issue 17's scope: a second RCM whose procedures overlap the story's
   * (held off by the group's lease), and the RCM killed at a drawn control
   * step of its procedure rather than at a drawn time.
   */
  wide?: boolean;
  log?: (line: string) => void;
}

/**
 * What the RCM does in a history: a takeover (after a planned suspension in
 * some seeds); a suspension, a resync cut short by a second procedure, and
 * a resync to the end; a takeover, hosts on the secondaries, and the reverse
 * resync; a swap of a paired group. Drawn by the seed from these.
 */
export const STORIES = ["takeover", "resync", "reverse", "swap"] as const;
/**
 * Stories run only when asked for (`story`), so the draw above and the CI
 * seeds' histories stay as they are. `outage` (issue 16): a primary goes
 * down and stays down through the takeover (after a suspension in some
 * seeds), hosts move to the secondaries, the primary comes back, and the
 * way home takes it over first: resync --reverse (half of the seeds), swap
 * or a forward resync; the RCM and, in some seeds, the returning primary
 * are killed in the middle of it. `storm` (issue 17, race 3): suspensions
 * and resyncs in quick succession, each resync abandoned within one sync
 * interval (drawn long, 100-500 ms) and the next suspension and resync
 * begun at once, while links are cut or held: a copier asleep in its
 * acknowledgement wait sees its generation end and a new one begin.
 */
export const EXTRA_STORIES = ["outage", "storm"] as const;
export type Story = (typeof STORIES)[number] | (typeof EXTRA_STORIES)[number];

interface Step {
  /** The group it acts on: the story's C1 unless said (the end of a history resyncs C2 too). */
  group?: string;
  kind: "suspend" | "takeover" | "resync" | "interrupted-resync" | "reverse" | "swap" | "primary-down" | "primary-back";
  /** The RCM may be killed in the middle of it. */
  kills: boolean;
  /** A swap that cannot be run again: resync the group in whatever direction it holds. */
  resume?: boolean;
  /** The primary that came back is killed -9 in the middle of it (and restarted). */
  killsReturning?: boolean;
  /** Storm story: an interrupted resync is abandoned within one sync interval, and the next step follows at once. */
  quick?: boolean;
}

function storySteps(story: Story, sched: Scheduler): Step[] {
  switch (story) {
    case "takeover":
      return sched.chance(0.25) ? [{ kind: "suspend", kills: true }, { kind: "takeover", kills: true }] : [{ kind: "takeover", kills: true }];
    case "resync":
      return [
        { kind: "suspend", kills: true },
        { kind: "interrupted-resync", kills: false },
        { kind: sched.chance(0.5) ? "suspend" : "takeover", kills: true },
        { kind: "resync", kills: true },
      ];
    case "reverse":
      return [
        { kind: "takeover", kills: true },
        { kind: "reverse", kills: true },
      ];
    case "swap":
      return [{ kind: "swap", kills: true }];
    case "outage":
      return [
        { kind: "primary-down", kills: false },
        ...(sched.chance(0.5) ? [{ kind: "suspend" as const, kills: true }] : []),
        { kind: "takeover", kills: true },
        { kind: "primary-back", kills: false },
        // The way home: resync --reverse mostly; swap (on a taken-over group, the same) or a forward resync (discarding the hosts' writes on the secondaries).
        { kind: sched.pick(["reverse", "reverse", "swap", "resync"] as const), kills: true, killsReturning: sched.chance(0.5) },
      ];
    case "storm": {
      const steps: Step[] = [{ kind: "suspend", kills: true }];
      for (let i = sched.int(2, 4); i > 0; i--) steps.push({ kind: "interrupted-resync", kills: false, quick: true }, { kind: "suspend", kills: false, quick: true });
      steps.push({ kind: "resync", kills: true });
      return steps;
    }
  }
}

type Pair = { group: string; primary: number; pv: string; secondary: number; sv: string };

/** Every subsystem up, and `group` active or copying on every side. */
function replicating(cluster: SimCluster, group: string): boolean {
  for (const id of cluster.nodes.keys()) {
    const st = cluster.node(id).core?.status();
    if (!st || !cluster.isUp(id)) return false;
    for (const g of st.primary?.groups ?? []) if (g.name === group && g.state !== "active" && g.state !== "copying") return false;
    for (const g of st.secondary ?? []) if (g.name === group && g.state !== "active" && g.state !== "resyncing") return false;
  }
  return true;
}

/** Replication of `group` is at rest: every side active, nothing pending or queued. */
function settled(cluster: SimCluster, group: string): boolean {
  for (const id of cluster.nodes.keys()) {
    const core = cluster.node(id).core;
    if (!core || !cluster.isUp(id)) return false;
    const st = core.status();
    // (Bitmap blocks of an active group wait for the next resync: the caller runs one.)
    for (const g of st.primary?.groups ?? []) if (g.name === group && (g.state !== "active" || g.pending > 0)) return false;
    for (const g of st.secondary ?? []) if (g.name === group && (g.state !== "active" || g.rcrQueue > 0 || g.diskQueue > 0)) return false;
  }
  return true;
}

function bitmapsEmpty(cluster: SimCluster, pairs: Pair[]): boolean {
  return pairs.every((p) => cluster.node(p.primary).disk.bitmapBlocks(p.pv).length === 0 && cluster.node(p.secondary).disk.bitmapBlocks(p.sv).length === 0);
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
  story: Story;
  ts: string | null;
  events: number;
  simMs: number;
  /** Where an RCM was killed: "procedure:control op" (wide scope). */
  rcmKilledAt: string[];
  /** The second RCM's procedures: "kind: outcome" (wide scope). */
  overlaps: string[];
  /** Consistency groups in the topology (2: C2 shares the subsystems of the story's C1). */
  groups: number;
}

const silent = pino({ level: "silent" });
const rtopoSleep = (t: LoadedTopology, ms: number) => controlPlaneOf(t).runtime.sleep(ms);
/** Simulated time a history may take before it counts as stuck. */
const HISTORY_LIMIT_MS = 30_000;
/** Partitions, kills and power cuts stop this far into a history. */
const FAULTS_UNTIL_MS = 4_000;

export function replayCommand(o: EngineSimOptions): string {
  const flags = [
    o.powerCuts ? "--power-cuts" : "",
    o.clock === "realtime" ? "--clock realtime" : "",
    o.perProcessEpoch ? "--per-process-epoch" : "",
    ...Object.entries(o.controls ?? {})
      .filter(([, on]) => on)
      .map(([k]) => `--${k.replace(/[A-Z0-9]+/g, (m) => `-${m.toLowerCase()}`)}`),
    o.story ? `--story ${o.story}` : "",
    o.wide ? "--wide" : "",
    o.copyJournalKiB !== undefined ? `--copy-journal-kib ${o.copyJournalKiB}` : "",
    o.segmentKiB !== undefined ? `--segment-kib ${o.segmentKiB}` : "",
  ].filter(Boolean);
  return `node --import tsx scripts/sim-sweep.ts --seed ${o.seed}${flags.length ? " " + flags.join(" ") : ""} --verbose`;
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
    // Up to past the product's default (50 ms): a long sleep is where a copier outlived its resync (issue 17, race 3).
    // (The storm story wants that sleep long enough to hold a suspension and a new resync. Drawn here, in order, so other seeds keep their histories.)
    syncIntervalMs: o.story === "storm" ? sched.int(100, 500) : sched.int(3, 60),
    linkTimeoutMs: sched.int(100, 300),
    reconnectMs: sched.int(10, 50),
  };
}

export async function simulateEngines(o: EngineSimOptions): Promise<EngineSimResult> {
  const sched = new Scheduler(o.seed);
  const log = (line: string) => o.log?.(`${String(sched.nowMs).padStart(6)} ms  ${line}`);
  const shape = shapeOf(sched, o);
  // Wide scope: half of the seeds have a second group on the same subsystems, replicating while the story runs on C1.
  if (o.wide === true && sched.chance(0.5)) Object.assign(shape, { groups: 2, volumesPerPrimary: 2 });
  const topo = simTopology(shape, sched);
  const pairs: Pair[] = topo.pairs.map((p) => ({ group: p.group, primary: p.primary.subsystemId, pv: p.primary.name, secondary: p.secondary.subsystemId, sv: p.secondary.name }));
  const groups = [...topo.groups.keys()];
  /** The pairs the story acts on (C1); the others' group only replicates, and is written, meanwhile. */
  const storyPairs = pairs.filter((p) => p.group === "C1");
  const primaries = topo.groups.get("C1")!.primaries;
  const secondaries = [...new Set(groups.flatMap((g) => topo.groups.get(g)!.secondaries))];
  log(`shape ${JSON.stringify(shape)}; pairs ${pairs.map((p) => `${p.pv}->${p.sv}`).join(" ")}`);

  const net = new SimNetwork(sched, { delayMinMs: 0, delayMaxMs: sched.int(1, 6), connectTimeoutMs: 200 });
  const oracle = new Oracle();
  /** Per secondary and primary: the acknowledged seq up to which the payloads were found durable. */
  const ackDurableTo = new Map<string, number>();
  net.observe = (from, to, f) => {
    if (f.type === "ack") {
      oracle.secondaryAck(to, from, f.seq);
      const key = `${from}>${to}`;
      const after = ackDurableTo.get(key) ?? 0;
      const node = cluster.node(from);
      // A node that is no secondary (a primary acknowledging a resync turn's frames) has no queue rows of `to`.
      if (f.seq > after) {
        const undurable = node.disk.undurableQueuePayload(to, after, f.seq);
        check(() => {
          if (undurable) throw new SimFailure(`secondary #${from} acknowledged seq ${f.seq} to #${to} before it was durable: ${undurable}`);
        });
      }
      ackDurableTo.set(key, f.seq);
    }
    else if (f.type === "rcr") oracle.received(from, to, f.records.map((r) => r.seq));
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
  // Every broken invariant anywhere in the engines fails the seed, even one an engine catches.
  watchInvariants((err) => {
    if (failure === null) failure = `${err.message}\n${err.stack ?? ""}`;
  });
  const clock = simClock(sched, { mode: shape.clock, maxClockOffsetMs: shape.maxClockOffsetMs, perProcessEpoch: o.perProcessEpoch === true });
  let kills = 0;
  let powerCuts = 0;
  const cluster = new SimCluster(
    sched,
    net,
    topo,
    clock,
    {
      logger: o.log ? pino({ level: "warn", base: null, timestamp: false }, { write: (line: string) => log(`log ${line.trim()}`) }) : undefined,
      probe: {
        stamped: (e) => {
          if (e.copy) log(`#${e.primary} copy ${e.volume} ${e.offset / SIM_BLOCK_BYTES}+${e.length / SIM_BLOCK_BYTES} ${e.data ? "data" : "zero"} ts ${e.ts}`);
          check(() => oracle.stamped(e));
          if (o.log && !e.copy) log(`#${e.primary} stamp ${e.volume}@${e.offset / SIM_BLOCK_BYTES}+${e.length / SIM_BLOCK_BYTES} seq ${e.seq} ts ${e.ts} write #${e.data?.readUInt32BE(4)}`);
        },
        // BUGGIFY-like: a kill -9 likes a suspension's window, between its
        // state change and the durable removal of the group's journal
        // entries, where host writes must wait (finding 17).
        leaving: (e) => {
          if (!faults || sched.nowMs > FAULTS_UNTIL_MS || !sched.chance(0.25)) return;
          sched.at(sched.int(0, 6), () => {
            if (!cluster.isUp(e.primary)) return;
            cluster.kill(e.primary);
            kills++;
            sched.at(sched.int(0, 300), () => void start(e.primary));
          });
        },
        applying: (e) => {
          if (o.log) log(`#${e.secondary} apply ${e.volume}@${e.offset / SIM_BLOCK_BYTES}+${e.length / SIM_BLOCK_BYTES} from #${e.primaryId} seq ${e.seq} ts ${e.ts} (112 ${e.second})`);
        },
      },
      // BUGGIFY-like: a power cut likes the moment a secondary answers a new
      // link while its last commits are not yet durable (issue 11, bug 2).
      linkAttached: (id, pending) => {
        if (o.powerCuts !== true || pending === 0 || !faults || sched.nowMs > FAULTS_UNTIL_MS || !sched.chance(0.2)) return;
        sched.at(sched.int(2, 30), () => {
          if (!cluster.isUp(id)) return;
          cluster.powerCut(id);
          powerCuts++;
          sched.at(sched.int(0, 300), () => void start(id));
        });
      },
      // BUGGIFY-like too: a power cut likes the moment a segment goes while
      // the commit that freed it may not be durable (finding 18).
      segmentRemoved: (id, pending) => {
        if (o.powerCuts !== true || pending === 0 || !faults || sched.nowMs > FAULTS_UNTIL_MS || !sched.chance(0.3)) return;
        sched.at(sched.int(0, 10), () => {
          if (!cluster.isUp(id)) return;
          cluster.powerCut(id);
          powerCuts++;
          sched.at(sched.int(0, 300), () => void start(id));
        });
      },
      died: (id, how) => {
        log(`#${id} ${how === "kill" ? "kill -9" : "power cut"}`);
        if (how === "power") oracle.powerCut(id);
        else oracle.killed(id, (primary) => cluster.node(id).disk.committedSeqOf(primary));
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
      copyJournalBytes: (o.copyJournalKiB ?? sched.pick([16, 64, 1024])) * 1024,
      // Payload segments that roll over and go within a history, where their
      // removal order matters: across power cuts (finding 18). Histories
      // without power cuts keep the deployment's size (and their seeds).
      ...(o.segmentKiB !== undefined ? { segmentBytes: o.segmentKiB * 1024 } : o.powerCuts === true ? { segmentBytes: sched.pick([16, 64, 1024, 65536]) * 1024 } : {}),
    },
  );
  // Hosts write the primaries; after a takeover of the reverse story, the secondaries; after a turn, the new primaries.
  const hosts = new SimHosts(sched, cluster, oracle, () => pairs.map((p) => (p.group === "C1" && (turned || hostsOnSecondaries) ? { primary: p.secondary, volume: p.sv } : { primary: p.primary, volume: p.pv })), {
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

  /**
   * The volumes whose acknowledged host writes must survive a restart: the
   * primaries, and the secondaries once hosts write them (from the image
   * they hold then). A volume leaves the set when a turn may overwrite it.
   */
  const hostVolumes = new Set(pairs.map((p) => p.pv));
  const hostsMove = () => {
    for (const p of storyPairs) {
      const v = cluster.node(p.secondary).disk.volume(p.sv);
      for (let b = 0; b < shape.blocks; b++) oracle.base(p.secondary, p.sv, b, v.readNow(b * SIM_BLOCK_BYTES, SIM_BLOCK_BYTES));
      hostVolumes.add(p.sv);
    }
  };

  /** Primaries an outage story keeps down (nothing restarts them until its primary-back step). */
  const heldDown = new Set<number>();
  // A primary back from a crash must hold every acknowledged write.
  const start = (id: number): Promise<void> => {
    if (heldDown.has(id)) return Promise.resolve();
    return cluster.start(id).then(
      () => afterStart(id),
      (err: Error) => {
        // A subsystem that cannot start (its journal replay threw) is a failure of the product, not of the simulator.
        if (failure === null) failure = `subsystem #${id} failed to start: ${err.message}\n${err.stack ?? ""}`;
      },
    );
  };
  const afterStart = (id: number) =>
    Promise.resolve().then(() => {
      if (!cluster.isUp(id)) return;
      check(() => {
        // The volumes hosts write on this subsystem: forward primaries, or the secondaries once hosts moved there.
        const written = [...pairs.filter((x) => x.primary === id).map((x) => x.pv), ...pairs.filter((x) => x.secondary === id).map((x) => x.sv)];
        for (const name of written.filter((v) => hostVolumes.has(v))) {
          const v = cluster.node(id).disk.volume(name);
          oracle.checkPrimary(id, name, shape.blocks, (b) => v.readNow(b * SIM_BLOCK_BYTES, SIM_BLOCK_BYTES));
        }
      });
    });
  const all = [...cluster.nodes.keys()];
  for (const id of all) void start(id);
  hosts.start();

  // Faults until the procedure has run once and a while after.
  let faults = true;
  const faultTick = () => {
    // Faults come for the first seconds of a history, the story's first steps included; then it must finish.
    if (!faults || sched.nowMs > FAULTS_UNTIL_MS) return;
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
          powerCuts++;
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

  // The RCM runs the story's steps one after the other; each is run again
  // (a new RCM incarnation) until it completes, and the RCM is killed at
  // random in the middle of them.
  const story = o.story ?? sched.pick(STORIES);
  log(`story ${story}`);
  const steps = storySteps(story, sched);
  const cuts: { step: string; ts: string }[] = [];
  const rcmKilledAt: string[] = [];
  const overlaps: string[] = [];
  // Long enough for a procedure step's slowest answer, short enough that a dead second RCM's lease lapses within a history.
  const LEASE_MS = 1000 + (o.seed % 5) * 500;
  let runs = 0;
  let stepIndex = 0;
  let lastStep: Step | null = null;
  /** Runs of the current step so far. */
  let runsOfStep = 0;
  let turned = false;
  /** Outage story: the primary that stayed down through the takeover, once it is back. */
  let returned: number | null = null;
  /** Hosts write the taken-over secondaries between a takeover and its reverse resync. */
  let hostsOnSecondaries = false;
  const runStep = () => {
    if (stepIndex >= steps.length || failure) return;
    const step = steps[stepIndex];
    runsOfStep = step === lastStep ? runsOfStep + 1 : 1;
    lastStep = step;
    // A turn overwrites the old primaries with the new ones' image: their writes are no longer owed there.
    if (step.kind === "reverse" || step.kind === "swap") for (const p of storyPairs) hostVolumes.delete(p.pv);
    // A forward resync after hosts moved to the secondaries overwrites what they wrote there; hosts go back to the primaries.
    if (step.kind === "resync" && (step.group ?? "C1") === "C1" && hostsOnSecondaries) {
      hostsOnSecondaries = false;
      for (const p of storyPairs) hostVolumes.delete(p.sv);
    }
    const incarnation = cluster.rcmIncarnations + 1;
    let rtopo = cluster.rcmTopology();
    runs++;
    log(`rcm #${incarnation}: ${step.kind}`);
    if (step.killsReturning && returned !== null && runsOfStep === 1) {
      const id = returned;
      sched.at(sched.int(0, 80), () => {
        if (!cluster.isUp(id)) return;
        log(`returning primary #${id} kill -9 in the middle of the ${step.kind}`);
        cluster.kill(id);
        kills++;
        sched.at(sched.int(0, 300), () => void start(id));
      });
    }
    const killRcm = (at: string) => {
      if (cluster.rcmIncarnations !== incarnation || !cluster.rcmAlive) return;
      log(`rcm #${incarnation} kill -9${at ? ` ${at}` : ""}`);
      cluster.killRcm();
      sched.at(sched.int(10, 200), runStep);
    };
    if (step.kills && o.wide === true && sched.chance(0.5)) {
      // Killed at a drawn control step of its procedure (lease taking
      // included), just before or just after the request goes out: over a
      // sweep, every step of every procedure is cut short somewhere.
      const killAt = sched.int(1, 24);
      let calls = 0;
      const plane = controlPlaneOf(rtopo);
      rtopo = withControlPlane(rtopo, {
        ...plane,
        call: <T>(id: number, body: unknown, timeoutMs: number) => {
          if (++calls === killAt) {
            const op = String((body as { op?: unknown } | null)?.op);
            sched.at(sched.int(0, 8), () => {
              if (cluster.rcmIncarnations === incarnation && cluster.rcmAlive) rcmKilledAt.push(`${step.kind}:${op}`);
              killRcm(`at its control call #${killAt} (${op} to #${id})`);
            });
          }
          return plane.call<T>(id, body, timeoutMs);
        },
      });
    } else if (step.kills && sched.chance(0.4)) {
      sched.at(sched.int(0, 80), () => killRcm(""));
    }
    rcmStep(rtopo, step, incarnation).then(
      (done) => {
        if (cluster.rcmIncarnations !== incarnation || !cluster.rcmAlive) return;
        log(`rcm #${incarnation}: ${step.kind} ${done.complete ? "complete" : "incomplete"}${done.ts ? ` at Ts ${done.ts}` : ""}`);
        if (!done.complete) return void sched.at(sched.int(20, 200), runStep);
        // (Once hosts write the secondaries, their images are no longer the primaries' as of a cut.)
        if (done.ts !== undefined && !turned && !hostsOnSecondaries) {
          cuts.push({ step: step.kind, ts: done.ts });
          checkCut(BigInt(done.ts));
        }
        if (step.kind === "takeover" && (story === "reverse" || story === "outage") && !hostsOnSecondaries) {
          hostsMove();
          hostsOnSecondaries = true;
        }
        if (story === "swap" && step.kind === "swap" && done.turned !== false) {
          // A swap carries everything acknowledged to hosts before its freeze to the new primaries:
          // a write the old primaries took after it (issue 17, race 2) would be lost here.
          check(() => {
            for (const p of storyPairs) {
              const sv = cluster.node(p.secondary).disk.volume(p.sv);
              oracle.checkPrimary(p.primary, p.pv, shape.blocks, (b) => sv.readNow(b * SIM_BLOCK_BYTES, SIM_BLOCK_BYTES), `${p.sv}, the new primary of ${p.pv},`, "after the swap");
            }
          });
        }
        if (step.kind === "swap" && done.turned !== false) hostsMove();
        else if (step.kind === "swap") for (const p of storyPairs) hostVolumes.add(p.pv);
        if (step.kind === "reverse" || (step.kind === "swap" && done.turned !== false)) {
          turned = true;
          hostsOnSecondaries = false;
        }
        stepIndex++;
        if (step.kind === "interrupted-resync") cluster.killRcm();
        // Sometimes the next procedure follows at once, as the RCM's own
        // suspend-then-resync does: a copier asleep in its acknowledgement
        // wait then sees its generation end (issue 17, race 3).
        sched.at(step.quick === true || sched.chance(0.3) ? sched.int(0, 15) : sched.int(0, 300), runStep);
      },
      (err: Error & { code?: string }) => {
        if (cluster.rcmIncarnations !== incarnation || !cluster.rcmAlive) return;
        log(`rcm #${incarnation}: ${step.kind} failed: ${err.message}`);
        // A swap that cannot go on (not paired; or taken over below its freeze, TM_SWAP): what its message tells the admin, a resync as the group stands.
        if (step.kind === "swap" && (err.code === "TM_NOT_PAIRED" || err.code === "TM_SWAP") && runsOfStep > 1) steps[stepIndex] = { ...step, resume: true };
        sched.at(sched.int(20, 200), runStep);
      },
    );
  };

  /** One step, as the RCM runs it (holding the group's lease); complete once its effect is reached. */
  const rcmStep = async (rtopo: LoadedTopology, step: Step, incarnation: number): Promise<{ complete: boolean; ts?: string; turned?: boolean }> => {
    if (step.kind === "primary-down" || step.kind === "primary-back") return storyStep(rtopo, step);
    // Every incarnation has the one RCM's address: a later one supersedes the lease of one killed.
    const group = step.group ?? "C1";
    return withGroupLease(rtopo, group, step.kind, { holder: `sim rcm #${incarnation}`, holderAddress: "sim-rcm", incarnation, ttlMs: LEASE_MS }, (t) => storyStep(t, step));
  };

  const storyStep = async (rtopo: LoadedTopology, step: Step): Promise<{ complete: boolean; ts?: string; turned?: boolean }> => {
    const group = step.group ?? "C1";
    switch (step.kind) {
      case "primary-down": {
        // The primary site goes down and stays down through the takeover.
        const id = sched.pick(primaries);
        heldDown.add(id);
        if (cluster.isUp(id)) {
          cluster.kill(id);
          kills++;
        }
        log(`outage: primary #${id} down until after the takeover`);
        return { complete: true };
      }
      case "primary-back": {
        for (const id of heldDown) {
          heldDown.delete(id);
          returned = id;
          log(`outage: primary #${id} comes back`);
          void start(id);
        }
        return { complete: true };
      }
      case "suspend":
      case "takeover": {
        const rep = await runProcedure(rtopo, group, { mode: step.kind, reason: "simulation", by: "sim", logger: silent, controls: o.controls });
        return { complete: rep.complete, ts: rep.ts };
      }
      case "resync":
      case "interrupted-resync": {
        const live = await liveTopology(rtopo);
        const r = await startResync(live, group, { logger: silent, by: "sim" });
        if (step.kind === "interrupted-resync") {
          // The RCM is abandoned in the middle of the resync; control messages already sent still land.
          await rtopoSleep(rtopo, step.quick === true ? sched.int(0, shape.syncIntervalMs) : sched.int(0, 400));
          return { complete: true };
        }
        if (!r.nothingToDo) await watchResync(live, group, r.generation, () => {}, 20);
        return { complete: true };
      }
      case "reverse": {
        const r = await reverseResync(rtopo, "C1", { logger: silent, by: "sim" });
        await watchResync(directed(rtopo, new Map([["C1", r.direction]])), "C1", r.resync.generation, () => {}, 20);
        return { complete: true };
      }
      case "swap": {
        if (step.resume) {
          // What an admin does when a swap cut short cannot be run again (issue 17): resync the group as it stands.
          const live = await liveTopology(rtopo);
          const r = await startResync(live, "C1", { logger: silent, by: "sim" });
          if (!r.nothingToDo) await watchResync(live, "C1", r.generation, () => {}, 20);
          return { complete: true, turned: live.groups.get("C1")!.primaries.some((id) => topo.groups.get("C1")!.secondaries.includes(id)) };
        }
        const r = await swap(rtopo, "C1", { logger: silent, by: "sim", timeoutMs: 5_000, controls: o.controls });
        await watchResync(directed(rtopo, new Map([["C1", r.direction]])), "C1", r.resync.generation, () => {}, 20);
        return { complete: true, turned: r.direction === "reverse" };
      }
    }
  };

  /** After a procedure cut at ts in the forward direction: each secondary image of `group` is the primaries' as of ts. */
  const checkCut = (ts: bigint, group = "C1") =>
    check(() => {
      for (const p of pairs.filter((x) => x.group === group)) {
        const sv = cluster.node(p.secondary).disk.volume(p.sv);
        for (let b = 0; b < shape.blocks; b++) oracle.checkSecondary(ts, p.pv, p.sv, b, sv.readNow(b * SIM_BLOCK_BYTES, SIM_BLOCK_BYTES), Buffer.alloc(SIM_BLOCK_BYTES));
      }
    });
  sched.at(sched.int(300, 1500), runStep);

  // Wide scope: a second RCM (another address) runs one procedure on the
  // group while the story runs: an admin's suspension, a second resync, or a
  // takeover beside the story's own. The group's lease keeps the two apart:
  // the later one is refused, naming the holder, and tries again; a second
  // RCM killed while it holds the lease keeps the group until it lapses.
  let overlapDone = true;
  if (o.wide === true && sched.chance(0.7)) {
    overlapDone = false;
    // On the other group, sometimes: two groups' procedures at once on shared subsystems.
    const group = groups.length > 1 && sched.chance(0.5) ? "C2" : "C1";
    const kinds =
      group === "C2" || story === "resync" ? (["suspend", "resync", "takeover"] as const) : story === "takeover" ? (["suspend", "takeover"] as const) : (["suspend"] as const);
    const kind = sched.pick(kinds);
    const overlap = (attempt: number) => {
      const { topo: t, proc } = cluster.otherRcm(`rcm-b#${attempt}`);
      const killed = sched.chance(0.25);
      if (killed) sched.at(sched.int(0, 60), () => proc.kill());
      log(`second rcm: ${kind} ${group}${killed ? " (killed in the middle)" : ""}`);
      const holder = { holder: `second sim rcm #${attempt}`, holderAddress: "sim-rcm-b", incarnation: attempt, ttlMs: LEASE_MS };
      /** This attempt answered (done, or failed and maybe retried): its kill then ends nothing. */
      let answered = false;
      withGroupLease(t, group, kind, holder, async (lt) => {
        if (kind === "resync") {
          await startResync(await liveTopology(lt), group, { logger: silent, by: "second rcm" });
          return { ts: undefined };
        }
        const rep = await runProcedure(await liveTopology(lt), group, { mode: kind, reason: "second rcm", by: "second rcm", logger: silent, controls: o.controls });
        return { ts: rep.complete ? rep.ts : undefined };
      }).then(
        (r) => {
          if (!proc.alive) return;
          answered = true;
          overlaps.push(`${kind}: done`);
          log(`second rcm: ${kind} ${group} done${r.ts ? ` at Ts ${r.ts}` : ""}`);
          if (r.ts !== undefined && (group !== "C1" || (!turned && !hostsOnSecondaries))) checkCut(BigInt(r.ts), group);
          overlapDone = true;
        },
        (err: Error & { code?: string }) => {
          if (!proc.alive) return;
          answered = true;
          overlaps.push(`${kind}: ${err.code ?? "failed"}`);
          log(`second rcm: ${kind} failed: ${err.message}`);
          if (attempt < 4) sched.at(sched.int(50, 500), () => overlap(attempt + 1));
          else overlapDone = true;
        },
      );
      // A killed second RCM is done: its lease lapses by itself.
      if (killed) sched.at(60, () => {
        if (!proc.alive && !answered && !overlapDone) {
          overlaps.push(`${kind}: killed`);
          overlapDone = true;
        }
      });
    };
    sched.at(sched.int(300, 2500), () => overlap(1));
  }

  const until = (f: () => boolean, ms: number, what: string) =>
    sched.runUntil(() => failure !== null || f(), sched.nowMs + ms).then((ok) => {
      if (!ok && failure === null) failure = sched.stalled ?? `stuck: ${what} not reached within ${ms} ms of simulated time`;
    });

  await until(() => stepIndex >= steps.length && overlapDone, HISTORY_LIMIT_MS, `the story's steps (${story})${overlapDone ? "" : " and the second RCM's procedure"}`);
  hosts.stop();
  await sched.runFor(sched.int(0, 300));
  faults = false;
  net.healAll();
  heldDown.clear();
  for (const id of all) if (!cluster.node(id).proc) void start(id);
  await until(() => hosts.idle && all.every((id) => cluster.isUp(id)), 30_000, "every subsystem up and every host write answered");

  /** Runs one more step (as an admin would) and waits for it. */
  const adminStep = async (step: Step, what: string) => {
    steps.push(step);
    sched.at(0, runStep);
    await until(() => stepIndex >= steps.length, 30_000, what);
  };
  /**
   * The groups that end paired: once replication settles, every pair is
   * identical. A group the second RCM left suspended or taken over is
   * resynced; a power cut after the last copy leaves hot regions in a
   * bitmap: the RCM resyncs again, as an admin would.
   */
  const settleAndCompare = async (paired: string[]) => {
    for (const g of paired) {
      if (failure !== null || replicating(cluster, g)) continue;
      log(`group ${g} does not replicate after the story: resync`);
      await adminStep({ kind: "resync", kills: false, group: g }, `a resync of ${g} after the story`);
    }
    for (let attempt = 0; attempt < 4 && failure === null; attempt++) {
      await until(() => paired.every((g) => settled(cluster, g)), 20_000, "replication settling after the last step");
      const dirty = paired.filter((g) => !bitmapsEmpty(cluster, pairs.filter((p) => p.group === g)));
      if (failure !== null || dirty.length === 0) break;
      for (const g of dirty) {
        log(`bitmaps of ${g} not empty after the story: resync again`);
        await adminStep({ kind: "resync", kills: false, group: g }, `a resync of ${g} after the story`);
      }
    }
    check(() => {
      for (const p of pairs.filter((x) => paired.includes(x.group))) {
        const back = turned && p.group === "C1";
        const [src, dst] = back ? [cluster.node(p.secondary).disk.volume(p.sv), cluster.node(p.primary).disk.volume(p.pv)] : [cluster.node(p.primary).disk.volume(p.pv), cluster.node(p.secondary).disk.volume(p.sv)];
        for (let b = 0; b < shape.blocks; b++) {
          const [had, got] = [src.readNow(b * SIM_BLOCK_BYTES, SIM_BLOCK_BYTES), dst.readNow(b * SIM_BLOCK_BYTES, SIM_BLOCK_BYTES)];
          if (!had.equals(got)) {
            throw new SimFailure(
              `after the story (${story}) the pair ${src.name} -> ${dst.name} of ${p.group} differs at block ${b} though the group is paired and settled: ${src.name} holds ${describeBlock(had)}, ${dst.name} ${describeBlock(got)}`,
            );
          }
        }
      }
    });
  };
  const others = groups.filter((g) => g !== "C1");
  if (failure === null && story === "takeover") {
    // The rerun reaches the same Ts and the same images; where a primary and its secondary differ, a bitmap says so.
    await adminStep({ kind: "takeover", kills: false }, "the rerun of the takeover");
    check(() => {
      const distinct = [...new Set(cuts.map((c) => c.ts))];
      if (distinct.length > 1) throw new SimFailure(`the procedure's runs reached different Ts: ${distinct.join(", ")}`);
      for (const p of storyPairs) {
        const sv = cluster.node(p.secondary).disk.volume(p.sv);
        const pv = cluster.node(p.primary).disk.volume(p.pv);
        const pBits = new Set(cluster.node(p.primary).disk.bitmapBlocks(p.pv));
        const sBits = new Set(cluster.node(p.secondary).disk.bitmapBlocks(p.sv));
        // A copy still owed (the initial copy, or a whole copy) goes on from its cursor at the next resync.
        const cursor = cluster.node(p.primary).disk.copyCursor(p.pv);
        for (let b = 0; b < shape.blocks; b++) {
          const got = sv.readNow(b * SIM_BLOCK_BYTES, SIM_BLOCK_BYTES);
          const owed = cursor !== null && b * SIM_BLOCK_BYTES >= cursor;
          if (!pv.readNow(b * SIM_BLOCK_BYTES, SIM_BLOCK_BYTES).equals(got) && !pBits.has(b) && !sBits.has(b) && !owed) {
            throw new SimFailure(`${p.pv} and ${p.sv} differ at block ${b} with nothing to show it: in neither bitmap${cursor === null ? "" : `, below the copy cursor at block ${cursor / SIM_BLOCK_BYTES}`}`);
          }
        }
      }
    });
    // The other group was never taken over: it ends paired.
    if (failure === null && others.length > 0) await settleAndCompare(others);
  } else if (failure === null) {
    await settleAndCompare(groups);
  }
  const ts = cuts.length > 0 ? BigInt(cuts[cuts.length - 1].ts) : null;
  watchInvariants(null);
  clock.close();
  log(failure ? `FAILED: ${failure}` : `ok: Ts ${ts}`);
  return {
    seed: o.seed,
    ok: failure === null,
    ...(failure !== null ? { failure } : {}),
    writes: hosts.issued,
    acked: hosts.acked,
    kills,
    powerCuts,
    procedureRuns: runs,
    story,
    ts: ts?.toString() ?? null,
    events: sched.events,
    simMs: sched.nowMs,
    rcmKilledAt,
    overlaps,
    groups: groups.length,
  };
}

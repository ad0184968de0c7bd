// The simulated cluster: one SubsystemCore (the product's subsystem without
// its process) per subsystem, over a simulated host disk, the simulated
// network and the scheduler's time. It starts, kills (kill -9: memory gone,
// page cache kept) and power-cuts (unsynced writes lost or torn) subsystems,
// and gives the RCM a control plane whose incarnations die with it.
import pino from "pino";
import type { LoadedTopology } from "../../../config/load.ts";
import { parseConfig } from "../../../config/schema.ts";
import { SubsystemCore } from "../../../appliance/subsystem/core.ts";
import type { PrimaryProbe, PrimaryTuning } from "../../../appliance/primary/primary.ts";
import type { SecondaryProbe } from "../../../appliance/secondary/secondary.ts";
import { withControlPlane, type ControlPlane } from "../../../appliance/cli/control-plane.ts";
import type { Volume } from "../../../disks/volume.ts";
import type { NegativeControls } from "../../../appliance/runtime/controls.ts";
import { NS_PER_MS, type Scheduler, type SimProcess } from "./scheduler.ts";
import type { SimNetwork } from "./network.ts";
import { SimHostDisk, SIM_BLOCK_BYTES } from "./storage.ts";

export { SIM_BLOCK_BYTES } from "./storage.ts";

export interface SimShape {
  primaries: number;
  secondaries: number;
  /** Volumes per primary subsystem. */
  volumesPerPrimary: number;
  /** Blocks per volume. */
  blocks: number;
  clock: "monotonic" | "realtime";
  maxClockOffsetMs: number;
  syncIntervalMs: number;
  linkTimeoutMs: number;
  reconnectMs: number;
  /** 2: each primary's second volume is in group C2, sharing the subsystems with C1 (issue 17). */
  groups?: 1 | 2;
}

/** The topology a shape stands for, through the product's own config schema. */
export function simTopology(shape: SimShape, sched: Scheduler): LoadedTopology {
  const subsystems: { id: number; replicationPort: number; nbdPort: number; volumes: { name: string; sizeMiB: number }[] }[] = [];
  const pairs: { primary: string; secondary: string; group: string }[] = [];
  const secIds = Array.from({ length: shape.secondaries }, (_, i) => shape.primaries + 1 + i);
  const secVolumes = new Map<number, { name: string; sizeMiB: number }[]>(secIds.map((id) => [id, []]));
  for (let p = 1; p <= shape.primaries; p++) {
    const vols: { name: string; sizeMiB: number }[] = [];
    for (let v = 0; v < shape.volumesPerPrimary; v++) {
      const name = `p${p}${String.fromCharCode(97 + v)}`;
      // sizeMiB only satisfies the schema: the simulated volumes have `blocks` blocks.
      vols.push({ name, sizeMiB: 1 });
      const s = sched.pick(secIds);
      const list = secVolumes.get(s)!;
      const target = `s${s}${String.fromCharCode(97 + list.length)}`;
      list.push({ name: target, sizeMiB: 1 });
      pairs.push({ primary: name, secondary: target, group: shape.groups === 2 && v === 1 ? "C2" : "C1" });
    }
    subsystems.push({ ...simPorts(p), volumes: vols });
  }
  for (const s of secIds) subsystems.push({ ...simPorts(s), volumes: secVolumes.get(s)! });
  const groups = [...new Set(pairs.map((p) => p.group))].map((name) => ({ name, pairs: pairs.filter((p) => p.group === name).map(({ primary, secondary }) => ({ primary, secondary })) }));
  return simConfig({ clock: shape.clock, maxClockOffsetMs: shape.maxClockOffsetMs, syncIntervalMs: shape.syncIntervalMs, linkTimeoutMs: shape.linkTimeoutMs, reconnectMs: shape.reconnectMs }, subsystems, groups);
}

/**
 * A simulated cluster's config through the product's schema: the settings
 * every simulation shares, the given timing, and subsystems and groups as
 * the config file has them.
 */
export function simConfig(
  timing: { clock?: string; maxClockOffsetMs?: number; syncIntervalMs: number; linkTimeoutMs: number; reconnectMs: number },
  subsystems: { id: number; replicationPort: number; nbdPort: number; volumes: { name: string; sizeMiB: number }[] }[],
  groups: { name: string; pairs: { primary: string; secondary: string }[] }[],
): LoadedTopology {
  const raw = { clusterKey: "simulated-cluster-key-0123456789", dataDir: "sim", ...timing, inflightBytesMax: 64 * 1024, logLevel: "fatal", subsystems, groups };
  return { ...parseConfig(raw, "sim"), file: "sim", dataDir: "sim" };
}

/** A simulated subsystem's id and its (never opened) ports: the schema asks for them. */
function simPorts(id: number) {
  return { id, replicationPort: 20000 + id, nbdPort: 21000 + id };
}

/** Subsystem `id` of a hand-made simulated topology, with 1 MiB volumes of these names. */
export function simSubsystem(id: number, volumes: string[]) {
  return { ...simPorts(id), volumes: volumes.map((name) => ({ name, sizeMiB: 1 })) };
}

export interface SimClockModel {
  /** The stamp clock a process of host `hostId` reads, for this incarnation. */
  readerFor(hostId: number, proc: SimProcess): () => bigint;
}

export interface SimNode {
  id: number;
  disk: SimHostDisk;
  proc: SimProcess | null;
  core: SubsystemCore | null;
  /** Starting: the journal replay has not finished. */
  starting: boolean;
  /** The last stop was a power cut: the next start suspects torn regions. */
  powerLost: boolean;
  incarnations: number;
  /** Host requests of this incarnation still waiting: failed when it dies. */
  inflight: Set<(err: Error) => void>;
}

export interface ClusterHooks {
  probe: PrimaryProbe & SecondaryProbe;
  /** The engines' log (a replay with --verbose shows their warnings). */
  logger?: pino.Logger;
  /** A subsystem died (kill -9 or power cut); after the disk was cut, for power cuts. */
  died?(id: number, how: "kill" | "power"): void;
  /** A primary's link reached subsystem `id`, with `pendingCommits` of its commits not yet durable. */
  linkAttached?(id: number, pendingCommits: number): void;
  /** Subsystem `id` removed a payload segment, with `pendingCommits` of its commits not yet durable. */
  segmentRemoved?(id: number, pendingCommits: number): void;
}

const silent = pino({ level: "silent" });

export class SimCluster {
  readonly nodes = new Map<number, SimNode>();
  private rcmProc: SimProcess | null = null;
  rcmIncarnations = 0;

  constructor(
    readonly sched: Scheduler,
    readonly net: SimNetwork,
    readonly topo: LoadedTopology,
    readonly clock: SimClockModel,
    private readonly hooks: ClusterHooks,
    powerCuts: boolean,
    blocks: number,
    private readonly controls?: NegativeControls,
    private readonly tuning?: Partial<PrimaryTuning>,
  ) {
    for (const ss of topo.config.subsystems) {
      const disk = new SimHostDisk({
        random: sched.random,
        powerCuts,
        volumes: ss.volumes.map((v) => ({ name: v.name, sizeBytes: blocks * SIM_BLOCK_BYTES })),
      });
      for (const dir of Object.values(disk.segmentDirs)) dir.onRemove = () => this.hooks.segmentRemoved?.(ss.id, disk.state.pendingCommits);
      this.nodes.set(ss.id, { id: ss.id, disk, proc: null, core: null, starting: false, powerLost: false, incarnations: 0, inflight: new Set() });
    }
  }

  node(id: number): SimNode {
    const n = this.nodes.get(id);
    if (!n) throw new Error(`simulation: no subsystem #${id}`);
    return n;
  }

  isUp(id: number): boolean {
    const n = this.node(id);
    return n.core !== null && !n.starting;
  }

  /** Starts a new incarnation; resolves once its journal is replayed and it serves. */
  start(id: number): Promise<void> {
    const n = this.node(id);
    if (n.proc?.alive) return Promise.resolve();
    const proc = this.sched.process(`ss${id}#${++n.incarnations}`);
    n.proc = proc;
    n.starting = true;
    const volumes = new Map<string, Volume>(n.disk.volumeNames().map((v) => [v, n.disk.volume(v).view(proc)]));
    const core = new SubsystemCore({
      id,
      topo: this.topo,
      store: n.disk.store(proc),
      volumes,
      logger: this.hooks.logger?.child({ ss: id }) ?? silent,
      runtime: proc.runtime,
      clockNs: this.clock.readerFor(id, proc),
      connect: (to) => this.net.connect(proc, id, to),
      powerLossSuspected: n.powerLost,
      probe: this.hooks.probe,
      controls: this.controls,
      tuning: this.tuning,
    });
    n.powerLost = false;
    n.core = core;
    // As runSubsystem does: links and control requests are taken only once the journal is replayed.
    return core.start().then(() => {
      if (!proc.alive) return;
      n.starting = false;
      this.net.listen(id, {
        proc,
        acceptLink: (link, from) => {
          if (from === 0) return core.attachControl(link);
          this.hooks.linkAttached?.(id, n.disk.state.pendingCommits);
          core.attachReplication(link, from);
        },
        request: (body) => core.handleRequest(body),
      });
    });
  }

  /** kill -9: memory and connections gone, everything written kept. */
  kill(id: number): void {
    this.die(id, "kill");
  }

  /** The host loses power: the process dies and its disk keeps only what was durable (plus what the rules let survive). */
  powerCut(id: number): void {
    this.die(id, "power");
  }

  private die(id: number, how: "kill" | "power"): void {
    const n = this.node(id);
    if (n.proc) {
      n.proc.kill();
      this.net.processDied(n.proc);
    }
    n.proc = null;
    n.core = null;
    n.starting = false;
    for (const fail of n.inflight) fail(new Error(`subsystem #${id} died (${how === "kill" ? "kill -9" : "power cut"})`));
    n.inflight.clear();
    if (how === "power") {
      n.disk.powerCut();
      n.powerLost = true;
    }
    this.hooks.died?.(id, how);
  }

  /**
   * A host request through the subsystem's NBD export (the same export
   * object the NBD server calls). It fails if the subsystem is down or dies
   * before it answers, as a connection reset would.
   */
  hostCall<T>(id: number, f: (core: SubsystemCore) => Promise<T>): Promise<T> {
    const n = this.node(id);
    if (!n.core || n.starting) return Promise.reject(new Error(`subsystem #${id} is down`));
    return new Promise<T>((resolve, reject) => {
      const fail = (err: Error) => reject(err);
      n.inflight.add(fail);
      f(n.core!).then(
        (v) => {
          n.inflight.delete(fail);
          resolve(v);
        },
        (err: Error) => {
          n.inflight.delete(fail);
          reject(err);
        },
      );
    });
  }

  /** A new RCM incarnation: the plane its procedures use; the previous one's calls never answer again. */
  rcmTopology(): LoadedTopology {
    this.rcmProc?.kill();
    const proc = this.sched.process(`rcm#${++this.rcmIncarnations}`);
    this.rcmProc = proc;
    return this.rcmPlane(proc);
  }

  private rcmPlane(proc: SimProcess): LoadedTopology {
    const plane: ControlPlane = {
      call: <T>(id: number, body: unknown, timeoutMs: number) => this.net.request<T>(proc, id, body, Math.min(timeoutMs, 5_000)),
      runtime: proc.runtime,
      clockNs: () => this.sched.trueNs(),
    };
    return withControlPlane(this.topo, plane);
  }

  /**
   * A second RCM (another address): it overlaps the first one's procedures,
   * as a second admin's RCM or a stray one would. It lives until `kill()`.
   */
  otherRcm(name: string): { topo: LoadedTopology; proc: SimProcess } {
    const proc = this.sched.process(name);
    return { topo: this.rcmPlane(proc), proc };
  }

  /** kill -9 of the RCM: its procedure stops where it is; requests already sent still land. */
  killRcm(): void {
    this.rcmProc?.kill();
    this.rcmProc = null;
  }

  get rcmAlive(): boolean {
    return this.rcmProc?.alive ?? false;
  }
}

/** One clock for the whole host group, as on one machine: true time plus the host's boot epoch. */
export function sharedMonotonicClock(sched: Scheduler): SimClockModel {
  return {
    readerFor: () => () => sched.trueNs() + 1_000n * NS_PER_MS,
  };
}

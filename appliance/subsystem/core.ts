// A subsystem without its process: its roles (the primary and secondary
// engines, built from the topology turned as each group's direction says),
// its control operations, its incoming links and its NBD exports. The
// subsystem process (subsystem.ts) gives it real files, TCP and the real
// clock; the seeded simulation gives it simulated ones, and so runs the
// product's own code (docs/simulation.md).
import type { Logger } from "pino";
import type { Volume } from "../../disks/volume.ts";
import type { LoadedTopology } from "../../config/load.ts";
import { directed, type Direction } from "../../config/direction.ts";
import { durableBarrier } from "../state/database.ts";
import type { StateStore } from "../state/store.ts";
import type { DiskGuard } from "../state/disk-guard.ts";
import { PrimaryEngine, type PrimaryBinding, type PrimaryProbe, type PrimaryTuning } from "../primary/primary.ts";
import { SecondaryEngine, type SecondaryBinding, type SecondaryProbe } from "../secondary/secondary.ts";
import type { FrameLink, LinkConnector } from "../replication/frame-link.ts";
import { WIRE_ERROR, type Frame } from "../replication/frames.ts";
import { codeOf, tmError } from "../errors/codes.ts";
import type { Runtime } from "../runtime/runtime.ts";
import type { NegativeControls } from "../runtime/controls.ts";
import { ExportTable, volumeExport, type Roles } from "./exports.ts";
import { ProcedureLeases, leaseRequestOf } from "./procedure-lease.ts";
import { SUBSYSTEM_OPS, type ControlTarget } from "./control-ops.ts";
import { parseRequest } from "../control/op-table.ts";
import { BitmapWriter } from "../state/bitmap-writer.ts";
import { SubsystemEvents } from "../events/subsystem-events.ts";
import type { EventView } from "../events/state-events.ts";
import { VerifyEvents } from "../resync/verify-events.ts";


export interface SubsystemCoreOptions {
  id: number;
  topo: LoadedTopology;
  store: StateStore;
  volumes: Map<string, Volume>;
  logger: Logger;
  runtime: Runtime;
  clockNs: () => bigint;
  connect: LinkConnector;
  /** True after a reboot without a clean stop: hot regions may be torn. */
  powerLossSuspected: boolean;
  defaultExport?: string;
  probe?: PrimaryProbe & SecondaryProbe;
  /** Only the seeded simulation sets these (runtime/controls.ts). */
  controls?: NegativeControls;
  /** Scaled-down sizes for the simulation (PrimaryTuning). */
  tuning?: Partial<PrimaryTuning>;
  /** What status shows of the process (pid, ports, NBD URLs); the simulation has none. */
  processStatus?: () => Record<string, unknown>;
  nbdUrlOf?: (volume: string) => string | null;
  /** The state disk's guard (disk-guard.ts); the simulation has none. */
  disk?: DiskGuard;
  /** This process's start and pid (events/hub.ts, processIncarnation): a restart gives another. */
  incarnation?: string;
}

export class SubsystemCore {
  private roles: Roles;
  readonly exports: ExportTable;
  private readonly getGroup;
  private readonly bitmapCounts;
  private readonly turnedAt;
  /** Turns are one at a time: each moves one group between the engines. */
  private turning: Promise<unknown> = Promise.resolve();
  private readonly leases: ProcedureLeases;
  /** One bitmap writer for both engines: a turned group keeps one cache of its marks. */
  private readonly bitmap: BitmapWriter;
  /** `tidemark events` (docs/events.md): state changes pushed to subscribed control connections. */
  readonly events: SubsystemEvents;
  /** The online verify's start, progress, end and mismatch events of both roles here (docs/verify.md, Events). */
  readonly verifyEvents = new VerifyEvents();

  constructor(private readonly o: SubsystemCoreOptions) {
    const db = o.store.db;
    const ensureGroup = db.prepare("INSERT OR IGNORE INTO grp (name) VALUES (?)");
    for (const g of o.topo.groups.keys()) ensureGroup.run(g);
    this.getGroup = db.prepare("SELECT generation, direction FROM grp WHERE name = ?");
    this.bitmapCounts = db.prepare("SELECT volume, count(*) AS n FROM bitmap GROUP BY volume");
    this.turnedAt = db.prepare("SELECT name, synchronized_ts AS ts FROM grp WHERE synchronized_ts IS NOT NULL").safeIntegers(true);
    this.leases = new ProcedureLeases(db, o.id, () => o.runtime.nowMs());
    this.bitmap = new BitmapWriter(db, o.runtime, o.disk);
    this.roles = this.buildRoles(o.powerLossSuspected);
    this.exports = new ExportTable(o.defaultExport);
    // Exports ask for the roles at every request: a failback turns them while hosts stay connected.
    for (const v of o.volumes.values()) this.exports.add(volumeExport(v, () => this.roles));
    this.events = new SubsystemEvents({ id: o.id, incarnation: o.incarnation ?? `${o.runtime.nowMs()}-0`, view: () => this.eventView(), runtime: o.runtime, logger: o.logger });
    // The online verify's occurrences go out as events as they happen (no walk finds them).
    this.verifyEvents.on((e) => {
      const { kind, ...fields } = e;
      this.events.emit(kind === "mismatch" ? { kind: "mismatch", action: "occur", ...fields } : { kind: "verify", action: kind, ...fields });
    });
  }

  /** What events are made of: the engines' own status, without the bitmap walk of status(). */
  private eventView(): EventView {
    const roles = this.roles;
    return {
      subsystem: this.o.id,
      pid: (this.o.processStatus?.() as { pid?: number } | undefined)?.pid,
      disk: this.o.disk?.status().state ?? "ok",
      directions: Object.fromEntries([...this.directions()].filter(([g]) => this.ownGroup(g))),
      primary: (roles.primary?.status() ?? null) as EventView["primary"],
      secondary: (roles.secondary?.status() ?? null) as EventView["secondary"],
    };
  }

  get id(): number {
    return this.o.id;
  }

  get primary(): PrimaryEngine | null {
    return this.roles.primary;
  }

  get secondary(): SecondaryEngine | null {
    return this.roles.secondary;
  }

  private generationOf = (g: string): number => (this.getGroup.get(g) as { generation: number } | undefined)?.generation ?? 1;

  private ownGroup(group: string): boolean {
    const g = this.o.topo.groups.get(group);
    return !!g && (g.primaries.includes(this.o.id) || g.secondaries.includes(this.o.id));
  }

  private directions(): Map<string, Direction> {
    return new Map(
      [...this.o.topo.groups.keys()].map((g) => [g, (this.getGroup.get(g) as { direction: string }).direction === "reverse" ? ("reverse" as const) : ("forward" as const)]),
    );
  }

  /** The roles of the moment: the config's pairs turned as each group's direction says. */
  private buildRoles(powerLossSuspected: boolean): Roles {
    const { o } = this;
    const id = o.id;
    const now = directed(o.topo, this.directions());
    const primaryBindings: PrimaryBinding[] = [];
    const secondaryBindings: SecondaryBinding[] = [];
    const groupSecondaries = new Map<string, number[]>();
    const secondaryGroups = new Map<string, number[]>();
    for (const p of now.pairs) {
      const g = now.groups.get(p.group)!;
      if (p.primary.subsystemId === id) {
        primaryBindings.push({ volume: o.volumes.get(p.primary.name)!, group: p.group, link: p.secondary.subsystemId, target: p.secondary.name });
        groupSecondaries.set(p.group, g.secondaries);
      }
      if (p.secondary.subsystemId === id) {
        secondaryBindings.push({ volume: o.volumes.get(p.secondary.name)!, group: p.group, primaryId: p.primary.subsystemId });
        secondaryGroups.set(p.group, g.primaries);
      }
    }
    // A secondary subsystem of a group holds its time parameters even with no volume of a given primary.
    for (const g of now.groups.values()) if (g.secondaries.includes(id)) secondaryGroups.set(g.name, g.primaries);
    const primary = groupSecondaries.size > 0 ? this.primaryEngine(primaryBindings, groupSecondaries, powerLossSuspected) : null;
    const secondary = secondaryGroups.size > 0 ? this.secondaryEngine(secondaryBindings, secondaryGroups) : null;
    return { primary, secondary };
  }

  private primaryEngine(bindings: PrimaryBinding[], groupSecondaries: Map<string, number[]>, powerLossSuspected: boolean): PrimaryEngine {
    const { o } = this;
    const cfg = o.topo.config;
    return new PrimaryEngine({
      id: o.id,
      store: o.store,
      logger: o.logger,
      runtime: o.runtime,
      clockNs: o.clockNs,
      connect: o.connect,
      probe: o.probe,
      controls: o.controls,
      tuning: o.tuning,
      maxClockOffsetMs: cfg.maxClockOffsetMs,
      syncIntervalMs: cfg.syncIntervalMs,
      reconnectMs: cfg.reconnectMs,
      linkTimeoutMs: cfg.linkTimeoutMs,
      inflightBytesMax: cfg.inflightBytesMax,
      journalBytesMax: cfg.journalBytesMax,
      bindings,
      groupSecondaries,
      generationOf: this.generationOf,
      powerLossSuspected,
      disk: o.disk,
      bitmap: this.bitmap,
      verifyEvents: this.verifyEvents,
    });
  }

  private secondaryEngine(bindings: SecondaryBinding[], groups: Map<string, number[]>): SecondaryEngine {
    const { o } = this;
    return new SecondaryEngine({ id: o.id, store: o.store, logger: o.logger, runtime: o.runtime, probe: o.probe, controls: o.controls, bindings, groups, disk: o.disk, bitmap: this.bitmap, verifyEvents: this.verifyEvents, segmentBytes: o.tuning?.segmentBytes });
  }

  /** The journal is replayed before the volumes are served again. */
  async start(): Promise<void> {
    await this.roles.primary?.start();
    this.roles.secondary?.start();
  }

  async stop(): Promise<void> {
    this.events.stop();
    await this.roles.primary?.stop();
    this.roles.secondary?.stop();
  }

  /** Failback (docs/resync.md): the group's direction turns; this subsystem's engines are rebuilt. */
  private async turnDirection(group: string, direction: Direction, generation: number, floor: bigint) {
    const { o } = this;
    const id = o.id;
    const db = o.store.db;
    const g = o.topo.groups.get(group);
    if (!g) throw tmError("TM_NO_GROUP", `group '${group}' is not defined in ${o.topo.file}`, { group, file: o.topo.file });
    const row = db.prepare("SELECT direction, generation, state FROM grp WHERE name = ?").get(group) as { direction: string; generation: number; state: string };
    if (row.direction === direction && row.generation >= generation) return { subsystem: id, group, direction, generation: row.generation, turned: false };
    if (generation <= row.generation) {
      throw tmError("TM_GENERATION", `group '${group}' on subsystem #${id} is at generation ${row.generation}; turning it needs a newer one than ${generation}`, {
        group,
        subsystem: id,
        held: row.generation,
        asked: generation,
      });
    }
    // Only a group that was taken over turns: both sides stand still for hosts' data.
    if (row.state !== "takeover" && row.state !== "taken-over") {
      throw tmError("TM_NOT_TAKEN_OVER", `group '${group}' on subsystem #${id} is ${row.state}; only a group that was taken over turns its direction`, {
        group,
        subsystem: id,
        state: row.state,
      });
    }
    const next = directed(o.topo, new Map([...this.directions(), [group, direction]]));
    const willBeSecondary = next.groups.get(group)!.secondaries.includes(id);
    const myNewPrimaryVolumes = next.pairs.filter((p) => p.group === group && p.primary.subsystemId === id);
    // The negative control restores issue 17's race 1: every group's engines stop for the turn.
    const rebuild = o.controls?.turnRebuildsSubsystem === true;
    if (rebuild) await this.stop();
    db.transaction(() => {
      db.prepare(
        `UPDATE grp SET direction = ?, generation = ?, state = 'suspended', reason = ?, suspended_by = 'failback',
           synchronized_ts = ?, second_time = ?, resync_floor = NULL, copied_ts = NULL, frozen_ts = NULL, changed_at_ms = ? WHERE name = ?`,
      ).run(direction, generation, `direction turned to ${direction}`, floor, willBeSecondary ? floor : 0n, o.runtime.nowMs(), group);
      db.prepare("DELETE FROM first_time WHERE grp = ?").run(group);
      db.prepare("DELETE FROM copied WHERE grp = ?").run(group);
      // A volume that becomes primary is a known pair: its differences are in the bitmaps, no initial copy.
      for (const p of myNewPrimaryVolumes) db.prepare("INSERT OR IGNORE INTO pair (volume, target) VALUES (?, ?)").run(p.primary.name, p.secondary.name);
      // New stamps stay above the time the other side rests at.
      db.prepare("UPDATE stamp SET ts_floor = max(ts_floor, ?)").run(floor);
    })();
    durableBarrier(db);
    if (rebuild) {
      this.roles = this.buildRoles(false);
      await this.start();
      return { subsystem: id, group, direction, generation, turned: true };
    }
    // Only this group changes roles: the other groups' write paths, links,
    // journal and queue stay as they are (issue 17, race 1). The turn is
    // durable already: an engine that cannot let the group go (a broken
    // invariant) stops the process, whose restart builds the roles from the
    // state file, rather than serve with roles that disagree with it.
    try {
      await this.moveGroup(group, next, willBeSecondary, floor);
    } catch (err) {
      const e = err instanceof Error ? err : new Error(String(err));
      o.logger.fatal({ group, direction, err: e.message }, "a turned group could not move between the engines; stopping (a restart builds the roles from the state file)");
      o.runtime.fatal(e);
      // The process is stopping on `e`; the RCM hears why (or, with the process gone, nothing).
      throw tmError("TM_INVARIANT", `subsystem #${id}: turning group '${group}' stopped the subsystem: ${e.message}`, { group, subsystem: id });
    }
    o.logger.warn({ group, direction, generation, role: willBeSecondary ? "secondary" : "primary" }, "group direction turned; its roles moved");
    return { subsystem: id, group, direction, generation, turned: true };
  }

  /**
   * Moves one group between this subsystem's engines after a turn. The
   * engine that gains it takes it first, so a host request always finds an
   * engine holding the volume (exports ask the primary first); an engine left
   * with no group stops, one that is needed and absent is built and started.
   */
  private async moveGroup(group: string, next: LoadedTopology, willBeSecondary: boolean, floor: bigint): Promise<void> {
    const { o } = this;
    const id = o.id;
    const g = next.groups.get(group)!;
    const roles = this.roles;
    if (willBeSecondary) {
      const bindings = next.pairs
        .filter((p) => p.group === group && p.secondary.subsystemId === id)
        .map((p) => ({ volume: o.volumes.get(p.secondary.name)!, group, primaryId: p.primary.subsystemId }));
      if (roles.secondary) roles.secondary.addGroup(group, bindings, g.primaries);
      else {
        roles.secondary = this.secondaryEngine(bindings, new Map([[group, g.primaries]]));
        roles.secondary.start();
      }
      if (roles.primary) {
        await roles.primary.removeGroup(group);
        if (roles.primary.groupNames().length === 0) {
          const gone = roles.primary;
          roles.primary = null;
          await gone.stop();
        }
      }
    } else {
      const bindings = next.pairs
        .filter((p) => p.group === group && p.primary.subsystemId === id)
        .map((p) => ({ volume: o.volumes.get(p.primary.name)!, group, link: p.secondary.subsystemId, target: p.secondary.name }));
      if (roles.primary) {
        roles.primary.addGroup(group, bindings, g.secondaries);
        roles.primary.raiseStampFloor(floor);
      } else {
        const primary = this.primaryEngine(bindings, new Map([[group, g.secondaries]]), false);
        // Its journal holds no entry (no group was primary here): the replay is empty.
        await primary.start();
        roles.primary = primary;
      }
      if (roles.secondary) {
        await roles.secondary.removeGroup(group);
        if (roles.secondary.groupNames().length === 0) {
          const gone = roles.secondary;
          roles.secondary = null;
          gone.stop();
        }
      }
    }
  }

  status() {
    const { o } = this;
    const roles = this.roles;
    const bitmap = new Map((this.bitmapCounts.all() as { volume: string; n: number }[]).map((r) => [r.volume, r.n]));
    return {
      subsystem: o.id,
      ...o.processStatus?.(),
      clock: o.topo.config.clock,
      // `state-disk-full` while the state disk is full (disk-guard.ts); the RCM suspends the groups on it.
      disk: o.disk?.status() ?? null,
      nowNs: (roles.primary?.nowNs() ?? o.clockNs()).toString(),
      volumes: [...o.volumes.values()].map((v) => ({
        name: v.name,
        role: roles.primary?.hasVolume(v.name) ? "primary" : roles.secondary?.hasVolume(v.name) ? "secondary" : "unpaired",
        path: v.path,
        kind: v.kind,
        sizeBytes: v.sizeBytes,
        nbdUrl: o.nbdUrlOf?.(v.name) ?? null,
        readOnly: this.exports.get(v.name)!.isReadOnly(),
        bitmapBlocks: bitmap.get(v.name) ?? 0,
      })),
      // Only the groups this subsystem belongs to: another subsystem's group is not its to report
      // (a subsystem outside a turned group would otherwise read "forward" and make it look mixed).
      directions: Object.fromEntries([...this.directions()].filter(([g]) => this.ownGroup(g))),
      primary: roles.primary?.status() ?? null,
      secondary: roles.secondary?.status() ?? null,
      // Online verify (docs/verify.md): per primary group its runs, per secondary volume the run it last compared.
      verify: {
        primary: roles.primary ? Object.fromEntries(roles.primary.groupNames().map((g) => [g, roles.primary!.verifyStatus(g)])) : {},
        secondary: roles.secondary?.verifyStatus() ?? [],
        counters: roles.primary?.verifyCounters() ?? { hashedBytes: 0, records: 0 },
      },
      // The Ts each group was last turned at, as a primary holds it too: a
      // turn cut short after this subsystem turned is finished from it.
      turnedAtTs: Object.fromEntries(
        (this.turnedAt.all() as { name: string; ts: bigint }[]).filter((r) => this.ownGroup(r.name)).map((r) => [r.name, r.ts.toString()]),
      ),
      // Live procedure leases by group: who runs a procedure on it now.
      leases: this.leases.status((g) => this.ownGroup(g)),
    };
  }

  private need<T>(engine: T | null, what: string): T {
    if (!engine) throw tmError("TM_NO_ROLE", `subsystem #${this.o.id} has no ${what} role`, { subsystem: this.o.id, role: what });
    return engine;
  }

  /**
   * One control operation (docs/wire.md, control requests), as the RCM and the
   * CLI send them: parsed against its row of control-ops.ts first, so a
   * malformed request is refused by op and field and changes nothing; then the
   * role and the group's lease are checked, then the row's handler runs.
   */
  async handleRequest(body: unknown): Promise<unknown> {
    // No "subsystem #N" prefix: the control client puts it on every answer it reads.
    const { row, req } = parseRequest(SUBSYSTEM_OPS, body);
    const roles = this.roles;
    for (const role of row.roles) {
      if (role === "primary") this.need(roles.primary, "primary");
      if (role === "secondary") this.need(roles.secondary, "secondary");
    }
    if (row.leased) {
      const r = req as { group: string; lease?: unknown };
      this.leases.admit(r.group, leaseRequestOf(r.lease, row.name), row.name);
    }
    return row.handle(this.controlTarget(roles), req);
  }

  /** What the control handlers see: the roles of the moment the request arrived. */
  private controlTarget(roles: Roles): ControlTarget {
    return {
      status: () => this.status(),
      stamp: () => ({ lastStamp: (roles.primary?.lastStamp ?? 0n).toString(), nowNs: (roles.primary?.nowNs() ?? this.o.clockNs()).toString() }),
      primary: () => this.need(roles.primary, "primary"),
      secondary: () => this.need(roles.secondary, "secondary"),
      leases: this.leases,
      turn: (group, direction, generation, ts) => {
        const turn = this.turning.then(() => this.turnDirection(group, direction, generation, ts));
        this.turning = turn.catch(() => {});
        return turn;
      },
    };
  }

  /** A replication link from a primary: its frames go to the secondary role. */
  attachReplication(link: FrameLink, primaryId: number): void {
    const secondary = this.roles.secondary;
    if (!secondary) {
      this.o.logger.warn({ peer: primaryId }, "replication link from a primary, but this subsystem is no secondary");
      // About the whole link, no one group: the primary stops every group it sends here.
      link.send({ type: "error", code: WIRE_ERROR.role, group: "", message: `subsystem #${this.o.id} holds no secondary volume` });
      link.close();
      return;
    }
    secondary.attach(link, primaryId);
  }

  /** A control connection (the RCM, the CLI): request frames answered in turn. */
  attachControl(link: FrameLink): void {
    link.on("frame", (f: Frame) => {
      if (f.type !== "request") return;
      const op = (f.body as { op?: unknown } | null)?.op;
      // The answer and the event frames after it are the publisher's to send, in order.
      if (op === "subscribe") return this.events.subscribe(link, f.id);
      this.handleRequest(f.body).then(
        (body) => {
          link.send({ type: "response", id: f.id, ok: true, body });
          // A step that changed a group: subscribers hear it now, not at the next walk.
          if (typeof op === "string" && SUBSYSTEM_OPS.get(op)?.leased === true) this.events.check();
        },
        (err: Error) => {
          if (err.name === "InvariantError") throw err;
          link.send({ type: "response", id: f.id, ok: false, body: { code: codeOf(err, "TM_CONTROL"), message: err.message } });
        },
      );
    });
  }
}

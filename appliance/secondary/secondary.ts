// The secondary role of a subsystem: the engine that owns its state (each
// group's times, generation and state, the RCR queue, the bitmap) and wires
// the parts that act on it: receiver.ts (frames in, group commit, durable
// acks), applier.ts (the disk request queue to the volumes under 112) and
// procedure-steps.ts (the RCM's steps). Hosts write its volumes only after a
// takeover, each write marked in the bitmap first.
import type { Logger } from "pino";
import { assert } from "../invariant.ts";
import type { Db } from "../state/database.ts";
import { BitmapWriter } from "../state/bitmap-writer.ts";
import { VerifyCheck } from "./verify-check.ts";
import type { VerifyEvents } from "../resync/verify-events.ts";
import { PayloadSegments } from "../state/payload-segments.ts";
import { PayloadCache } from "../state/payload-cache.ts";
import type { StateStore } from "../state/store.ts";
import type { DiskGuard } from "../state/disk-guard.ts";
import type { FrameLink } from "../replication/frame-link.ts";
import type { Runtime } from "../runtime/runtime.ts";
import type { NegativeControls } from "../runtime/controls.ts";
import { initialTimes, withPrimaries, type GroupTimes } from "./time-parameters.ts";
import { secondaryGroupTransition, type SecondaryGroupState } from "./group-state.ts";
import type { GroupState, SecondaryBinding } from "./engine-state.ts";
import { dropTornTail, prepareQueue, type QueueStatements } from "./rcr-queue.ts";
import { Receiver } from "./receiver.ts";
import { Applier, type SecondaryProbe } from "./applier.ts";
import * as steps from "./procedure-steps.ts";
import { resyncReport, type StepContext } from "./procedure-steps.ts";

export type { SecondaryGroupState } from "./group-state.ts";
export type { SecondaryBinding } from "./engine-state.ts";
export type { SecondaryProbe } from "./applier.ts";
export { APPLY_BATCH_BYTES, APPLY_BATCH_ROWS } from "./applier.ts";
export { toRuns, type BlockRuns } from "./procedure-steps.ts";

/**
 * Payloads of queued RCRs kept in memory for the applier (usually a sync
 * interval later) so it need not read them back from their segment: that
 * read cost the secondary 19% of its CPU on 4 KiB writes. Beyond this, and
 * after a restart, the segment is read.
 */
const RECENT_PAYLOAD_BYTES = 16 * 1024 * 1024;

export interface SecondaryOptions {
  id: number;
  store: StateStore;
  logger: Logger;
  runtime: Runtime;
  probe?: SecondaryProbe;
  controls?: NegativeControls;
  bindings: SecondaryBinding[];
  /** Every group this subsystem is a secondary of, with the group's primaries. */
  groups: Map<string, number[]>;
  /** The state disk (disk-guard.ts): while it is full no RCR is taken. The simulation has none. */
  disk?: DiskGuard;
  /** Where the verify check reports mismatches (docs/verify.md, Events). */
  verifyEvents?: VerifyEvents;
  /** The subsystem's one bitmap writer, shared with its primary engine (PrimaryOptions.bitmap). */
  bitmap?: BitmapWriter;
  /** Payload segment size: only a simulation scales it down (PrimaryTuning.segmentBytes). */
  segmentBytes?: number;
}

export class SecondaryEngine {
  private readonly groups = new Map<string, GroupState>();
  private readonly volumes = new Map<string, SecondaryBinding>();
  private stopped = false;
  private readonly stmts: QueueStatements;
  private readonly bitmap: BitmapWriter;
  private readonly segments: PayloadSegments;
  /** Payloads of rows just queued, by row id: the receiver adds them, the applier takes them. */
  private readonly recent = new PayloadCache<bigint>(RECENT_PAYLOAD_BYTES);
  private readonly receiver: Receiver;
  private readonly applier: Applier;
  private readonly verify: VerifyCheck;
  private readonly stepContext: StepContext;
  /** Host writes between their check and their volume write (after a takeover). */
  private hostWrites = 0;
  private hostIdle: (() => void)[] = [];

  private readonly db: Db;

  constructor(private readonly o: SecondaryOptions) {
    this.db = o.store.db;
    const db = this.db;
    for (const b of o.bindings) this.volumes.set(b.volume.name, b);
    this.bitmap = o.bitmap ?? new BitmapWriter(db, o.runtime, o.disk);
    this.segments = new PayloadSegments(o.store.segments("queue"), o.segmentBytes);
    this.stmts = prepareQueue(db);
    const shared = {
      id: o.id,
      logger: o.logger,
      runtime: o.runtime,
      db,
      stmts: this.stmts,
      bitmap: this.bitmap,
      segments: this.segments,
      recent: this.recent,
      groups: this.groups,
      volumes: this.volumes,
      disk: o.disk,
    };
    const stopped = () => this.stopped;
    this.stepContext = {
      ...shared,
      flushCommits: () => this.receiver.flushCommits(),
      closeLinks: (which) => this.receiver.closeLinks(which),
      drainedThrough: (group, ts) => this.applier.drainedThrough(group, ts),
      hostsIdle: () => (this.hostWrites > 0 ? new Promise<void>((r) => this.hostIdle.push(r)) : null),
    };
    this.receiver = new Receiver({
      ...shared,
      controls: o.controls,
      store: o.store,
      stopped,
      endResync: (name) => steps.endResync(this.stepContext, name),
      kickApplier: () => this.applier.kick(),
    });
    this.verify = new VerifyCheck({ id: o.id, db, bitmap: this.bitmap, logger: o.logger, events: o.verifyEvents });
    this.applier = new Applier({ ...shared, store: o.store, probe: o.probe, stopped, verify: this.verify, controls: o.controls });
    this.load();
  }

  private load(): void {
    const db = this.db;
    dropTornTail({ db, segments: this.segments, stmts: this.stmts, logger: this.o.logger });
    this.receiver.reloadSeqs();
    db.transaction(() => {
      for (const [name, primaries] of this.o.groups) this.loadGroup(name, primaries);
      this.recordVolumes(this.o.bindings, db.prepare("SELECT 1 FROM meta WHERE key = 'secondary_volumes_unrecorded'").get() !== undefined);
      db.prepare("DELETE FROM meta WHERE key = 'secondary_volumes_unrecorded'").run();
    })();
  }

  /**
   * A secondary volume seen for the first time is a new pair: its image is
   * not complete until a resync's barrier passes (endResync), and until then
   * a takeover shows it as not usable. `copied`: taken as complete (a state
   * file older than the record, or a volume a turn brings, which was a primary).
   */
  private recordVolumes(bindings: readonly SecondaryBinding[], copied: boolean): void {
    const known = this.db.prepare("INSERT OR IGNORE INTO secondary_volume (volume) VALUES (?)");
    const uncopied = this.db.prepare("INSERT OR IGNORE INTO uncopied (volume) VALUES (?)");
    for (const b of bindings) {
      if (known.run(b.volume.name).changes === 0 || copied) continue;
      uncopied.run(b.volume.name);
      this.o.logger.info({ volume: b.volume.name, group: b.group }, "new secondary volume: not a usable image until its initial copy passes a resync barrier");
    }
  }

  /** One group's row, times and state, as a start or a turn finds them (inside a transaction). */
  private loadGroup(name: string, primaries: readonly number[]): void {
    const db = this.db;
    db.prepare("INSERT OR IGNORE INTO grp (name) VALUES (?)").run(name);
    const g = db.prepare("SELECT * FROM grp WHERE name = ?").safeIntegers(true).get(name) as Record<string, bigint | string | null>;
    const first = new Map<number, bigint>();
    for (const r of db.prepare("SELECT primary_id, t FROM first_time WHERE grp = ?").safeIntegers(true).all(name) as { primary_id: bigint; t: bigint }[]) {
      first.set(Number(r.primary_id), r.t);
    }
    const second = g.second_time as bigint;
    let times: GroupTimes = first.size === 0 ? initialTimes([...primaries], second) : { first, second, hold: null };
    let state = g.state as SecondaryGroupState;
    if (Number(g.initialized) === 0) {
      // A group's first start is a resync from nothing (docs/resync.md, Initial copy):
      // 112 rests at 0 until every primary's copy is complete.
      state = secondaryGroupTransition("uninitialized", "first-start")!;
      db.prepare("UPDATE grp SET initialized = 1, state = ?, resync_floor = ? WHERE name = ?").run(state, second, name);
      g.resync_floor = second;
    }
    if (g.resync_floor !== null) {
      const copied = new Map<number, bigint>();
      for (const r of db.prepare("SELECT primary_id, ts FROM copied WHERE grp = ?").safeIntegers(true).all(name) as { primary_id: bigint; ts: bigint }[]) {
        copied.set(Number(r.primary_id), r.ts);
      }
      times = { first: times.first, second: times.second, hold: { floor: g.resync_floor as bigint, copied } };
    }
    // A primary new to the group starts at the current 112, never at zero.
    times = withPrimaries(times, [...primaries]);
    if (this.o.controls?.restartLifts112) {
      const min = [...times.first.values()].reduce((m, t) => (t < m ? t : m), times.first.values().next().value ?? times.second);
      if (min > times.second) times = { ...times, second: min };
    }
    for (const [p, t] of times.first) this.stmts.setFirst.run(name, p, t);
    this.stmts.setSecond.run(times.second, name);
    this.groups.set(name, {
      name,
      times,
      generation: Number(g.generation),
      state,
      reason: (g.reason as string | null) ?? null,
      applied: Number(g.applied),
      appliedBytes: Number(g.applied_bytes),
      lastAppliedTs: g.last_applied_ts as bigint,
      synchronizedTs: (g.synchronized_ts as bigint | null) ?? null,
      suspendedBy: (g.suspended_by as string | null) ?? null,
      dropped: Number(g.dropped),
      droppedBytes: Number(g.dropped_bytes),
    });
  }

  /**
   * A turn made this subsystem a secondary of `group` (issue 17, race 1):
   * its volumes and times join this running engine; the other groups'
   * queues, links and applier are not touched.
   */
  addGroup(group: string, bindings: readonly SecondaryBinding[], primaries: readonly number[]): void {
    assert(!this.groups.has(group), `secondary #${this.o.id}: group ${group} is here already`);
    assert(bindings.every((b) => b.group === group && !this.volumes.has(b.volume.name)), `secondary #${this.o.id}: group ${group}'s volumes are new here`);
    for (const b of bindings) this.volumes.set(b.volume.name, b);
    this.db.transaction(() => {
      this.loadGroup(group, primaries);
      // A turn brings volumes that were primaries: complete images.
      this.recordVolumes(bindings, true);
    })();
    if (!this.stopped) this.applier.kick();
  }

  /**
   * A turn makes this subsystem a primary of `group`: the group leaves this
   * engine. Only a group taken over leaves (its queue is applied up to Ts
   * or dropped, and no frame of it is taken any more); host writes to its
   * volumes in flight here finish first.
   */
  async removeGroup(group: string): Promise<void> {
    const g = this.groups.get(group);
    if (!g) return;
    assert(g.state === "takeover", `secondary #${this.o.id}: group ${group} leaves only once taken over (it is ${g.state})`);
    await this.receiver.flushCommits();
    if (this.hostWrites > 0) await new Promise<void>((r) => this.hostIdle.push(r));
    const left = (this.stmts.countAll.get(group) as { n: number }).n;
    assert(left === 0, `secondary #${this.o.id}: group ${group} leaves with ${left} queued RCRs`);
    const vols = [...this.volumes.values()].filter((b) => b.group === group);
    await Promise.all(vols.map((b) => b.volume.sync()));
    for (const b of vols) this.volumes.delete(b.volume.name);
    this.groups.delete(group);
  }

  /** Groups this engine serves. */
  groupNames(): string[] {
    return [...this.groups.keys()];
  }

  start(): void {
    // Redo: whatever was due before a crash is applied again, in order, once
    // the state it was loaded from is durable: a 112 raised by a commit a
    // power cut can still take back must not move a volume.
    void this.receiver.start().then(() => {
      if (!this.stopped) this.applier.kick();
    });
  }

  stop(): void {
    this.stopped = true;
    this.receiver.closeLinks();
    // An apply batch in flight may still read a payload: close once it is done.
    const close = () => {
      if (this.applier.busy || this.receiver.busy) return void this.o.runtime.setTimeout(close, 10);
      this.segments.close();
    };
    close();
  }

  /** A primary's authenticated link (role "link", nodeId = primary id). */
  attach(link: FrameLink, primaryId: number): void {
    this.receiver.attach(link, primaryId);
  }

  /** RCRs queued since start (resends not counted). */
  get received(): number {
    return this.receiver.received;
  }

  /** Resent RCRs dropped since start. */
  get duplicates(): number {
    return this.receiver.duplicates;
  }

  /** The last failure to write a secondary volume; the RCM suspends the group on it. */
  get applyError(): string | null {
    return this.applier.applyError;
  }

  // The RCM's procedure steps (procedure-steps.ts), each answered with the group's times.

  fence(name: string, generation: number, by: string, reason: string) {
    return steps.fence(this.stepContext, name, generation, by, reason);
  }

  preview(name: string, ts: bigint) {
    return steps.preview(this.stepContext, name, ts);
  }

  applySynchronizedTime(name: string, generation: number, ts: bigint) {
    return steps.applySynchronizedTime(this.stepContext, name, generation, ts);
  }

  resyncBegin(name: string, generation: number, reverse = false) {
    return steps.resyncBegin(this.stepContext, name, generation, reverse);
  }

  takeover(name: string, generation: number) {
    return steps.takeover(this.stepContext, name, generation);
  }

  /** Whether hosts may write this secondary volume now (after a takeover). */
  isWritable(volume: string): boolean {
    const b = this.volumes.get(volume);
    return !!b && this.groups.get(b.group)?.state === "takeover";
  }

  /** A host write to a taken-over secondary volume: bitmap first, then the volume. */
  async hostWrite(volume: string, offset: number, length: number, data: Buffer | null): Promise<void> {
    const b = this.volumes.get(volume)!;
    if (!this.isWritable(volume)) {
      throw Object.assign(new Error(`volume ${volume} is a secondary volume and read-only while its group is ${this.groups.get(b.group)?.state}`), {
        code: "EPERM",
      });
    }
    // The mark must be durable before the block changes: on a full state disk it cannot be.
    if (this.o.disk?.full) throw this.o.disk.refusal(volume);
    this.hostWrites++;
    try {
      await this.bitmap.mark(volume, offset, length);
      if (data) await b.volume.write(offset, data);
      else await b.volume.writeZeroes(offset, length);
    } finally {
      if (--this.hostWrites === 0) for (const w of this.hostIdle.splice(0)) w();
    }
  }

  hasVolume(name: string): boolean {
    return this.volumes.has(name);
  }

  /** Per secondary volume: the verify run it last compared (docs/verify.md). */
  verifyStatus() {
    return this.verify.status();
  }

  status() {
    return [...this.groups.values()].map((g) => {
      const all = this.stmts.countAll.get(g.name) as { n: number; b: number };
      const due = this.stmts.countDue.get(g.name, g.times.second) as { n: bigint; b: bigint; m: bigint | null };
      const dueN = Number(due.n);
      // Everything with ts <= appliedThrough is on the volumes.
      const appliedThrough = dueN === 0 ? g.times.second : due.m! - 1n;
      return {
        name: g.name,
        generation: g.generation,
        state: g.state,
        reason: g.reason,
        first: Object.fromEntries([...g.times.first].map(([p, t]) => [String(p), t.toString()])),
        second: g.times.second.toString(),
        rcrQueue: all.n - dueN,
        rcrQueueBytes: all.b - Number(due.b),
        diskQueue: dueN,
        diskQueueBytes: Number(due.b),
        applied: g.applied,
        appliedBytes: g.appliedBytes,
        lastAppliedTs: g.lastAppliedTs.toString(),
        appliedThrough: appliedThrough.toString(),
        synchronizedTs: g.synchronizedTs?.toString() ?? null,
        resync: g.times.hold ? { ...resyncReport(g), copiedFrom: [...g.times.hold.copied.keys()] } : null,
        applyError: this.applier.applyError,
        suspendedBy: g.suspendedBy,
        dropped: g.dropped,
        droppedBytes: g.droppedBytes,
        bitmapBlocks: [...this.volumes.values()].filter((b) => b.group === g.name).reduce((n, b) => n + this.bitmap.count(b.volume.name), 0),
        uncopiedVolumes: steps.uncopiedVolumes(this.stepContext, g.name),
        received: this.receiver.received,
        duplicates: this.receiver.duplicates,
        /** Links dropped because frames came while the state disk was full (disk-guard.ts). */
        linksDroppedDiskFull: this.receiver.refusedWhileFull,
        links: this.receiver.linkIds(),
      };
    });
  }
}

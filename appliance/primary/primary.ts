// The primary role of a subsystem: the replicated write path behind each
// primary volume's NBD export (range lock, stamp, journal, volume write,
// acknowledgement), one LinkSender per secondary subsystem of its groups,
// the periodic SYNC of DESIGN.md step 3, and the journal trim that runs once
// entries are acknowledged and their volume writes are durable.
import type { Logger } from "pino";
import { VolumeError, type Volume } from "../../disks/volume.ts";
import type { Db } from "../state/database.ts";
import { assert } from "../invariant.ts";
import { tmError } from "../errors/codes.ts";
import { describeWireError, WIRE_ERROR } from "../replication/frames.ts";
import { refusalReason, refusedGroups, staleRefusal, type Refusal } from "./refusal.ts";
import { ACTIVITY_REGION_BYTES, Journal, OP_VERIFY, OP_WRITE, OP_ZERO, type JournalEntry } from "./journal.ts";
import { LinkSender } from "./sender.ts";
import { ActivityLog } from "./activity-log.ts";
import { PendingRcrs, syncTime } from "./pending.ts";
import { RangeLock } from "./range-lock.ts";
import { StampClock } from "./stamp-clock.ts";
import { BitmapWriter } from "../state/bitmap-writer.ts";
import { COPY_JOURNAL_BYTES, COPY_RUN_BYTES, COPY_STARVED_MS, COPY_ZERO_RUN_BYTES, Copier, type CopierHost, type CopyProgress } from "../resync/copier.ts";
import { Verifier, type VerifierHost, type VerifyRequest } from "../resync/verifier.ts";
import type { VerifyEvents } from "../resync/verify-events.ts";
import type { StateStore } from "../state/store.ts";
import { DISK_RECHECK_MS, diskFullCause, failedFile, stateFileName, type DiskGuard } from "../state/disk-guard.ts";
import type { LinkConnector } from "../replication/frame-link.ts";
import type { Runtime, TimerHandle } from "../runtime/runtime.ts";
import type { NegativeControls } from "../runtime/controls.ts";
import { SEGMENT_BYTES } from "../state/payload-segments.ts";
import {
  hostsMayWrite,
  primaryGroupIgnores,
  primaryGroupTransition,
  primaryResyncEvent,
  replicating,
  type PrimaryGroupEvent,
  type PrimaryGroupState,
} from "./group-state.ts";

export type { PrimaryGroupState } from "./group-state.ts";

/** The events that stop a group's replication (PrimaryEngine.suspend). */
type SuspendEvent = Extract<PrimaryGroupEvent, "primary-suspend" | "primary-takeover" | "journal-full" | "ack-regressed" | "refused">;

interface GroupState {
  state: PrimaryGroupState;
  generation: number;
  reason: string | null;
  by: string | null;
  /** Replicated writes and copies of the group between stamping and volume write (or journal commit). */
  inflight: number;
  idle: (() => void)[];
  /** Unreplicated host writes (suspended group) between their bitmap mark and volume write. */
  unreplicated: number;
  unreplicatedIdle: (() => void)[];
  /**
   * A suspension between its state change and the durable removal of the
   * group's journal entries: an unreplicated write waits for it, or a
   * kill -9 in that window would leave older entries the restart replays
   * over the write it acknowledged (seed 505352).
   */
  leaving: Promise<void> | null;
  /**
   * A suspension that hosts see already but whose record is not durable: its
   * leave() is running, or it failed (a full state disk, a kill). The state
   * file still holds the state before it, which is what a restart or a turn
   * reads, so status says so and every procedure treats the group as not
   * there yet; a rerun of the step (primary-takeover) records it.
   */
  unrecorded: boolean;
  /** C_k of the last completed copy: sent as COPIED while the group replicates. */
  copiedTs: bigint | null;
  /** The stamp the group was frozen at for a swap (persisted; cleared by the next resync). */
  frozenTs: bigint | null;
  copy: CopyProgress | null;
}

/**
 * A swap's freeze stamp, from the freeze until the next resync or turn clears
 * it. A primary a suspension thawed shows it too: a swap's rerun must know that
 * the freeze was its own to refuse turning a group hosts may have written since
 * (finding 21).
 */
function frozenTsShown(gs: GroupState, hideThawed: boolean): string | null {
  if (gs.frozenTs === null) return null;
  return !hideThawed || gs.state === "frozen" || gs.state === "taken-over" ? gs.frozenTs.toString() : null;
}


export const BLOCK_BYTES = 4096;
/**
 * Above this many journal bytes, new host writes wait for trims while every
 * link of their group is up: a host must not outrun replication until the
 * journal cap suspends the group. With a link down nothing waits (the cap
 * decides), so a dead secondary never freezes the hosts.
 */
const JOURNAL_BACKPRESSURE_BYTES = 256 * 1024 * 1024;
/** Host writes up to this size are written to the volume synchronously. */
const SYNC_WRITE_BYTES_MAX = 64 * 1024;

/**
 * Sizes a deployment never changes but a simulation scales down, so that a
 * 16-block volume still has several activity regions and several copy runs,
 * and a copier waits for the journal to drain as one on a busy 256 MiB volume
 * does (docs/simulation.md). Each defaults to the constant above.
 */
export interface PrimaryTuning {
  activityRegionBytes: number;
  copyRunBytes: number;
  copyZeroRunBytes: number;
  copyJournalBytes: number;
  /** How long one copy run waits for the journal to drain before it goes anyway. */
  copyStarvedMs: number;
  /** Payload segments of the journal and of the RCR queue (both roles), so that they roll over and go within a short history. */
  segmentBytes: number;
}

export const DEFAULT_TUNING: PrimaryTuning = {
  activityRegionBytes: ACTIVITY_REGION_BYTES,
  copyRunBytes: COPY_RUN_BYTES,
  copyZeroRunBytes: COPY_ZERO_RUN_BYTES,
  copyJournalBytes: COPY_JOURNAL_BYTES,
  copyStarvedMs: COPY_STARVED_MS,
  segmentBytes: SEGMENT_BYTES,
};

export interface PrimaryBinding {
  volume: Volume;
  group: string;
  /** Secondary subsystem id. */
  link: number;
  /** Secondary volume name. */
  target: string;
}

/**
 * What a simulation watches of the write path. Called synchronously at the
 * moment named; never changes what the engine does.
 */
export interface PrimaryProbe {
  /** A host write or a copy got its stamp and seq (the same synchronous step registers it pending). */
  stamped?(e: { primary: number; group: string; volume: string; offset: number; length: number; ts: bigint; seq: number; copy: boolean; data: Buffer | null }): void;
  /** A suspension changed the group's state and is removing its journal entries (the simulation may kill the process then). */
  leaving?(e: { primary: number; group: string }): void;
}

export interface PrimaryOptions {
  /** Where the verifier reports start, progress and end (docs/verify.md, Events). */
  verifyEvents?: VerifyEvents;
  id: number;
  store: StateStore;
  logger: Logger;
  runtime: Runtime;
  /** The stamp clock's reading in ns (clock-source.ts, or the simulator's clocks). */
  clockNs: () => bigint;
  /** Opens the replication link to a secondary subsystem. */
  connect: LinkConnector;
  probe?: PrimaryProbe;
  controls?: NegativeControls;
  tuning?: Partial<PrimaryTuning>;
  maxClockOffsetMs: number;
  syncIntervalMs: number;
  reconnectMs: number;
  linkTimeoutMs: number;
  inflightBytesMax: number;
  journalBytesMax: number;
  /** The state disk (disk-guard.ts): while it is full, host writes are refused with ENOSPC. The simulation has none. */
  disk?: DiskGuard;
  /**
   * The subsystem's one bitmap writer, shared with its secondary engine: a
   * group a turn moves between the engines keeps one cache of its marks, so
   * the copier never misses a block the other role marked (finding 11).
   */
  bitmap?: BitmapWriter;
  bindings: PrimaryBinding[];
  /** Per group: every secondary subsystem of the group (SYNC goes to each). */
  groupSecondaries: Map<string, number[]>;
  generationOf: (group: string) => number;
  /** True after a reboot without a clean stop: hot regions may be torn. */
  powerLossSuspected: boolean;
}


interface BindingState extends PrimaryBinding {
  lock: RangeLock;
  dirty: boolean;
}

export class PrimaryEngine {
  private readonly journal: Journal;
  private readonly pending = new PendingRcrs();
  private readonly clock: StampClock;
  private seq: number;
  private readonly senders = new Map<number, LinkSender>();
  private readonly bindings = new Map<string, BindingState>();
  /** Seqs whose volume write has not completed. */
  private readonly writing = new Set<number>();
  private readonly activity: ActivityLog;
  private persistedFloor: bigint;
  private timers: TimerHandle[] = [];
  private trimming = false;
  private readonly trimmedSeq = new Map<number, number>();
  private readonly offsetNs: bigint;
  readonly lastSync = new Map<string, bigint>();
  private readonly groups = new Map<string, GroupState>();
  private readonly bitmap: BitmapWriter;
  private trimWaiters: (() => void)[] = [];
  /** Host writes that waited for the journal to drain (status). */
  throttled = 0;
  writes = 0;
  writeBytes = 0;
  private stopped = false;
  private readonly copier: Copier;
  private readonly verifier: Verifier;
  /** The last seq issued per link (seqs are per primary, acks per link). */
  private readonly issuedOn = new Map<number, number>();
  /**
   * Primary volumes whose write or fdatasync failed (EIO): what the volume
   * holds can no longer be trusted, so hosts get EIO for every read and
   * write of it until the subsystem restarts, and status names it (the RCM
   * suspends the group on it). In memory: a restart tries the volume again.
   */
  private readonly failedVolumes = new Map<string, string>();
  /**
   * Journal entries whose volume write failed for a full disk and whose
   * bitmap mark could not be recorded either: their seqs stay in `writing`,
   * so no trim drops them (a restart's replay writes them onto the volume),
   * and the suspension that follows a full disk marks their blocks.
   */
  private readonly unwritten = new Map<number, { group: string; volume: string; offset: number; length: number }>();

  private readonly db: Db;
  private readonly tuning: PrimaryTuning;
  /** Per group: its secondary subsystems. A turn adds and removes groups while the engine runs. */
  private readonly groupSecondaries: Map<string, number[]>;

  constructor(private readonly o: PrimaryOptions) {
    this.db = o.store.db;
    this.tuning = { ...DEFAULT_TUNING, ...o.tuning };
    assert(this.tuning.copyRunBytes <= COPY_RUN_BYTES && this.tuning.copyRunBytes % BLOCK_BYTES === 0, "copy runs are whole blocks, at most COPY_RUN_BYTES");
    this.journal = new Journal(o.store, o.runtime, this.tuning.activityRegionBytes, o.disk, o.controls, this.tuning.segmentBytes);
    const { tsFloor, seqFloor } = this.journal.floorsNow();
    this.clock = new StampClock(o.clockNs, tsFloor);
    this.persistedFloor = tsFloor;
    this.seq = seqFloor;
    this.offsetNs = BigInt(Math.round(o.maxClockOffsetMs * 1e6));
    this.groupSecondaries = new Map(o.groupSecondaries);
    for (const b of o.bindings) this.bindings.set(b.volume.name, { ...b, lock: new RangeLock(), dirty: false });
    this.journal.onCommit = () => {
      for (const s of this.senders.values()) s.wake();
    };
    this.bitmap = o.bitmap ?? new BitmapWriter(this.db, o.runtime, o.disk);
    this.activity = new ActivityLog({ db: this.db, journal: this.journal, runtime: o.runtime, logger: o.logger, regionBytes: this.tuning.activityRegionBytes, bitmap: this.bitmap });
    this.recordPairs([...this.groupSecondaries.keys()], o.bindings);
    this.copier = new Copier(this.copierHost());
    this.verifier = new Verifier(this.verifierHost());
    o.disk?.onFull((full) => {
      if (!this.stopped) this.diskFull(full.reason);
    });
    for (const g of this.groupSecondaries.keys()) this.loadGroup(g);
  }

  private loadGroup(g: string): void {
    const r = this.db.prepare("SELECT state, generation, reason, suspended_by, copied_ts, frozen_ts FROM grp WHERE name = ?").safeIntegers(true).get(g) as {
      state: string;
      generation: bigint;
      reason: string | null;
      suspended_by: string | null;
      copied_ts: bigint | null;
      frozen_ts: bigint | null;
    };
    this.groups.set(g, {
      state: r.state as PrimaryGroupState,
      generation: Number(r.generation),
      reason: r.reason,
      by: r.suspended_by,
      inflight: 0,
      idle: [],
      unreplicated: 0,
      unreplicatedIdle: [],
      leaving: null,
      unrecorded: false,
      copiedTs: r.copied_ts,
      frozenTs: r.frozen_ts,
      copy: null,
    });
  }

  /**
   * A group's first start is an initial copy of every volume; a pair new to
   * a group that replicates already gets a cursor its next resync copies
   * (docs/resync.md, Initial copy). Pairs of a state file older than the
   * pair table are taken as known.
   */
  private recordPairs(groups: readonly string[], bindings: readonly PrimaryBinding[]): void {
    const db = this.db;
    const unrecorded = db.prepare("SELECT 1 FROM meta WHERE key = 'pairs_unrecorded'").get() !== undefined;
    const known = db.prepare("SELECT target FROM pair WHERE volume = ?").pluck(true);
    const addPair = db.prepare("INSERT INTO pair (volume, target) VALUES (?, ?) ON CONFLICT(volume) DO UPDATE SET target = excluded.target");
    const addCursor = db.prepare("INSERT OR IGNORE INTO copy_cursor (volume, next_off) VALUES (?, 0)");
    db.transaction(() => {
      for (const g of groups) {
        db.prepare("INSERT OR IGNORE INTO grp (name) VALUES (?)").run(g);
        const fresh = (db.prepare("SELECT initialized FROM grp WHERE name = ?").get(g) as { initialized: number }).initialized === 0;
        if (fresh) db.prepare("UPDATE grp SET initialized = 1, state = ? WHERE name = ?").run(primaryGroupTransition("uninitialized", "first-start"), g);
      }
      for (const b of bindings) {
        // A volume paired with another secondary volume than before is a new pair too.
        if (known.get(b.volume.name) === b.target) continue;
        addPair.run(b.volume.name, b.target);
        if (!unrecorded) {
          addCursor.run(b.volume.name);
          this.o.logger.info({ volume: b.volume.name, target: b.target, group: b.group }, "new pair: its volume is copied whole (initial copy)");
        }
      }
      db.prepare("DELETE FROM meta WHERE key = 'pairs_unrecorded'").run();
    })();
  }

  groupState(group: string): PrimaryGroupState {
    return this.groups.get(group)?.state ?? "active";
  }

  /**
   * Every change of a group's state goes through here: the next state is the
   * table's (group-state.ts), a refusal throws its code with the message
   * `refusal` gives. Null when the table ignores the event in this state.
   */
  private transition(gs: GroupState, event: PrimaryGroupEvent, refusal?: (code: string) => string): PrimaryGroupState | null {
    // The negative control restores issue 17's race 2, outside the table.
    if (this.o.controls?.refusalFencesFrozen && event === "refused" && (gs.state === "frozen" || gs.state === "copying")) return (gs.state = "fenced");
    const next = primaryGroupTransition(gs.state, event, refusal);
    if (next !== null) gs.state = next;
    return next;
  }

  /**
   * Drops the links to `group`'s secondaries; they reconnect and resend from
   * the last ack. A link that carries only other groups is left alone: the
   * drill's two-group turn saw it drop for nothing (issue 17).
   */
  private restartLinksOf(group: string): void {
    for (const id of this.groupSecondaries.get(group) ?? []) this.senders.get(id)?.restart();
  }

  /** Hosts may write a primary volume unless its group was taken over. */
  // (copying replicates like active; suspended and fenced write to the bitmap.)
  isWritable(volume: string): boolean {
    const b = this.bindings.get(volume);
    return !!b && hostsMayWrite(this.groupState(b.group));
  }

  /** Replays the journal onto the volumes, then starts the links and timers. */
  async start(): Promise<void> {
    const { o } = this;
    let replayed = 0;
    for (const e of this.journal.replay()) {
      const b = this.bindings.get(e.volume);
      if (!b) {
        o.logger.error({ volume: e.volume, seq: e.seq }, "journal entry for a volume that is no longer a primary here; kept");
        continue;
      }
      // A copy too (finding 22): it holds what the copier read, under the range
      // lock, and that may have been a host write not yet durable, which a power
      // cut took back while the copy's row survived and streams on. Written back,
      // it undoes nothing: every later write to its blocks has a later seq and
      // replays after it, and a suspension removes the group's rows before it
      // lets an unjournaled write in (finding 17).
      if (e.op !== OP_VERIFY && (!e.copy || !o.controls?.copiesNotReplayed)) {
        if (e.op === OP_WRITE) await b.volume.write(e.offset, e.data!);
        else await b.volume.writeZeroes(e.offset, e.length);
        b.dirty = true;
      }
      this.pending.add(e.group, e.link, e.seq, e.ts);
      this.issuedOn.set(e.link, Math.max(e.seq, this.issuedOn.get(e.link) ?? 0));
      this.activity.note(b.volume.name, b.link, e.offset, e.length, e.seq);
      if (e.seq > this.seq) this.seq = e.seq;
      replayed++;
    }
    for (const b of this.bindings.values()) if (b.dirty) await b.volume.sync();
    if (replayed > 0) o.logger.info({ entries: replayed }, "journal replayed onto primary volumes");
    if (o.powerLossSuspected && !o.controls?.noActivityLog) this.activity.markHotRegionsDirty();
    // A torn entry (a power cut) is not replayed or resent: its blocks differ from the secondary's until a resync copies them.
    let tornBlocks = 0;
    const torn = this.journal.dropTornRows((volume, offset, length) => {
      if (this.bindings.has(volume)) tornBlocks += this.bitmap.markNow(volume, offset, length);
    });
    // Entries replayed from a killed incarnation's last commit may be pages no
    // fdatasync covered: they are about to be sent, and a power cut must not
    // take back (and hand out again) seqs a secondary has acknowledged.
    this.journal.barrier();
    if (torn > 0) {
      o.logger.warn({ entries: torn, bitmapBlocks: tornBlocks }, "journal entries torn by a power cut: their blocks are in the bitmap for resync");
    }

    for (const secs of this.groupSecondaries.values()) for (const s of secs) this.startSender(s);
    this.timers.push(o.runtime.setInterval(() => this.announce(), o.syncIntervalMs));
    this.timers.push(o.runtime.setInterval(() => void this.trim(), Math.max(20, o.syncIntervalMs)));
    for (const [g, gs] of this.groups) if (gs.state === "copying") this.copier.start(g);
    this.verifier.resumeAll();
  }

  /** One LinkSender per secondary subsystem of any group here. */
  private startSender(id: number): void {
    const o = this.o;
    if (this.senders.has(id)) return;
    const sender = new LinkSender({
      primaryId: o.id,
      secondaryId: id,
      connect: o.connect,
      runtime: o.runtime,
      reconnectMs: o.reconnectMs,
      linkTimeoutMs: o.linkTimeoutMs,
      inflightBytesMax: o.inflightBytesMax,
      journal: this.journal,
      // The group's generation changes at suspensions and resyncs: frames carry the current one.
      generationOf: (g) => this.groups.get(g)?.generation ?? o.generationOf(g),
      logger: o.logger,
      onAck: (link, seq) => this.pending.ackUpTo(link, seq),
      onRefused: (link, refusal) => this.onRefused(link, refusal),
      // The negative control restores the old sender too, which ignored a lower ack.
      onAckRegressed: o.controls?.ackBeforeDurable ? null : (link, had, got) => this.onAckRegressed(link, had, got),
      highestSeq: () => this.seq,
    });
    this.senders.set(id, sender);
    sender.start();
  }

  /**
   * A turn made this subsystem a primary of `group` (issue 17, race 1): its
   * volumes, state and links join this running engine. The other groups'
   * write paths, links and journal entries are not touched.
   */
  addGroup(group: string, bindings: readonly PrimaryBinding[], secondaries: readonly number[]): void {
    assert(!this.groups.has(group), `primary #${this.o.id}: group ${group} is here already`);
    assert(bindings.every((b) => b.group === group && !this.bindings.has(b.volume.name)), `primary #${this.o.id}: group ${group}'s volumes are new here`);
    this.recordPairs([group], bindings);
    for (const b of bindings) this.bindings.set(b.volume.name, { ...b, lock: new RangeLock(), dirty: false });
    this.groupSecondaries.set(group, [...secondaries]);
    this.loadGroup(group);
    if (!this.stopped) for (const s of secondaries) this.startSender(s);
  }

  /**
   * A turn makes this subsystem a secondary of `group`: the group leaves
   * this engine. Only a group that was taken over leaves: its journal
   * entries are bitmap blocks already and hosts may not write it.
   */
  async removeGroup(group: string): Promise<void> {
    const gs = this.groups.get(group);
    if (!gs) return;
    assert(!hostsMayWrite(gs.state) && !replicating(gs.state), `primary #${this.o.id}: group ${group} leaves only once taken over (it is ${gs.state})`);
    if (gs.inflight > 0) await new Promise<void>((r) => gs.idle.push(r));
    const left = this.db.prepare("SELECT count(*) FROM journal WHERE grp = ?").pluck(true).get(group) as number;
    assert(left === 0, `primary #${this.o.id}: group ${group} leaves with ${left} journal entries`);
    const vols = [...this.bindings.values()].filter((b) => b.group === group);
    await Promise.all(vols.map((b) => b.volume.sync()));
    for (const b of vols) this.bindings.delete(b.volume.name);
    this.groups.delete(group);
    this.groupSecondaries.delete(group);
    this.lastSync.delete(group);
    this.pending.dropGroup(group);
    // A link no other group uses goes: nothing of this engine travels on it any more.
    const used = new Set([...this.groupSecondaries.values()].flat());
    for (const [id, sender] of this.senders) {
      if (used.has(id)) continue;
      sender.stop();
      this.senders.delete(id);
    }
  }

  /** New stamps stay above `ts`, in this process and (durably) after a restart. */
  raiseStampFloor(ts: bigint): void {
    this.clock.raiseFloor(ts);
    this.journal.raiseTsFloor(ts);
  }

  /** Groups this engine serves. */
  groupNames(): string[] {
    return [...this.groups.keys()];
  }

  async stop(): Promise<void> {
    this.stopped = true;
    for (const t of this.timers) this.o.runtime.clearInterval(t);
    this.timers = [];
    for (const s of this.senders.values()) s.stop();
    await this.trim();
    this.journal.segments.close();
  }

  hasVolume(name: string): boolean {
    return this.bindings.has(name);
  }

  /** A replicated host write: WRITE, or TRIM/WRITE_ZEROES (sent as zeroes). */
  async write(volume: string, offset: number, length: number, data: Buffer | null, fua: boolean): Promise<void> {
    const b = this.bindings.get(volume);
    assert(b, `volume ${volume} is a primary here`);
    const gs = this.groups.get(b.group)!;
    const refuse = () => {
      const why = gs.state === "frozen" ? "is being swapped to its secondaries" : "was taken over by its secondaries";
      return Object.assign(new Error(`volume ${volume}: group ${b.group} ${why}; this primary is read-only`), { code: "EPERM" });
    };
    if (!hostsMayWrite(gs.state)) throw refuse();
    if (this.failedVolumes.has(volume)) throw this.failedVolumeError(b);
    // Nothing is stamped, journaled or marked that the state disk may not take:
    // the host hears ENOSPC now rather than an acknowledgement not backed by a record.
    if (this.o.disk?.full) throw this.o.disk.refusal(volume);
    if (!replicating(gs.state)) return this.writeUnreplicated(b, offset, length, data, fua);
    await this.admit(b.group);
    const release = await b.lock.acquire(offset, length);
    // The state may have changed while this write waited for the lock.
    if (!hostsMayWrite(gs.state)) {
      release();
      throw refuse();
    }
    if (!replicating(gs.state)) {
      // Suspended while waiting for the lock: this write is not replicated.
      release();
      return this.writeUnreplicated(b, offset, length, data, fua);
    }
    gs.inflight++;
    let ts: bigint;
    try {
      const issued = this.issue(b, offset, length, data, false);
      ts = issued.ts;
      const seq = issued.seq;
      this.writing.add(seq);
      this.activity.note(b.volume.name, b.link, offset, length, seq);
      try {
        await issued.journaled;
        if (this.journal.bytes > this.o.journalBytesMax) this.journalFull(b.group);
        // Small writes go to the page cache on this thread (a few us) rather
        // than through the thread pool (tens of us each); large ones stay async.
        try {
          if (data && data.length <= SYNC_WRITE_BYTES_MAX) b.volume.writeSync(offset, data);
          else if (data) await b.volume.write(offset, data);
          else await b.volume.writeZeroes(offset, length);
        } catch (err) {
          const failed = await this.volumeWriteFailed(b, err, seq, offset, length, data);
          if (failed) throw failed;
        }
        b.dirty = true;
      } finally {
        // An entry whose volume write is owed stays in `writing`: no trim drops it (see unwritten).
        if (!this.unwritten.has(seq)) this.writing.delete(seq);
      }
    } finally {
      release();
      if (--gs.inflight === 0) for (const w of gs.idle.splice(0)) w();
    }
    this.writes++;
    this.writeBytes += length;
    if (fua) await this.flush(volume);
    await this.commitWait(ts);
  }

  /**
   * The stamping step of a host write or a copy: stamp, seq, pending and the
   * journal append are one synchronous step, so no SYNC can announce a time
   * above a stamp not yet pending, and entries reach the journal in seq
   * order (the sender's cumulative acks rely on it).
   */
  private issue(b: BindingState, offset: number, length: number, data: Buffer | null, copy: boolean, verify = false): { ts: bigint; seq: number; journaled: Promise<void> } {
    const ts = this.clock.stamp();
    const seq = ++this.seq;
    this.pending.add(b.group, b.link, seq, ts);
    this.o.probe?.stamped?.({ primary: this.o.id, group: b.group, volume: b.volume.name, offset, length, ts, seq, copy, data });
    this.issuedOn.set(b.link, seq);
    const op = verify ? OP_VERIFY : data ? OP_WRITE : OP_ZERO;
    const entry: JournalEntry = { seq, ts, group: b.group, link: b.link, volume: b.volume.name, target: b.target, op, offset, length, data };
    // A verify record, like a copy, was read from the volume: no region turns hot, replay writes nothing back.
    if (copy || verify) entry.copy = true;
    const journaled = this.journal.append(entry).catch((err: unknown) => {
      this.pending.cancel(b.group, b.link, seq);
      // A seq that never reached the journal is never acknowledged: a copier
      // waiting for the link's last issued seq (Copier, "acknowledging") would
      // wait for it forever after a commit failed on a full disk.
      if (this.issuedOn.get(b.link) === seq) this.issuedOn.set(b.link, this.journal.highestOn(b.link));
      throw err;
    });
    return { ts, seq, journaled };
  }

  /** What the verifier (appliance/resync/verifier.ts) may use of this engine. */
  private verifierHost(): VerifierHost {
    const o = this.o;
    return {
      id: o.id,
      db: this.db,
      journal: this.journal,
      runtime: o.runtime,
      logger: o.logger,
      events: o.verifyEvents,
      group: (name) => this.groups.get(name),
      bindingsOf: (group) => [...this.bindings.values()].filter((b) => b.group === group),
      stopped: () => this.stopped,
      stampNow: () => this.clock.stamp(),
      journalVerify: (b, offset, length, data) => {
        const issued = this.issue(this.bindings.get(b.volume.name)!, offset, length, data, false, true);
        return { ts: issued.ts, journaled: issued.journaled };
      },
      trimmed: () =>
        new Promise<void>((r) => {
          this.trimWaiters.push(r);
          o.runtime.setTimeout(r, 50);
        }),
    };
  }

  /** Starts an online verify of a group's volumes here (docs/verify.md). */
  verifyStart(req: VerifyRequest) {
    return this.verifier.start(req);
  }

  /** Per volume of the group: its verify run, if any. */
  verifyStatus(group: string) {
    return this.verifier.status(group);
  }

  /** Bytes hashed and VERIFY records journaled since start (metrics). */
  verifyCounters(): { hashedBytes: number; records: number } {
    return { hashedBytes: this.verifier.hashedBytes, records: this.verifier.records };
  }

  /** What the copier (appliance/resync/copier.ts) may use of this engine. */
  private copierHost(): CopierHost {
    const o = this.o;
    return {
      id: o.id,
      db: this.db,
      journal: this.journal,
      bitmap: this.bitmap,
      runtime: o.runtime,
      logger: o.logger,
      tuning: this.tuning,
      journalBytesMax: o.journalBytesMax,
      syncIntervalMs: o.syncIntervalMs,
      controls: o.controls,
      group: (name) => this.groups.get(name)!,
      bindingsOf: (group) => [...this.bindings.values()].filter((b) => b.group === group),
      stopped: () => this.stopped,
      trimmed: () =>
        new Promise<void>((r) => {
          this.trimWaiters.push(r);
          o.runtime.setTimeout(r, 50);
        }),
      journalCopy: (b, offset, length, data) => this.issue(this.bindings.get(b.volume.name)!, offset, length, data, true).journaled,
      issuedOn: (link) => this.issuedOn.get(link) ?? 0,
      ackedOn: (link) => this.senders.get(link)?.ackedSeq ?? 0,
      awaitedUpTo: (link, upTo) => {
        const low = this.pending.lowestOn(link);
        return low !== null && low <= upTo;
      },
      lastSeq: () => this.seq,
      copied: (group) => this.copied(group),
    };
  }

  /** Every copy of the group's resync is acknowledged: C_k, durably, then active. */
  private copied(group: string): void {
    const gs = this.groups.get(group)!;
    // Decided before the row is written, changed here once it is durable.
    const next = primaryGroupTransition(gs.state, "copy-acknowledged");
    assert(next !== null, `primary #${this.o.id} group ${group}: a copy acknowledged while copying moves the group`);
    const c = this.clock.stamp();
    this.db.prepare("UPDATE grp SET state = ?, copied_ts = ?, changed_at_ms = ? WHERE name = ?").run(next, c, this.o.runtime.nowMs(), group);
    this.journal.barrier();
    this.transition(gs, "copy-acknowledged");
    gs.copiedTs = c;
    const p = gs.copy!;
    this.o.logger.info(
      { group, copiedTs: c.toString(), blocks: p.doneBlocks, dataBytes: p.dataBytes, zeroBytes: p.zeroBytes, ms: this.o.runtime.nowMs() - p.startedAtMs },
      "copy complete and acknowledged: COPIED goes to every secondary",
    );
  }

  private async admit(group: string): Promise<void> {
    const high = Math.min(JOURNAL_BACKPRESSURE_BYTES, this.o.journalBytesMax / 2);
    if (this.journal.bytes <= high) return;
    this.throttled++;
    const until = this.o.runtime.nowMs() + this.o.linkTimeoutMs;
    const secs = this.groupSecondaries.get(group) ?? [];
    while (this.journal.bytes > high && this.o.runtime.nowMs() < until && secs.every((s) => this.senders.get(s)?.state === "up")) {
      await new Promise<void>((r) => {
        this.trimWaiters.push(r);
        this.o.runtime.setTimeout(r, 50);
      });
    }
  }

  /** While the group is suspended: the block goes to the bitmap before it reaches the volume. */
  private async writeUnreplicated(b: BindingState, offset: number, length: number, data: Buffer | null, fua: boolean): Promise<void> {
    const gs = this.groups.get(b.group)!;
    // Counted before the first await: a resync waits for these before it reads the bitmap.
    gs.unreplicated++;
    let release: (() => void) | null = null;
    try {
      if (!this.o.controls?.unreplicatedDuringSuspension) while (gs.leaving) await gs.leaving;
      release = await b.lock.acquire(offset, length);
      await this.bitmap.mark(b.volume.name, offset, length);
      try {
        if (data) await b.volume.write(offset, data);
        else await b.volume.writeZeroes(offset, length);
      } catch (err) {
        // The blocks are marked already: a resync copies whatever the volume holds.
        throw diskFullCause(err) ? (this.o.disk?.failed(err, b.volume.path) ?? err) : this.volumeFailed(b, err, "write");
      }
      b.dirty = true;
    } finally {
      release?.();
      this.unreplicatedDone(gs);
    }
    this.writes++;
    this.writeBytes += length;
    if (fua) await this.flush(b.volume.name);
  }

  private unreplicatedDone(gs: GroupState): void {
    if (--gs.unreplicated === 0) for (const w of gs.unreplicatedIdle.splice(0)) w();
  }

  /**
   * Stops replicating a group (RCM suspension, fencing by a secondary, or a
   * full journal): new writes go to the bitmap; every journal entry of the
   * group not yet acknowledged becomes bitmap blocks once its volume write is
   * durable, and the group's entries leave the journal.
   */
  async suspend(group: string, event: SuspendEvent, reason: string, by: string, generation?: number): Promise<void> {
    const gs = this.groups.get(group);
    if (!gs) throw tmError("TM_NO_GROUP", `subsystem #${this.o.id} is no primary of group '${group}'`, { group, subsystem: this.o.id });
    const was = gs.state;
    // Taken over stays so until a resync (group-state.ts). The callers of the
    // internal events check the table first, in this same step.
    if (this.transition(gs, event) === null) return;
    gs.unrecorded = true;
    if (generation !== undefined && generation > gs.generation) gs.generation = generation;
    if (replicating(was) || gs.reason === null) {
      gs.reason = reason;
      gs.by = by;
    }
    let left = (): void => {};
    const leaving = new Promise<void>((r) => (left = r));
    gs.leaving = leaving;
    this.o.probe?.leaving?.({ primary: this.o.id, group });
    try {
      await this.leave(gs, group, was);
    } finally {
      if (gs.leaving === leaving) gs.leaving = null;
      left();
    }
  }

  /** suspend(), once the group's state has changed: its journal entries become bitmap blocks, durably. */
  private async leave(gs: GroupState, group: string, was: PrimaryGroupState): Promise<void> {
    if (gs.inflight > 0) await new Promise<void>((r) => gs.idle.push(r));
    const vols = [...this.bindings.values()].filter((b) => b.group === group);
    // A volume that fails its sync is marked failed; the suspension still goes on.
    await Promise.all(vols.map((b) => this.syncVolume(b, false)));
    // A verify record wrote nothing: it leaves no block that differs.
    const rows = this.db.prepare(`SELECT seq, link, volume, off, len FROM journal WHERE grp = ? AND op != ${OP_VERIFY}`).all(group) as {
      seq: number;
      link: number;
      volume: string;
      off: number;
      len: number;
    }[];
    let blocks = 0;
    try {
      this.db.transaction(() => {
        for (const r of rows) {
          // Unacknowledged, or acknowledged but never written to the volume (unwritten): the two sides differ there.
          if (r.seq > (this.senders.get(r.link)?.ackedSeq ?? 0) || this.unwritten.has(r.seq)) blocks += this.bitmap.markNow(r.volume, r.off, r.len);
        }
        this.db.prepare("DELETE FROM journal WHERE grp = ?").run(group);
        this.db
          .prepare("UPDATE grp SET state = ?, generation = ?, reason = ?, suspended_by = ?, changed_at_ms = ? WHERE name = ?")
          .run(gs.state, gs.generation, gs.reason, gs.by, this.o.runtime.nowMs(), group);
      })();
      // The group's entries are gone: its links must not send them from memory.
      this.journal.forgetFresh();
      // The bitmap now stands for the journal entries it replaced: durable before they are gone for good.
      this.journal.barrier();
      // The row holds the state as it is now (read in the transaction, in this same step).
      gs.unrecorded = false;
    } catch (err) {
      this.bitmap.reset();
      throw err;
    }
    for (const [seq, u] of this.unwritten) {
      if (u.group !== group) continue;
      this.unwritten.delete(seq);
      this.writing.delete(seq);
    }
    this.pending.dropGroup(group);
    this.journal.recount();
    this.journal.collectSegments();
    this.lastSync.delete(group);
    // The links' in-flight accounting counted entries that are gone: start them afresh.
    // Only this group's links carried them; a link only other groups use stays up.
    this.restartLinksOf(group);
    if (was !== gs.state) {
      this.o.logger.warn({ group, from: was, to: gs.state, reason: gs.reason, by: gs.by, generation: gs.generation, bitmapBlocks: blocks }, "group no longer replicated");
    }
  }

  /**
   * The journal's disk is full: every group that replicates stops, as at the
   * journal cap, so its entries become bitmap blocks and their segments are
   * freed (a journal grown by a slow secondary is the usual hog). The
   * suspension's own writes use the room the guard's reserve left; if even
   * they fail, the group stays suspended in memory (host writes are refused
   * meanwhile) and its record is tried again each DISK_RECHECK_MS.
   */
  private diskFull(reason: string): void {
    for (const [group, gs] of this.groups) {
      if (primaryGroupIgnores(gs.state, "journal-full")) continue;
      this.o.logger.error({ group, reason }, "state disk full: suspending the group");
      this.suspendUntilRecorded(group, reason);
    }
  }

  private suspendUntilRecorded(group: string, reason: string, event: SuspendEvent = "journal-full"): void {
    const gs = this.groups.get(group);
    // Gone (a turn), or replicating again (a resync came meanwhile): nothing left to record.
    if (!gs || (event === "primary-suspend" && replicating(gs.state))) return;
    this.suspend(group, event, reason, `primary #${this.o.id}`).catch((err) => {
      if (this.stopped) return;
      // An I/O error on the state file stops the process (disk-guard.ts); a full disk is retried.
      this.o.disk?.failed(err, stateFileName(this.db.name));
      this.o.logger.error({ group, err: (err as Error).message }, "the group's suspension could not be recorded; trying again");
      // Once suspended in memory the table ignores journal-full: the retry records it as the primary's own suspension.
      this.o.runtime.setTimeout(() => this.suspendUntilRecorded(group, reason, "primary-suspend"), DISK_RECHECK_MS);
    });
  }

  /**
   * The journal outgrew its cap (a secondary slow or away for long): the
   * group stops replicating, its payloads become bitmap blocks, and hosts
   * keep writing. The RCM sees the suspended primary and suspends the group.
   */
  private journalFull(group: string): void {
    // A group whose writes already go to the bitmap is not suspended again.
    if (primaryGroupIgnores(this.groups.get(group)!.state, "journal-full")) return;
    const reason = `journal past its cap of ${this.o.journalBytesMax} bytes (${this.journal.bytes} bytes held)`;
    this.o.logger.error({ group, journalBytes: this.journal.bytes, cap: this.o.journalBytesMax }, "journal full: suspending the group");
    void this.suspend(group, "journal-full", reason, `primary #${this.o.id}`).catch((err) =>
      this.o.logger.error({ group, err: (err as Error).message }, "suspending after a full journal failed"),
    );
  }

  /**
   * A resync starts on this primary (docs/resync.md, step 3): the
   * secondaries' dirty blocks join the bitmap, host writes stream again, and
   * the copier works through the bitmap and cursors. Idempotent for the same
   * generation (blocks sent again are merged again).
   */
  async resync(group: string, generation: number, blocks: Record<string, [number, number][]>) {
    const gs = this.groups.get(group);
    if (!gs) throw tmError("TM_NO_GROUP", `subsystem #${this.o.id} is no primary of group '${group}'`, { group, subsystem: this.o.id });
    const event = primaryResyncEvent(generation, gs.generation);
    // From here host writes are replicated, with the new generation in their frames;
    // those already marking the bitmap finish before the copier reads it.
    const next = this.transition(gs, event, (code) =>
      code === "TM_GENERATION"
        ? `group '${group}' on primary #${this.o.id} is at generation ${gs.generation}; a resync needs a newer one than ${generation}`
        : `group '${group}' on primary #${this.o.id} is ${gs.state}; suspend it before a resync`,
    );
    assert(next !== null, `primary #${this.o.id}: a resync request is never ignored`);
    // The resync under way, asked again (the table allows that only while copying).
    const begun = event === "primary-resync-again";
    if (!begun) {
      gs.generation = generation;
      gs.copiedTs = null;
      gs.frozenTs = null;
      if (gs.unreplicated > 0) await new Promise<void>((r) => gs.unreplicatedIdle.push(r));
    }
    const volumes = new Map([...this.bindings.values()].filter((b) => b.group === group).map((b) => [b.volume.name, b]));
    let merged = 0;
    try {
      this.db.transaction(() => {
        for (const [volume, runs] of Object.entries(blocks)) {
          const b = volumes.get(volume);
          if (!b) throw tmError("TM_NO_VOLUME", `resync of '${group}': volume '${volume}' is no primary volume of the group on #${this.o.id}`, { group, volume, subsystem: this.o.id });
          for (const [first, count] of runs) {
            if (!Number.isInteger(first) || !Number.isInteger(count) || first < 0 || count <= 0 || (first + count) * BLOCK_BYTES > b.volume.sizeBytes) {
              throw tmError("TM_BAD_REQUEST", `resync of '${group}': blocks ${first}+${count} lie outside volume '${volume}'`, { group, volume, first, count });
            }
            merged += this.bitmap.markNow(volume, first * BLOCK_BYTES, count * BLOCK_BYTES);
          }
        }
        this.db
          .prepare("UPDATE grp SET state = ?, generation = ?, reason = NULL, suspended_by = NULL, copied_ts = NULL, frozen_ts = NULL, changed_at_ms = ? WHERE name = ?")
          .run(next, generation, this.o.runtime.nowMs(), group);
      })();
      this.journal.barrier();
      gs.unrecorded = false;
    } catch (err) {
      this.bitmap.reset();
      throw err;
    }
    if (!begun) {
      gs.reason = null;
      gs.by = null;
      this.o.logger.warn({ group, generation, mergedBlocks: merged }, "resync begins: copying the bitmap while host writes replicate");
      this.restartLinksOf(group);
    }
    this.copier.start(group);
    return this.copyStatus(group);
  }

  /**
   * A swap's first step: hosts may no longer write the group's volumes here,
   * replication goes on until the secondaries hold everything acknowledged.
   * Durable, so a restart does not open the volumes to hosts again.
   */
  async freeze(group: string) {
    const gs = this.groups.get(group);
    if (!gs) throw tmError("TM_NO_GROUP", `subsystem #${this.o.id} is no primary of group '${group}'`, { group, subsystem: this.o.id });
    const was = gs.state;
    // Decided before the row is written, changed in memory once it is durable,
    // all in this one step: a record that fails (a full state disk) leaves the
    // group as hosts and the state file both have it, and the swap fails here.
    const next = primaryGroupTransition(gs.state, "primary-freeze", () => `group '${group}' on primary #${this.o.id} is ${gs.state}; only a paired group is swapped`);
    assert(next !== null, `primary #${this.o.id}: a freeze is never ignored`);
    if (next !== was) {
      // Every write acknowledged from now on was stamped already (a write is
      // stamped when it is admitted): none is above this stamp.
      const frozenTs = this.clock.lastStamp;
      this.db.prepare("UPDATE grp SET state = ?, frozen_ts = ?, changed_at_ms = ? WHERE name = ?").run(next, frozenTs, this.o.runtime.nowMs(), group);
      this.journal.barrier();
      this.transition(gs, "primary-freeze");
      gs.frozenTs = frozenTs;
      this.o.logger.warn({ group }, "group frozen for a swap: hosts may no longer write its primary volumes here");
    }
    if (gs.inflight > 0) await new Promise<void>((r) => gs.idle.push(r));
    return { subsystem: this.o.id, group, state: gs.state, lastStamp: this.clock.lastStamp.toString() };
  }

  /** What status and the RCM show of a group's copy. */
  copyStatus(group: string) {
    const gs = this.groups.get(group);
    if (!gs) throw tmError("TM_NO_GROUP", `subsystem #${this.o.id} is no primary of group '${group}'`, { group, subsystem: this.o.id });
    return this.copier.status(group, gs.copiedTs);
  }

  /** Dry run: per volume, the journal entries not yet acknowledged by the secondary. */
  preview(group: string) {
    const rows = this.db
      .prepare(`SELECT volume, link, seq, len FROM journal WHERE grp = ? AND op != ${OP_VERIFY}`)
      .all(group) as { volume: string; link: number; seq: number; len: number }[];
    const out = new Map<string, { volume: string; unacknowledgedWrites: number; unacknowledgedBytes: number }>();
    for (const b of this.bindings.values()) if (b.group === group) out.set(b.volume.name, { volume: b.volume.name, unacknowledgedWrites: 0, unacknowledgedBytes: 0 });
    for (const r of rows) {
      if (r.seq <= (this.senders.get(r.link)?.ackedSeq ?? 0)) continue;
      const v = out.get(r.volume);
      if (v) {
        v.unacknowledgedWrites++;
        v.unacknowledgedBytes += r.len;
      }
    }
    return { subsystem: this.o.id, group, state: this.groupState(group), generation: this.groups.get(group)?.generation ?? 0, volumes: [...out.values()] };
  }

  /**
   * A secondary refused a frame and closed the link: fencing by a newer
   * generation (the usual case), or a group it cannot take. The frame's group
   * field says which group (refusal.ts); the message is only reported.
   */
  private onRefused(secondaryId: number, refusal: Refusal): void {
    const onLink = [...this.groups.keys()].filter((g) => this.groupSecondaries.get(g)?.includes(secondaryId));
    const groups = refusedGroups(refusal, onLink);
    const why = describeWireError(refusal.code);
    if (groups.length === 0) {
      this.o.logger.warn({ secondary: secondaryId, group: refusal.group, code: why, refusal: refusal.message }, "a secondary refuses a group this primary does not send it; nothing changes");
    }
    const message = refusalReason(secondaryId, refusal);
    for (const g of groups) {
      const gs = this.groups.get(g);
      if (!gs) continue;
      if (staleRefusal(refusal, gs.generation)) {
        this.o.logger.info(
          { group: g, generation: gs.generation, refused: refusal.sentGeneration, secondary: secondaryId, code: why },
          "a secondary refused frames of an older generation of the group; nothing changes",
        );
        continue;
      }
      // `active` and `copying` are fenced (group-state.ts): a copying group
      // refused at its own generation was suspended or taken over on that
      // secondary, and its frames, which hold the link's later seqs back,
      // must leave the stream or every other group on the link stalls.
      // A frozen group is in a swap: its secondaries are being fenced by that
      // swap's takeover. Fencing it here would open its volumes to hosts again
      // (fenced takes host writes into the bitmap), and the swap would then
      // copy over what they wrote. It stays frozen, read-only, until the
      // takeover's primary step (issue 17).
      if (primaryGroupIgnores(gs.state, "refused") && !(this.o.controls?.refusalFencesFrozen && replicating(gs.state))) {
        if (!replicating(gs.state)) continue;
        this.o.logger.warn(
          { group: g, state: gs.state, secondary: secondaryId, code: why, refusal: refusal.message },
          "a secondary refuses this primary's frames; the group keeps its state (a swap's procedure is under way)",
        );
        continue;
      }
      const stale = refusal.code === WIRE_ERROR.generation;
      this.o.logger.error(
        { group: g, secondary: secondaryId, code: why, refusal: refusal.message },
        `fenced: a secondary refuses this primary's frames (${stale ? "stale generation" : why}); replication of the group stops`,
      );
      void this.suspend(g, "refused", message, `secondary #${secondaryId}`).catch((err) =>
        this.o.logger.error({ group: g, err: (err as Error).message }, "suspending the fenced group failed"),
      );
    }
  }

  /**
   * A secondary lost RCRs it had acknowledged (its queue went back from
   * `had` to `got`): some may be trimmed here, so no bitmap can name them.
   * The groups on that link are suspended and its pairs are copied whole by
   * the next resync.
   */
  private onAckRegressed(secondaryId: number, had: number, got: number): void {
    const reason = `secondary #${secondaryId} acknowledged seq ${got} after seq ${had}: it lost RCRs it had acknowledged; its pairs are copied whole at the next resync`;
    this.o.logger.error({ secondary: secondaryId, had, got }, "a secondary's acknowledgement went backwards; suspending its groups");
    const addCursor = this.db.prepare("INSERT OR REPLACE INTO copy_cursor (volume, next_off) VALUES (?, 0)");
    this.db.transaction(() => {
      for (const b of this.bindings.values()) if (b.link === secondaryId) addCursor.run(b.volume.name);
    })();
    for (const g of new Set([...this.bindings.values()].filter((b) => b.link === secondaryId).map((b) => b.group))) {
      if (primaryGroupIgnores(this.groups.get(g)!.state, "ack-regressed")) continue;
      void this.suspend(g, "ack-regressed", reason, `primary #${this.o.id}`).catch((err) =>
        this.o.logger.error({ group: g, err: (err as Error).message }, "suspending after a lost acknowledgement failed"),
      );
    }
  }

  /** A host read: the volume's bytes, unless the volume failed (EIO), whose bytes may not be what the disk holds. */
  read(volume: string, offset: number, length: number): Promise<Buffer> {
    const b = this.bindings.get(volume);
    assert(b, `volume ${volume} is a primary here`);
    if (this.failedVolumes.has(volume)) return Promise.reject(this.failedVolumeError(b));
    return b.volume.read(offset, length);
  }

  private failedVolumeError(b: BindingState): VolumeError {
    return new VolumeError("TM_VOLUME_IO", `${this.failedVolumes.get(b.volume.name)}; hosts get EIO for it until subsystem #${this.o.id} restarts`, {
      volume: b.volume.name,
      path: b.volume.path,
      sysCode: "EIO",
    });
  }

  /**
   * A primary volume's write or fdatasync failed (not for a full disk): the
   * volume is marked failed, once, with why. After a failed fdatasync Linux
   * may have dropped the pages and the next one succeeds, so nothing written
   * since the last good sync can be trusted on it; the writes it
   * acknowledged are on the secondary, which a takeover uses.
   */
  private volumeFailed(b: BindingState, err: unknown, op: string): VolumeError {
    const name = b.volume.name;
    if (!this.failedVolumes.has(name)) {
      const sys = (err as { sysCode?: string }).sysCode ?? (err as { code?: string }).code ?? "EIO";
      const reason = `volume ${name} failed: ${sys} on ${op} of ${b.volume.path}`;
      this.failedVolumes.set(name, reason);
      this.o.logger.error(
        { volume: name, path: b.volume.path, group: b.group, err: (err as Error).message },
        "primary volume failed: hosts get EIO for it; the group is suspended with the volume named. Take the group over (its secondary holds what was acknowledged), replace the disk, then resync --reverse",
      );
    }
    return this.failedVolumeError(b);
  }

  /**
   * A replicated write reached the journal but not the volume (its entry may
   * reach the secondary all the same). Null when it was written after all.
   * A full disk (a sparse volume file on it) puts the subsystem in
   * state-disk-full, whose reserve often makes room for the write itself;
   * else its blocks go to the bitmap so a resync makes the pair equal again
   * (the host was told the write failed: either content is right), or, if
   * even the mark finds no room, the entry stays owed (unwritten). Any other
   * error fails the volume.
   */
  private async volumeWriteFailed(b: BindingState, err: unknown, seq: number, offset: number, length: number, data: Buffer | null): Promise<Error | null> {
    if (!diskFullCause(err)) {
      await this.bitmap.mark(b.volume.name, offset, length).catch(() => {});
      return this.volumeFailed(b, err, "write");
    }
    const full = this.o.disk?.failed(err, b.volume.path) ?? (err as Error);
    try {
      if (data) await b.volume.write(offset, data);
      else await b.volume.writeZeroes(offset, length);
      return null;
    } catch {
      // Still no room on the volume's file system.
    }
    try {
      await this.bitmap.mark(b.volume.name, offset, length);
    } catch {
      this.unwritten.set(seq, { group: b.group, volume: b.volume.name, offset, length });
    }
    return full;
  }

  /** fdatasync of a primary volume; a failure marks it failed and, if `rethrow`, fails the caller. */
  private async syncVolume(b: BindingState, rethrow: boolean): Promise<void> {
    try {
      await b.volume.sync();
    } catch (err) {
      const e = this.volumeFailed(b, err, "fdatasync");
      if (rethrow) throw e;
    }
  }

  /** FLUSH: the volume's completed writes and every journal commit are durable. */
  async flush(volume: string): Promise<void> {
    const b = this.bindings.get(volume);
    assert(b, `volume ${volume} is a primary here`);
    try {
      if (this.o.disk?.full) {
        // No room for the barrier's commit: fdatasync of the segments and the
        // WAL makes every commit so far durable just the same, and a host's
        // FLUSH of what it was acknowledged still succeeds on a full disk.
        this.journal.segments.sync();
        await this.o.store.syncWal();
      } else this.journal.barrier();
    } catch (err) {
      throw this.o.disk?.failed(err, failedFile(err, stateFileName(this.db.name))) ?? err;
    }
    if (this.failedVolumes.has(volume)) throw this.failedVolumeError(b);
    await this.syncVolume(b, true);
  }

  /**
   * Across hosts (realtime clocks) an acknowledgement waits until this clock
   * has passed ts + the configured maximum offset, so a dependent write on any
   * other primary gets a greater stamp.
   */
  private async commitWait(ts: bigint): Promise<void> {
    if (this.offsetNs === 0n) return;
    for (;;) {
      const left = ts + this.offsetNs - this.clock.now();
      if (left < 0n) return;
      await this.o.runtime.sleep(Math.max(1, Math.ceil(Number(left) / 1e6)));
    }
  }

  private announce(): void {
    const syncs: [group: string, secs: number[], t: bigint][] = [];
    for (const [group, secs] of this.groupSecondaries) {
      const gs = this.groups.get(group)!;
      if (!replicating(gs.state)) continue;
      // COPIED is repeated: a secondary that was away when the copy ended
      // still learns it; one holding no resync ignores it.
      if (gs.state === "active" && gs.copiedTs !== null) for (const s of secs) this.senders.get(s)?.sendCopied(group, gs.copiedTs);
      const t = this.o.controls?.bareClockSync ? this.clock.stamp() : syncTime(this.pending.oldest(group), () => this.clock.stamp());
      const prev = this.lastSync.get(group);
      if (prev !== undefined && t < prev) continue;
      syncs.push([group, secs, t]);
    }
    // Stamps must stay above every T announced, across restarts too. The floor
    // is exact: one running ahead of the clock would stamp a restarted primary's
    // writes above dependent writes that other primaries accept later (the
    // simulation found that). One small write per sync interval, not per write.
    // It is written before the SYNCs go: a floor the state disk cannot take
    // (full) announces nothing above the floor already recorded.
    if (this.clock.lastStamp > this.persistedFloor) {
      try {
        this.journal.raiseTsFloor(this.clock.lastStamp);
      } catch (err) {
        // The guard suspends the groups (diskFull); anything else stops the process as before.
        if (!this.o.disk?.failed(err, stateFileName(this.db.name))) throw err;
        return;
      }
      this.persistedFloor = this.clock.lastStamp;
    }
    for (const [group, secs, t] of syncs) {
      this.lastSync.set(group, t);
      for (const s of secs) this.senders.get(s)?.sendSync(group, t);
    }
  }

  /**
   * Drops journal entries acknowledged by their secondary whose volume write
   * is durable: fdatasync first, then one transaction. Regions whose writes
   * are all gone from the journal are cooled.
   */
  private async trim(): Promise<void> {
    if (this.trimming) return;
    let work = false;
    for (const [id, s] of this.senders) if (s.ackedSeq > (this.trimmedSeq.get(id) ?? 0)) work = true;
    this.trimming = true;
    try {
      if (!work) {
        this.activity.coolIdle(this.trimmedSeq);
        return;
      }
      let frontier = this.seq + 1;
      for (const s of this.writing) if (s < frontier) frontier = s;
      const upTo = new Map<number, number>();
      for (const [id, s] of this.senders) upTo.set(id, Math.min(s.ackedSeq, frontier - 1));
      const dirty = [...this.bindings.values()].filter((b) => b.dirty);
      for (const b of dirty) b.dirty = false;
      // A volume whose sync fails is marked failed (hosts get EIO for it) and the
      // trim goes on: what it acknowledged is on its secondary, which a takeover uses.
      await Promise.all(dirty.map((b) => this.syncVolume(b, false)));
      this.journal.trim(upTo);
      for (const w of this.trimWaiters.splice(0)) w();
      for (const [id, seq] of upTo) this.trimmedSeq.set(id, Math.max(seq, this.trimmedSeq.get(id) ?? 0));
      this.activity.coolIdle(this.trimmedSeq);
    } catch (err) {
      // A full state disk is reported once, by the guard; the trim is retried each interval.
      if (!this.o.disk?.failed(err, failedFile(err, stateFileName(this.db.name)))) this.o.logger.error({ err: (err as Error).message }, "journal trim failed; will retry");
      for (const b of this.bindings.values()) b.dirty = true;
    } finally {
      this.trimming = false;
    }
  }

  /** The greatest stamp handed out: every write acknowledged so far has ts <= it. */
  get lastStamp(): bigint {
    return this.clock.lastStamp;
  }

  nowNs(): bigint {
    return this.clock.now();
  }

  status() {
    const j = this.journal.counts();
    return {
      lastStamp: this.clock.lastStamp.toString(),
      writes: this.writes,
      writeBytes: this.writeBytes,
      pending: this.pending.size,
      throttledWrites: this.throttled,
      journal: { ...j, payloadBytes: this.journal.bytes },
      groups: [...this.groupSecondaries.keys()].map((g) => ({
        name: g,
        state: this.groupState(g),
        reason: this.groups.get(g)!.reason,
        suspendedBy: this.groups.get(g)!.by,
        bitmapBlocks: [...this.bindings.values()].filter((b) => b.group === g).reduce((n, b) => n + this.bitmap.count(b.volume.name), 0),
        pending: this.pending.sizeOf(g),
        lastSyncT: (this.lastSync.get(g) ?? 0n).toString(),
        generation: this.groups.get(g)!.generation,
        // The stamp of a swap's freeze, until a resync or a turn clears it (frozenTsShown).
        frozenTs: frozenTsShown(this.groups.get(g)!, this.o.controls?.thawedFreezeHidden === true),
        // The negative control restores the review's candidate 3: a suspension shown before it is recorded.
        ...(this.groups.get(g)!.unrecorded && !this.o.controls?.unrecordedShownRecorded ? { unrecorded: true } : {}),
        ...(({ copiedTs, remainingBlocks, copy }) => ({ copiedTs, remainingBlocks, copy }))(this.copyStatus(g)),
      })),
      links: [...this.senders.entries()].map(([id, s]) => ({
        secondary: id,
        state: s.state,
        sentSeq: s.lastSentSeq,
        ackedSeq: s.ackedSeq,
        bytesInFlight: s.bytesInFlight,
        lastError: s.lastError,
        security: s.security,
      })),
      volumes: [...this.bindings.values()].map((b) => ({
        name: b.volume.name,
        group: b.group,
        secondary: b.link,
        target: b.target,
        failed: this.failedVolumes.get(b.volume.name) ?? null,
      })),
      pendingCopies: this.copier.cursorVolumes().filter((v) => {
        const b = this.bindings.get(v);
        return !!b && this.groupState(b.group) !== "copying";
      }),
    };
  }
}

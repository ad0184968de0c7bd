// The secondary role of a subsystem: receives RCR and SYNC frames from its
// primaries' links, queues RCRs durably (group commit) before acknowledging
// them, keeps 111/112 per group with the pure time-parameter module, and
// applies the disk request queue (rows with ts <= 112) to the secondary
// volumes in (ts, primary id, seq) order. Invariant: nothing with ts > 112 is
// ever applied. A crash mid-apply is finished by redo: rows leave the queue
// only after their volume writes are fdatasynced.
import type { Logger } from "pino";
import type { Volume } from "../../disks/volume.ts";
import { durableBarrier, type Db } from "../state/database.ts";
import { describeWireError, WIRE_ERROR, type Frame, type RcrRecord, type WireErrorName } from "../replication/frames.ts";
import { assert, InvariantError } from "../invariant.ts";
import { tmError } from "../errors/codes.ts";
import { barrierOf, initialTimes, onCopied, onSync, startHold, withPrimaries, type GroupTimes, type SyncOutcome } from "./time-parameters.ts";
import { BitmapWriter } from "../state/bitmap-writer.ts";
import { splitAtSynchronizedTime } from "./synchronized-apply.ts";
import { crc32c } from "@node-rs/crc32";
import { PayloadSegments } from "../state/payload-segments.ts";
import { PayloadCache } from "../state/payload-cache.ts";
import type { StateStore } from "../state/store.ts";
import type { FrameLink } from "../replication/frame-link.ts";
import type { Runtime } from "../runtime/runtime.ts";
import type { NegativeControls } from "../runtime/controls.ts";
import {
  fenceEvent,
  replicating,
  resyncBeginEvent,
  secondaryGroupOutcome,
  secondaryGroupTransition,
  type SecondaryGroupEvent,
  type SecondaryGroupState,
} from "./group-state.ts";

export type { SecondaryGroupState } from "./group-state.ts";
/**
 * Payloads of queued RCRs kept in memory for the applier (usually a sync
 * interval later) so it need not read them back from their segment: that
 * read cost the secondary 19% of its CPU on 4 KiB writes. Beyond this, and
 * after a restart, the segment is read.
 */
const RECENT_PAYLOAD_BYTES = 16 * 1024 * 1024;

/** Rows applied per transaction. */
export const APPLY_BATCH_ROWS = 1024;
/** Bytes per batch: synchronous writes block the loop, so a batch stays short. */
export const APPLY_BATCH_BYTES = 4 * 1024 * 1024;
const OP_WRITE = 1;
const OP_ZERO = 2;
export interface SecondaryBinding {
  volume: Volume;
  group: string;
  /** The primary subsystem that feeds this volume. */
  primaryId: number;
}

/** What a simulation watches of the applier. Called synchronously; never changes what the engine does. */
export interface SecondaryProbe {
  /** An RCR's volume write is issued, in apply order, with the 112 it was applied under. */
  applying?(e: { secondary: number; group: string; volume: string; offset: number; length: number; ts: bigint; primaryId: number; seq: number; second: bigint }): void;
}

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
}

interface GroupState {
  name: string;
  times: GroupTimes;
  generation: number;
  state: SecondaryGroupState;
  reason: string | null;
  applied: number;
  appliedBytes: number;
  /** Greatest ts applied so far, for the status invariant check. */
  lastAppliedTs: bigint;
  /** Ts of the after-failure procedure, once applied (steps 604-606). */
  synchronizedTs: bigint | null;
  suspendedBy: string | null;
  dropped: number;
  droppedBytes: number;
}

/** A volume's dirty blocks as [first, count] runs: a resync's bitmap crosses the RCM this way. */
export type BlockRuns = [number, number][];

export function toRuns(blocks: readonly number[]): BlockRuns {
  const runs: BlockRuns = [];
  for (const b of blocks) {
    const last = runs[runs.length - 1];
    if (last && last[0] + last[1] === b) last[1]++;
    else runs.push([b, 1]);
  }
  return runs;
}

type Work =
  | { kind: "rcr"; link: FrameLink; primaryId: number; group: string; records: RcrRecord[] }
  | { kind: "sync" | "copied"; group: string; primaryId: number; t: bigint; generation: number };

export class SecondaryEngine {
  private readonly groups = new Map<string, GroupState>();
  private readonly volumes = new Map<string, SecondaryBinding>();
  /** Per primary: the highest seq committed to the RCR queue (maybe not yet durable). */
  private readonly lastSeq = new Map<number, number>();
  /**
   * Per primary: the highest seq durably queued, the only one ever
   * acknowledged. Known (durableKnown) once the state loaded at start is
   * durable: after a kill -9 the WAL may hold commits no fdatasync covered.
   */
  private readonly durableSeq = new Map<number, number>();
  private durableKnown = false;
  /** What the queue held when this incarnation loaded it: durable with the first WAL sync. */
  private loadedSeq = new Map<number, number>();
  /** Links attached before durableSeq was known: they get their first ack then. */
  private attachedEarly: [FrameLink, number][] = [];
  private readonly links = new Map<number, FrameLink>();
  private work: Work[] = [];
  private scheduled = false;
  private committing: Promise<void> | null = null;
  private applying = false;
  private applyAgain = false;
  private stopped = false;
  private readonly stmts;
  private readonly bitmap: BitmapWriter;
  private readonly segments: PayloadSegments;
  private readonly appliedWaiters: { group: string; ts: bigint; resolve: () => void }[] = [];
  /** Host writes between their check and their volume write (after a takeover). */
  private hostWrites = 0;
  private hostIdle: (() => void)[] = [];
  received = 0;
  duplicates = 0;
  /** The last failure to write a secondary volume; the RCM suspends the group on it. */
  applyError: string | null = null;

  private readonly db: Db;

  constructor(private readonly o: SecondaryOptions) {
    this.db = o.store.db;
    const db = this.db;
    for (const b of o.bindings) this.volumes.set(b.volume.name, b);
    this.bitmap = new BitmapWriter(db, o.runtime);
    this.segments = new PayloadSegments(o.store.segments("queue"));
    this.stmts = {
      insert: db.prepare(
        "INSERT INTO rcr (grp, ts, primary_id, seq, volume, op, off, len, seg, seg_off, crc) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
      ),
      setSeq: db.prepare(
        "INSERT INTO link_seq (primary_id, last_seq) VALUES (?, ?) ON CONFLICT(primary_id) DO UPDATE SET last_seq = excluded.last_seq",
      ),
      setFirst: db.prepare(
        "INSERT INTO first_time (grp, primary_id, t) VALUES (?, ?, ?) ON CONFLICT(grp, primary_id) DO UPDATE SET t = excluded.t",
      ),
      setSecond: db.prepare("UPDATE grp SET second_time = ? WHERE name = ?"),
      setCopied: db.prepare(
        "INSERT INTO copied (grp, primary_id, ts) VALUES (?, ?, ?) ON CONFLICT(grp, primary_id) DO UPDATE SET ts = excluded.ts",
      ),
      // Without payloads: a batch's rows are chosen by their lengths first, and only
      // those payloads are read (1024 rows of 1 MiB copies would be 1 GiB at once).
      due: db
        .prepare("SELECT id, ts, primary_id, seq, volume, op, off, len FROM rcr WHERE grp = ? AND ts <= ? ORDER BY ts, primary_id, seq LIMIT ?")
        .safeIntegers(true),
      payload: db.prepare("SELECT data, seg, seg_off, len, crc FROM rcr WHERE id = ?"),
      oldestSeg: db.prepare("SELECT seg FROM rcr WHERE seg IS NOT NULL ORDER BY id LIMIT 1").pluck(true),
      del: db.prepare("DELETE FROM rcr WHERE id = ?"),
      applied: db.prepare(
        "UPDATE grp SET applied = applied + ?, applied_bytes = applied_bytes + ?, last_applied_ts = max(last_applied_ts, ?) WHERE name = ?",
      ),
      countAll: db.prepare("SELECT count(*) AS n, coalesce(sum(len), 0) AS b FROM rcr WHERE grp = ?"),
      countDue: db.prepare("SELECT count(*) AS n, coalesce(sum(len), 0) AS b, min(ts) AS m FROM rcr WHERE grp = ? AND ts <= ?").safeIntegers(true),
    };
    this.load();
  }

  /**
   * After a power cut: the last queue commit's rows may have reached the disk
   * while their payloads did not (its WAL sync finished, its segment sync did
   * not). That commit was never acknowledged, so its primaries still hold
   * those RCRs: the rows go, and each primary's last seq falls back below
   * them, so the resend is taken rather than dropped as a duplicate. Only the
   * newest rows can be torn, so the scan stops at the first whole one.
   */
  private dropTornTail(): void {
    const db = this.db;
    const torn = new Map<number, number>();
    const rows = db.prepare("SELECT id, primary_id, seq, seg, seg_off, len, crc FROM rcr WHERE seg IS NOT NULL ORDER BY id DESC").iterate() as IterableIterator<{
      id: number;
      primary_id: number;
      seq: number;
      seg: number;
      seg_off: number;
      len: number;
      crc: number;
    }>;
    for (const r of rows) {
      let whole = false;
      try {
        whole = crc32c(this.segments.read({ seg: r.seg, off: r.seg_off }, r.len)) === r.crc;
      } catch {
        whole = false;
      }
      if (whole) break;
      torn.set(r.primary_id, Math.min(r.seq, torn.get(r.primary_id) ?? r.seq));
    }
    if (torn.size === 0) return;
    db.transaction(() => {
      for (const [p, seq] of torn) {
        db.prepare("DELETE FROM rcr WHERE primary_id = ? AND seq >= ?").run(p, seq);
        this.stmts.setSeq.run(p, seq - 1);
      }
    })();
    this.o.logger.warn({ primaries: Object.fromEntries(torn) }, "RCR queue: rows of the last commit before a power cut lost their payloads; they go, and their primaries resend them");
  }

  private load(): void {
    const db = this.db;
    this.dropTornTail();
    for (const r of db.prepare("SELECT primary_id, last_seq FROM link_seq").all() as { primary_id: number; last_seq: number }[]) {
      this.lastSeq.set(r.primary_id, r.last_seq);
    }
    const ensure = db.prepare("INSERT OR IGNORE INTO grp (name) VALUES (?)");
    const getGrp = db.prepare("SELECT * FROM grp WHERE name = ?").safeIntegers(true);
    const getFirst = db.prepare("SELECT primary_id, t FROM first_time WHERE grp = ?").safeIntegers(true);
    const getCopied = db.prepare("SELECT primary_id, ts FROM copied WHERE grp = ?").safeIntegers(true);
    db.transaction(() => {
      for (const [name, primaries] of this.o.groups) {
        ensure.run(name);
        const g = getGrp.get(name) as Record<string, bigint | string | null>;
        const first = new Map<number, bigint>();
        for (const r of getFirst.all(name) as { primary_id: bigint; t: bigint }[]) first.set(Number(r.primary_id), r.t);
        const second = g.second_time as bigint;
        let times: GroupTimes = first.size === 0 ? initialTimes(primaries, second) : { first, second, hold: null };
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
          for (const r of getCopied.all(name) as { primary_id: bigint; ts: bigint }[]) copied.set(Number(r.primary_id), r.ts);
          times = { first: times.first, second: times.second, hold: { floor: g.resync_floor as bigint, copied } };
        }
        // A primary new to the group starts at the current 112, never at zero.
        times = withPrimaries(times, primaries);
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
    })();
  }

  start(): void {
    // Redo: whatever was due before a crash is applied again, in order.
    this.kickApplier();
    // What the queue held at start is acknowledged only once it is durable.
    this.loadedSeq = new Map(this.lastSeq);
    this.o.store.syncWal().then(
      () => this.markDurable(new Map()),
      (err: Error) => assert(false, `secondary #${this.o.id}: fdatasync of the state file's WAL failed at start (${err.message}); stopping rather than acknowledge what may not be on disk`),
    );
  }

  stop(): void {
    this.stopped = true;
    for (const l of this.links.values()) l.close();
    // An apply batch in flight may still read a payload: close once it is done.
    const close = () => {
      if (this.applying || this.committing) return void this.o.runtime.setTimeout(close, 10);
      this.segments.close();
    };
    close();
  }

  /** A primary's authenticated link (role "link", nodeId = primary id). */
  attach(link: FrameLink, primaryId: number): void {
    const old = this.links.get(primaryId);
    if (old && old !== link) old.close();
    this.links.set(primaryId, link);
    link.on("frame", (f: Frame) => this.onFrame(link, primaryId, f));
    link.on("close", () => {
      if (this.links.get(primaryId) === link) this.links.delete(primaryId);
    });
    // Tell the primary what is already held, so it can skip to the rest:
    // only what is durable, or a power cut could take back what it then trims.
    if (this.o.controls?.ackBeforeDurable) link.send({ type: "ack", seq: this.lastSeq.get(primaryId) ?? 0 });
    else if (!this.durableKnown) this.attachedEarly.push([link, primaryId]);
    else this.sendHeld(link, primaryId);
  }

  private sendHeld(link: FrameLink, primaryId: number): void {
    if (this.links.get(primaryId) !== link) return;
    // Sent even at 0: a primary that had more acknowledged learns this secondary lost it.
    link.send({ type: "ack", seq: this.durableSeq.get(primaryId) ?? 0 });
  }

  /** A WAL sync completed: what it covered (and everything loaded at start) may be acknowledged. */
  private markDurable(seqs: ReadonlyMap<number, number>): void {
    if (this.stopped) return;
    for (const m of [this.loadedSeq, seqs]) for (const [p, seq] of m) if (seq > (this.durableSeq.get(p) ?? 0)) this.durableSeq.set(p, seq);
    this.loadedSeq.clear();
    if (!this.durableKnown) {
      this.durableKnown = true;
      for (const [link, p] of this.attachedEarly.splice(0)) this.sendHeld(link, p);
    }
  }

  /**
   * Tells the primary why its frame of `group` is not taken (WIRE_ERROR,
   * docs/wire.md), then closes the link. The group travels in its own field:
   * the primary stops that group by it, never by reading the message.
   */
  private refuse(link: FrameLink, primaryId: number, why: WireErrorName, group: string, message: string): void {
    const code = WIRE_ERROR[why];
    this.o.logger.warn({ peer: primaryId, group, code, why: describeWireError(code), err: message }, "frame refused; dropping link");
    link.send({ type: "error", code, group, message });
    link.close();
  }

  private onFrame(link: FrameLink, primaryId: number, f: Frame): void {
    if (this.stopped) return;
    if (f.type === "rcr" || f.type === "sync" || f.type === "copied") {
      const g = this.groups.get(f.group);
      if (!g) return this.refuse(link, primaryId, "noGroup", f.group, `group '${f.group}' has no secondary volume on subsystem #${this.o.id}`);
      if (!g.times.first.has(primaryId)) {
        return this.refuse(link, primaryId, "notPrimary", f.group, `subsystem #${primaryId} is not a primary of group '${f.group}'`);
      }
      if ((f.generation !== g.generation || !replicating(g.state)) && !this.o.controls?.noFence) {
        // Fencing: a suspended group takes nothing more from its primaries.
        return this.refuse(
          link,
          primaryId,
          f.generation !== g.generation ? "generation" : "notReplicating",
          f.group,
          `group '${f.group}' is ${g.state} at generation ${g.generation} on subsystem #${this.o.id}; frame carries generation ${f.generation}`,
        );
      }
      if (f.type !== "rcr") {
        if (f.primaryId !== primaryId) return this.refuse(link, primaryId, "badFrame", f.group, `${f.type.toUpperCase()} names primary #${f.primaryId} on the link of #${primaryId}`);
        this.push({ kind: f.type, group: f.group, primaryId, t: f.t, generation: f.generation });
        return;
      }
      for (const r of f.records) {
        const problem = this.checkRecord(f.group, primaryId, r);
        if (problem) return this.refuse(link, primaryId, "badFrame", f.group, problem);
      }
      this.push({ kind: "rcr", link, primaryId, group: f.group, records: f.records });
    } else if (f.type === "heartbeat") {
      link.send({ type: "heartbeat" });
    }
  }

  private checkRecord(group: string, primaryId: number, r: RcrRecord): string | null {
    const b = this.volumes.get(r.volume);
    if (!b || b.group !== group || b.primaryId !== primaryId) {
      return `RCR seq ${r.seq}: volume '${r.volume}' is not a secondary of primary #${primaryId} in group '${group}' on subsystem #${this.o.id}`;
    }
    if (r.primaryId !== primaryId) return `RCR seq ${r.seq} names primary #${r.primaryId} on the link of #${primaryId}`;
    if (r.offset % 512 !== 0 || r.length % 512 !== 0 || r.length === 0 || r.offset + r.length > b.volume.sizeBytes) {
      return `RCR seq ${r.seq}: range ${r.offset}+${r.length} is not 512-aligned inside volume '${r.volume}' (${b.volume.sizeBytes} bytes)`;
    }
    if (r.op === "write" && (!r.data || r.data.length !== r.length)) return `RCR seq ${r.seq}: data length differs from length ${r.length}`;
    return null;
  }

  private push(w: Work): void {
    this.work.push(w);
    this.schedule();
  }

  private schedule(): void {
    if (this.scheduled || this.committing) return;
    this.scheduled = true;
    this.o.runtime.setImmediate(() => this.commit());
  }

  /** Until everything received so far is committed and durable (a fence needs that). */
  private async flushCommits(): Promise<void> {
    for (;;) {
      if (!this.committing && this.work.length > 0) this.commit();
      if (!this.committing) return;
      await this.committing;
    }
  }

  /**
   * Group commit of everything received since the last one; then, once the
   * queue segment and the WAL are fdatasynced (in the thread pool, so the
   * loop goes on receiving), the new times take effect and the acks go out.
   * Commits run one at a time: frames that arrive meanwhile form the next.
   */
  private commit(): void {
    this.scheduled = false;
    if (this.stopped || this.committing || this.work.length === 0) return;
    const work = this.work;
    this.work = [];
    const ackTo = new Map<number, FrameLink>();
    const seqChanged = new Set<number>();
    /** The seqs this commit queues: acknowledged once it is durable. */
    const committed = new Map<number, number>();
    const groupsChanged = new Set<string>();
    const lifted = new Set<string>();
    let released = false;
    const next = new Map<string, GroupTimes>();
    const timesOf = (g: string) => next.get(g) ?? this.groups.get(g)!.times;
    try {
      // Payloads of the new RCRs (resends dropped) go to the queue's segment
      // first, one writev; then, an ack letting the primary forget the RCR,
      // the segment and the WAL are synced (the queue survives a power cut).
      const fresh = new Set<RcrRecord>();
      const seen = new Map<number, number>();
      for (const w of work) {
        if (w.kind !== "rcr") continue;
        let last = seen.get(w.primaryId) ?? this.lastSeq.get(w.primaryId) ?? 0;
        for (const r of w.records) {
          if (r.seq <= last) continue;
          fresh.add(r);
          last = r.seq;
        }
        seen.set(w.primaryId, last);
      }
      const payloads = [...fresh].filter((r) => r.op === "write").map((r) => r.data!);
      const refs = this.segments.append(payloads);
      const refOf = new Map<RcrRecord, { seg: number; off: number }>();
      let ri = 0;
      for (const r of fresh) if (r.op === "write") refOf.set(r, refs[ri++]);
      this.db.transaction(() => {
        for (const w of work) {
          if (w.kind === "rcr") {
            let last = this.lastSeq.get(w.primaryId) ?? 0;
            for (const r of w.records) {
              if (r.seq <= last) {
                this.duplicates++;
                continue;
              }
              const ref = refOf.get(r);
              const row = this.stmts.insert.run(
                w.group,
                r.ts,
                w.primaryId,
                r.seq,
                r.volume,
                r.op === "write" ? OP_WRITE : OP_ZERO,
                r.offset,
                r.length,
                ref?.seg ?? null,
                ref?.off ?? null,
                r.op === "write" ? crc32c(r.data!) : null,
              );
              if (r.op === "write") this.recent.add(BigInt(row.lastInsertRowid), r.data!);
              last = r.seq;
              this.received++;
            }
            this.lastSeq.set(w.primaryId, last);
            seqChanged.add(w.primaryId);
            ackTo.set(w.primaryId, w.link);
          } else {
            // A SYNC received before a fence is committed after it: never let it lift 111.
            const gs = this.groups.get(w.group)!;
            if ((w.generation !== gs.generation || !replicating(gs.state)) && !this.o.controls?.noFence) continue;
            const out: SyncOutcome = w.kind === "sync" ? onSync(timesOf(w.group), w.primaryId, w.t) : onCopied(timesOf(w.group), w.primaryId, w.t);
            if (out.kind === "raised") {
              next.set(w.group, out.times);
              if (w.kind === "sync") this.stmts.setFirst.run(w.group, w.primaryId, w.t);
              else this.stmts.setCopied.run(w.group, w.primaryId, w.t);
              groupsChanged.add(w.group);
              if (out.release) released = true;
              if (out.lifted) lifted.add(w.group);
            }
          }
        }
        for (const p of seqChanged) {
          this.stmts.setSeq.run(p, this.lastSeq.get(p)!);
          committed.set(p, this.lastSeq.get(p)!);
        }
        for (const g of groupsChanged) this.stmts.setSecond.run(next.get(g)!.second, g);
        // The barrier is passed: every copy sits at or below 112 now (applied,
        // or redone after a crash), so what differed no longer does.
        for (const g of lifted) this.endResync(g);
      })();
    } catch (err) {
      // The queue could not be written (disk full, I/O error): nothing was
      // acknowledged, so the primaries resend after the links are dropped.
      this.o.logger.error({ err: (err as Error).message }, "RCR queue commit failed; dropping links so primaries resend");
      this.reloadSeqs();
      this.bitmap.reset();
      this.recent.clear();
      for (const l of this.links.values()) l.close();
      return;
    }
    // Nothing takes effect before it is durable: an RCR applied, or a 112
    // raised, on the strength of a commit a power cut could take back would
    // leave a volume ahead of the 112 it restarts with.
    this.committing = Promise.all([this.segments.syncAsync(), this.o.store.syncWal()])
      .then(
        () => {
          for (const [g, t] of next) this.groups.get(g)!.times = t;
          for (const g of lifted) {
            this.transition(this.groups.get(g)!, "barrier-passed");
            this.o.logger.info({ group: g, second: next.get(g)!.second.toString() }, "resync complete: the barrier is passed, the group replicates");
          }
          this.markDurable(committed);
          for (const [p, link] of ackTo) link.send({ type: "ack", seq: committed.get(p)! });
          if (released) this.kickApplier();
        },
        (err: Error) => {
          // Linux may drop the pages of a failed fsync: what was committed cannot be trusted.
          assert(false, `secondary #${this.o.id}: fdatasync of the RCR queue failed (${err.message}); stopping rather than acknowledge what may not be on disk`);
        },
      )
      .finally(() => {
        this.committing = null;
        if (this.work.length > 0) this.schedule();
      });
  }

  /** Inside the commit's transaction: the group leaves its resync. */
  private endResync(name: string): void {
    // The state here changes once the commit is durable (commit()).
    const next = secondaryGroupTransition(this.groups.get(name)!.state, "barrier-passed");
    assert(next !== null, `secondary #${this.o.id} group ${name}: a barrier passed is never ignored`);
    this.db.prepare("UPDATE grp SET state = ?, resync_floor = NULL, changed_at_ms = ? WHERE name = ?").run(next, this.o.runtime.nowMs(), name);
    this.db.prepare("DELETE FROM copied WHERE grp = ?").run(name);
    this.bitmap.clearVolumesNow(this.volumesOf(name));
  }

  private volumesOf(group: string): string[] {
    return [...this.volumes.values()].filter((b) => b.group === group).map((b) => b.volume.name);
  }

  private reloadSeqs(): void {
    this.lastSeq.clear();
    for (const r of this.db.prepare("SELECT primary_id, last_seq FROM link_seq").all() as { primary_id: number; last_seq: number }[]) {
      this.lastSeq.set(r.primary_id, r.last_seq);
    }
  }

  private kickApplier(): void {
    if (this.applying) {
      this.applyAgain = true;
      return;
    }
    this.applying = true;
    void this.applyLoop();
  }

  private async applyLoop(): Promise<void> {
    try {
      do {
        this.applyAgain = false;
        for (const g of this.groups.values()) {
          while (!this.stopped && (await this.applyBatch(g)) > 0) {
            /* keep draining */
          }
        }
      } while (this.applyAgain && !this.stopped);
    } catch (err) {
      // A broken invariant is a bug, not an I/O error to retry: stop loudly.
      if (err instanceof InvariantError) return this.o.runtime.fatal(err);
      this.applyError = (err as Error).message;
      this.o.logger.error({ err: (err as Error).message }, "applying the disk request queue failed; retrying");
      this.o.runtime.setTimeout(() => this.kickApplier(), 1000);
    } finally {
      this.applying = false;
      this.wakeAppliedWaiters();
    }
  }

  /** One batch of the disk request queue: volume writes, fdatasync, then delete. */
  private async applyBatch(g: GroupState): Promise<number> {
    const second = g.times.second;
    const rows = this.stmts.due.all(g.name, second, APPLY_BATCH_ROWS) as {
      id: bigint;
      ts: bigint;
      primary_id: bigint;
      seq: bigint;
      volume: string;
      op: bigint;
      off: bigint;
      len: bigint;
    }[];
    if (rows.length === 0) return 0;
    const touched = new Set<Volume>();
    let bytes = 0;
    let maxTs = 0n;
    let n = 0;
    // In order, on this thread: a batch of page-cache writes costs far less
    // CPU as synchronous pwrites than as one thread-pool promise each, and
    // (ts, primary, seq) order comes for free. The fdatasync below is async.
    for (const r of rows) {
      assert(r.ts <= second, `secondary #${this.o.id} group ${g.name}: RCR ts ${r.ts} above 112 ${second}`);
      const b = this.volumes.get(r.volume);
      assert(b, `queued RCR for unknown volume ${r.volume}`);
      const off = Number(r.off);
      const len = Number(r.len);
      this.o.probe?.applying?.({ secondary: this.o.id, group: g.name, volume: r.volume, offset: off, length: len, ts: r.ts, primaryId: Number(r.primary_id), seq: Number(r.seq), second });
      if (Number(r.op) === OP_WRITE) b.volume.writeSync(off, this.payloadOf(r.id, g.name));
      // A zero run over a hole (an initial copy onto a new sparse file) has nothing to write.
      else if (b.volume.nextData(off) < off + len) await b.volume.writeZeroes(off, len);
      touched.add(b.volume);
      bytes += len;
      if (r.ts > maxTs) maxTs = r.ts;
      n++;
      if (bytes >= APPLY_BATCH_BYTES) break;
    }
    await Promise.all([...touched].map((v) => v.sync()));
    this.db.transaction(() => {
      for (let i = 0; i < n; i++) this.stmts.del.run(rows[i].id);
      this.stmts.applied.run(n, bytes, maxTs, g.name);
    })();
    this.segments.collect((this.stmts.oldestSeg.get() as number | null | undefined) ?? null);
    g.applied += n;
    g.appliedBytes += bytes;
    this.applyError = null;
    if (maxTs > g.lastAppliedTs) g.lastAppliedTs = maxTs;
    return n;
  }

  /** Payloads of rows just queued, by row id, until the applier takes them. */
  private readonly recent = new PayloadCache<bigint>(RECENT_PAYLOAD_BYTES);

  /** A queued RCR's payload: from memory, from its segment (checked against its CRC32C), or the row itself for rows of older versions. */
  private payloadOf(id: bigint, group: string): Buffer {
    const kept = this.recent.take(id);
    if (kept) return kept;
    const p = this.stmts.payload.get(id) as { data: Buffer | null; seg: number | null; seg_off: number | null; len: number; crc: number | null };
    if (p.data) return p.data;
    assert(p.seg !== null && p.seg_off !== null, `secondary #${this.o.id} group ${group}: RCR row ${id} has no payload`);
    const data = this.segments.read({ seg: p.seg, off: p.seg_off }, p.len);
    // The segment was synced before the row's commit: a mismatch is damage, not a crash.
    assert(crc32c(data) === p.crc, `secondary #${this.o.id} group ${group}: payload of RCR row ${id} fails its CRC32C (segment ${p.seg} at ${p.seg_off})`);
    return data;
  }

  /**
   * Every change of a group's state goes through here: the next state is the
   * table's (group-state.ts), a refusal throws its code with the message
   * `refusal` gives. Null when the table ignores the event in this state.
   */
  private transition(g: GroupState, event: SecondaryGroupEvent, refusal?: (code: string) => string): SecondaryGroupState | null {
    const next = secondaryGroupTransition(g.state, event, refusal);
    if (next !== null) g.state = next;
    return next;
  }

  private group(name: string): GroupState {
    const g = this.groups.get(name);
    if (!g) throw tmError("TM_NO_GROUP", `group '${name}' has no secondary volume on subsystem #${this.o.id}`, { group: name, subsystem: this.o.id });
    return g;
  }

  /**
   * Step 1 (fencing): durably raise the group's generation and stop taking
   * frames of older ones; only then report 111. Everything received before
   * is committed first, so no SYNC lifts 111 after the RCM has read it.
   */
  async fence(name: string, generation: number, by: string, reason: string) {
    const g = this.group(name);
    await this.flushCommits();
    const event = fenceEvent(generation, g.generation);
    // Null for a generation not above the group's: nothing changes, 111 and 112 are reported again.
    const state = secondaryGroupTransition(g.state, event);
    if (state !== null) {
      // The first suspension's cause is what an admin needs; a re-fence keeps it.
      if (replicating(g.state)) {
        g.reason = reason;
        g.suspendedBy = by;
      }
      this.db
        .prepare("UPDATE grp SET generation = ?, state = ?, reason = ?, suspended_by = ?, changed_at_ms = ? WHERE name = ?")
        .run(generation, state, g.reason, g.suspendedBy, this.o.runtime.nowMs(), name);
      // The RCM reads 111 only after the raise is durable, power cuts included.
      durableBarrier(this.db);
      g.generation = generation;
      this.transition(g, event);
      this.o.logger.warn({ group: name, generation, by, reason }, "group fenced: frames of older generations are refused");
      for (const [p, l] of this.links) if (g.times.first.has(p)) l.close();
    }
    return this.timesReport(g);
  }

  private timesReport(g: GroupState) {
    return {
      group: g.name,
      subsystem: this.o.id,
      generation: g.generation,
      state: g.state,
      first: Object.fromEntries([...g.times.first].map(([p, t]) => [String(p), t.toString()])),
      second: g.times.second.toString(),
      synchronizedTs: g.synchronizedTs?.toString() ?? null,
      resync: this.resyncReport(g),
    };
  }

  /**
   * For the cut of a suspension or takeover (resyncCut, docs/resync.md):
   * the image this secondary rests at or holds (a resync's floor, or the
   * synchronized time of a suspension), and the barrier once known.
   */
  private resyncReport(g: GroupState): { floor: string | null; barrier: string | null } {
    const hold = g.times.hold;
    if (hold) {
      const c = barrierOf(g.times.first, hold);
      return { floor: hold.floor.toString(), barrier: c === null ? null : c.toString() };
    }
    return { floor: g.synchronizedTs !== null ? g.synchronizedTs.toString() : null, barrier: null };
  }

  /** Dry run: what applying Ts would drop, per volume, without changing anything. */
  preview(name: string, ts: bigint) {
    const g = this.group(name);
    const rows = this.db
      .prepare("SELECT volume, count(*) AS n, coalesce(sum(len), 0) AS b, max(ts) AS m FROM rcr WHERE grp = ? AND ts > ? GROUP BY volume")
      .safeIntegers(true)
      .all(name, ts) as { volume: string; n: bigint; b: bigint; m: bigint }[];
    const keep = this.db.prepare("SELECT count(*) AS n FROM rcr WHERE grp = ? AND ts <= ?").get(name, ts) as { n: number };
    return {
      ...this.timesReport(g),
      wouldApply: keep.n,
      volumes: [...this.volumes.values()]
        .filter((b) => b.group === name)
        .map((b) => {
          const r = rows.find((x) => x.volume === b.volume.name);
          return { volume: b.volume.name, droppedWrites: Number(r?.n ?? 0n), droppedBytes: Number(r?.b ?? 0n), newestDroppedTs: r ? r.m.toString() : null };
        }),
    };
  }

  /**
   * Steps 604-606: 112 = Ts; RCRs with ts <= Ts are applied, the rest become
   * bitmap blocks and are dropped (Figs. 7C-7F). Idempotent: run again with
   * the same Ts it reports the same outcome and changes nothing.
   */
  async applySynchronizedTime(name: string, generation: number, ts: bigint) {
    const g = this.group(name);
    const notFenced = () => `group '${name}' on subsystem #${this.o.id} is ${g.state} at generation ${g.generation}, not fenced at ${generation}`;
    // Refused where the group takes frames; where it is fenced, the state stays.
    this.transition(g, "apply-ts", notFenced);
    if (generation !== g.generation) throw tmError("TM_NOT_FENCED", notFenced(), { group: name, subsystem: this.o.id, state: g.state, held: g.generation, asked: generation });
    if (g.synchronizedTs !== null && g.synchronizedTs !== ts) {
      throw tmError("TM_TS_CONFLICT", `group '${name}' on subsystem #${this.o.id} was already brought to Ts ${g.synchronizedTs}, not ${ts}`, {
        group: name,
        subsystem: this.o.id,
        ts: String(g.synchronizedTs),
        asked: String(ts),
      });
    }
    if (g.synchronizedTs === null) {
      // DESIGN.md: a primary announces T only once all its RCRs <= T are acknowledged, so 112 <= Ts.
      assert(g.times.second <= ts, `secondary #${this.o.id} group ${name}: 112 ${g.times.second} above Ts ${ts}`);
      const queued = (
        this.db
          .prepare("SELECT id, ts, primary_id, seq, volume, off, len FROM rcr WHERE grp = ?")
          .safeIntegers(true)
          .all(name) as { id: bigint; ts: bigint; primary_id: bigint; seq: bigint; volume: string; off: bigint; len: bigint }[]
      ).map((r) => ({ id: r.id, ts: r.ts, primaryId: Number(r.primary_id), seq: Number(r.seq), volume: r.volume, offset: Number(r.off), length: Number(r.len) }));
      const { drop } = splitAtSynchronizedTime(queued, ts);
      let blocks = 0;
      let bytes = 0;
      try {
        this.db.transaction(() => {
          for (const r of drop) {
            blocks += this.bitmap.markNow(r.volume, r.offset, r.length);
            bytes += r.length;
            this.stmts.del.run(r.id);
          }
          this.stmts.setSecond.run(ts, name);
          // A resync cut short rests at this cut; the next one starts from here.
          this.db
            .prepare("UPDATE grp SET synchronized_ts = ?, resync_floor = NULL, dropped = dropped + ?, dropped_bytes = dropped_bytes + ? WHERE name = ?")
            .run(ts, drop.length, bytes, name);
          this.db.prepare("DELETE FROM copied WHERE grp = ?").run(name);
        })();
        // What the RCM is told is done survives a power cut: 112 never falls back from Ts.
        durableBarrier(this.db);
      } catch (err) {
        this.bitmap.reset();
        throw err;
      }
      this.segments.collect((this.stmts.oldestSeg.get() as number | null | undefined) ?? null);
      // Dropped rows' ids may be issued again: no payload kept for them may outlive them.
      this.recent.clear();
      g.times = { first: g.times.first, second: ts, hold: null };
      g.synchronizedTs = ts;
      g.dropped += drop.length;
      g.droppedBytes += bytes;
      this.o.logger.warn({ group: name, ts: ts.toString(), dropped: drop.length, bitmapBlocks: blocks }, "group brought to the synchronized time");
    }
    const appliedBefore = g.applied;
    await this.drainedThrough(name, ts);
    return {
      ...this.timesReport(g),
      applied: g.applied,
      appliedNow: g.applied - appliedBefore,
      dropped: g.dropped,
      droppedBytes: g.droppedBytes,
      bitmapBlocks: [...this.volumes.values()].filter((b) => b.group === name).reduce((n, b) => n + this.bitmap.count(b.volume.name), 0),
    };
  }

  /**
   * A resync starts (docs/resync.md, step 2): host writes stop (after a
   * takeover), 112 is held at the synchronized time the group rests at, and
   * frames of the new generation are taken. Answers with the bitmap, which
   * stays until the barrier is passed, so a resync cut short loses nothing.
   * Idempotent for the same generation.
   */
  async resyncBegin(name: string, generation: number, reverse = false) {
    const g = this.group(name);
    const event = resyncBeginEvent(generation, g.generation);
    const notSynchronized = () => `group '${name}' on subsystem #${this.o.id} is ${g.state} and does not rest at a synchronized time; suspend it first`;
    const out = secondaryGroupOutcome(g.state, event);
    // The resync under way, asked again (the table allows that only while resyncing).
    const begun = out.kind === "to" && out.to === g.state;
    // Anything else needs the group at rest at a synchronized time (apply-ts since the last resync).
    if (!begun && g.synchronizedTs === null) throw tmError("TM_NOT_SYNCHRONIZED", notSynchronized(), { group: name, subsystem: this.o.id, state: g.state });
    const floor = g.synchronizedTs;
    // Host writes stop before the bitmap is read: one in flight marks its block first.
    const next = this.transition(g, event, (code) =>
      code === "TM_GENERATION"
        ? `group '${name}' on subsystem #${this.o.id} is at generation ${g.generation}; a resync needs a newer one than ${generation}`
        : notSynchronized(),
    );
    assert(next !== null, `secondary #${this.o.id}: a resync request is never ignored`);
    if (!begun) {
      assert(floor !== null, `secondary #${this.o.id} group ${name}: a resync begins from a synchronized time`);
      if (this.hostWrites > 0) await new Promise<void>((r) => this.hostIdle.push(r));
      this.db.transaction(() => {
        this.db
          .prepare(
            "UPDATE grp SET generation = ?, state = ?, resync_floor = ?, synchronized_ts = NULL, reason = NULL, suspended_by = NULL, changed_at_ms = ? WHERE name = ?",
          )
          .run(generation, next, floor, this.o.runtime.nowMs(), name);
        this.db.prepare("DELETE FROM copied WHERE grp = ?").run(name);
      })();
      durableBarrier(this.db);
      g.generation = generation;
      g.times = startHold(g.times, floor);
      g.synchronizedTs = null;
      g.reason = null;
      g.suspendedBy = null;
      this.o.logger.warn({ group: name, generation, floor: floor.toString(), reverse }, "resync begins: 112 held at the synchronized time until the barrier");
    }
    return {
      ...this.timesReport(g),
      bitmap: Object.fromEntries(this.volumesOf(name).map((v) => [v, toRuns(this.bitmap.blocks(v))])),
    };
  }

  /** Step 7G: hosts may write the secondary volumes; every write is marked in the bitmap. */
  takeover(name: string, generation: number) {
    const g = this.group(name);
    const notSynchronized = () => `group '${name}' on subsystem #${this.o.id} has not been brought to a synchronized time at generation ${generation}`;
    if (g.synchronizedTs === null || generation !== g.generation) throw tmError("TM_NOT_SYNCHRONIZED", notSynchronized(), { group: name, subsystem: this.o.id, asked: generation });
    // Decided before the row is written, changed here once it is durable.
    const next = secondaryGroupTransition(g.state, "takeover", notSynchronized);
    assert(next !== null, `secondary #${this.o.id}: a takeover is never ignored`);
    if (next !== g.state) {
      this.db.prepare("UPDATE grp SET state = ?, changed_at_ms = ? WHERE name = ?").run(next, this.o.runtime.nowMs(), name);
      durableBarrier(this.db);
      this.transition(g, "takeover");
      this.o.logger.warn({ group: name }, "takeover: secondary volumes are read-write for hosts");
    }
    return {
      ...this.timesReport(g),
      volumes: [...this.volumes.values()].filter((b) => b.group === name).map((b) => b.volume.name),
    };
  }

  private drainedThrough(name: string, ts: bigint): Promise<void> {
    const pending = () => (this.stmts.countDue.get(name, ts) as { n: bigint }).n > 0n;
    if (!pending()) return Promise.resolve();
    return new Promise((resolve) => {
      this.appliedWaiters.push({ group: name, ts, resolve });
      this.kickApplier();
    });
  }

  private wakeAppliedWaiters(): void {
    for (let i = this.appliedWaiters.length - 1; i >= 0; i--) {
      const w = this.appliedWaiters[i];
      if ((this.stmts.countDue.get(w.group, w.ts) as { n: bigint }).n === 0n) {
        this.appliedWaiters.splice(i, 1);
        w.resolve();
      }
    }
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
        resync: g.times.hold ? { ...this.resyncReport(g), copiedFrom: [...g.times.hold.copied.keys()] } : null,
        applyError: this.applyError,
        suspendedBy: g.suspendedBy,
        dropped: g.dropped,
        droppedBytes: g.droppedBytes,
        bitmapBlocks: [...this.volumes.values()].filter((b) => b.group === g.name).reduce((n, b) => n + this.bitmap.count(b.volume.name), 0),
        received: this.received,
        duplicates: this.duplicates,
        links: [...this.links.keys()],
      };
    });
  }
}

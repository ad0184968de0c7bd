// The secondary's receiving end of its primaries' links: checks each RCR,
// SYNC and COPIED frame, commits what arrived since the last commit to the
// RCR queue in one transaction (group commit), and acknowledges it once the
// queue segment and the WAL are fdatasynced. Invariants: nothing is
// acknowledged, no 111/112 raised and no barrier passed on the strength of a
// commit a power cut could take back; a fenced group takes no frame.
import type { Logger } from "pino";
import { crc32c } from "@node-rs/crc32";
import type { Db } from "../state/database.ts";
import type { StateStore } from "../state/store.ts";
import type { BitmapWriter } from "../state/bitmap-writer.ts";
import type { PayloadCache } from "../state/payload-cache.ts";
import type { PayloadSegments } from "../state/payload-segments.ts";
import { describeWireError, VERIFY_BLOCK_BYTES, WIRE_ERROR, type Frame, type RcrRecord, type WireErrorName } from "../replication/frames.ts";
import type { FrameLink } from "../replication/frame-link.ts";
import type { Runtime } from "../runtime/runtime.ts";
import { failedFile, stateFileName, type DiskGuard } from "../state/disk-guard.ts";
import type { NegativeControls } from "../runtime/controls.ts";
import { assert } from "../invariant.ts";
import { onCopied, onSync, type GroupTimes, type SyncOutcome } from "./time-parameters.ts";
import { replicating } from "./group-state.ts";
import { transition, type GroupState, type SecondaryBinding } from "./engine-state.ts";
import { OP_VERIFY, OP_WRITE, OP_ZERO, type QueueStatements } from "./rcr-queue.ts";

/** What the receiver uses of the engine that owns it (secondary.ts). */
export interface ReceiverContext {
  id: number;
  logger: Logger;
  runtime: Runtime;
  controls: NegativeControls | undefined;
  db: Db;
  store: Pick<StateStore, "syncWal">;
  stmts: Pick<QueueStatements, "insert" | "setSeq" | "setFirst" | "setCopied" | "setSecond">;
  segments: PayloadSegments;
  bitmap: Pick<BitmapWriter, "reset">;
  /** Payloads of rows just queued, for the applier. */
  recent: PayloadCache<bigint>;
  groups: ReadonlyMap<string, GroupState>;
  volumes: ReadonlyMap<string, SecondaryBinding>;
  stopped(): boolean;
  /** Inside the commit's transaction: a group whose barrier is passed leaves its resync (procedure-steps.ts). */
  endResync(group: string): void;
  /** 112 rose: the applier has rows due. */
  kickApplier(): void;
  /** The state disk: while it is full, frames of groups are not taken (disk-guard.ts). */
  disk?: DiskGuard;
}

type Work =
  | { kind: "rcr"; link: FrameLink; primaryId: number; group: string; records: RcrRecord[] }
  | { kind: "sync" | "copied"; group: string; primaryId: number; t: bigint; generation: number };

/** What one commit changes: gathered inside its transaction, in effect once it is durable. */
interface CommitDraft {
  /** Per primary that sent RCRs, the link its ack goes to. */
  ackTo: Map<number, FrameLink>;
  seqChanged: Set<number>;
  /** The seqs this commit queues: acknowledged once it is durable. */
  committed: Map<number, number>;
  groupsChanged: Set<string>;
  /** Groups whose resync barrier this commit passes. */
  lifted: Set<string>;
  /** 112 rose somewhere: the applier has rows due. */
  released: boolean;
  /** The new times of each group this commit changes. */
  next: Map<string, GroupTimes>;
}

export class Receiver {
  /** Per primary: the highest seq committed to the RCR queue (maybe not yet durable). */
  private readonly lastSeq = new Map<number, number>();
  /**
   * Per primary: the highest seq durably queued, the only one ever
   * acknowledged. Known (durableKnown) once the state loaded at start is
   * durable: after a kill -9 the WAL may hold commits no fdatasync covered.
   */
  private readonly durableSeq = new Map<number, number>();
  private durableKnown = false;
  /** start()'s syncs of what the queue held at load; settled once durableKnown is set. */
  private loadedDurable: Promise<void> = Promise.resolve();
  /** What the queue held when this incarnation loaded it: durable with the first WAL sync. */
  private loadedSeq = new Map<number, number>();
  /** Links attached before durableSeq was known: they get their first ack then. */
  private attachedEarly: [FrameLink, number][] = [];
  private readonly links = new Map<number, FrameLink>();
  private work: Work[] = [];
  private scheduled = false;
  private committing: Promise<void> | null = null;
  received = 0;
  duplicates = 0;
  /** Links dropped because a frame came while the state disk was full. */
  refusedWhileFull = 0;

  constructor(private readonly c: ReceiverContext) {}

  /** Whether a commit is waiting for its fdatasyncs (the queue segment must stay open). */
  get busy(): boolean {
    return this.committing !== null;
  }

  /** The primaries with a link attached now. */
  linkIds(): number[] {
    return [...this.links.keys()];
  }

  /** Closes the links of the primaries `which` names, or every link. */
  closeLinks(which?: (primaryId: number) => boolean): void {
    for (const [p, l] of this.links) if (!which || which(p)) l.close();
  }

  /** Each primary's last seq as the queue holds it (at load, and after a failed commit). */
  reloadSeqs(): void {
    this.lastSeq.clear();
    for (const r of this.c.db.prepare("SELECT primary_id, last_seq FROM link_seq").all() as { primary_id: number; last_seq: number }[]) {
      this.lastSeq.set(r.primary_id, r.last_seq);
    }
  }

  /**
   * What the queue held at start is acknowledged only once it is durable:
   * after a kill -9, both its last rows (in the WAL) and their payloads (in
   * the queue segments) may still be pages no fdatasync covered, and a power
   * cut then would take back what this incarnation acknowledged.
   */
  start(): Promise<void> {
    this.loadedSeq = new Map(this.lastSeq);
    const segments = this.c.controls?.restartAcksUnsyncedSegments ? Promise.resolve() : this.c.segments.syncAsync();
    this.loadedDurable = Promise.all([segments, this.c.store.syncWal()]).then(
      () => this.markDurable(new Map()),
      (err: Error) => assert(false, `secondary #${this.c.id}: fdatasync of the RCR queue failed at start (${err.message}); stopping rather than acknowledge what may not be on disk`),
    );
    return this.loadedDurable;
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
    if (this.c.controls?.ackBeforeDurable) link.send({ type: "ack", seq: this.lastSeq.get(primaryId) ?? 0 });
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
    if (this.c.stopped()) return;
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
    this.c.logger.warn({ peer: primaryId, group, code, why: describeWireError(code), err: message }, "frame refused; dropping link");
    link.send({ type: "error", code, group, message });
    link.close();
  }

  private onFrame(link: FrameLink, primaryId: number, f: Frame): void {
    if (this.c.stopped()) return;
    if (this.c.disk?.full && (f.type === "rcr" || f.type === "sync" || f.type === "copied")) {
      // The queue cannot take it, and a frame skipped would leave a gap in the
      // stream: the link goes, and the primary resends from its last ack once
      // this disk has room. The guard reported the state once; status shows it.
      this.refusedWhileFull++;
      link.close();
      return;
    }
    if (f.type === "rcr" || f.type === "sync" || f.type === "copied") {
      const g = this.c.groups.get(f.group);
      if (!g) return this.refuse(link, primaryId, "noGroup", f.group, `group '${f.group}' has no secondary volume on subsystem #${this.c.id}`);
      if (!g.times.first.has(primaryId)) {
        return this.refuse(link, primaryId, "notPrimary", f.group, `subsystem #${primaryId} is not a primary of group '${f.group}'`);
      }
      if ((f.generation !== g.generation || !replicating(g.state)) && !this.c.controls?.noFence) {
        // Fencing: a suspended group takes nothing more from its primaries.
        return this.refuse(
          link,
          primaryId,
          f.generation !== g.generation ? "generation" : "notReplicating",
          f.group,
          `group '${f.group}' is ${g.state} at generation ${g.generation} on subsystem #${this.c.id}; frame carries generation ${f.generation}`,
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
    const b = this.c.volumes.get(r.volume);
    if (!b || b.group !== group || b.primaryId !== primaryId) {
      return `RCR seq ${r.seq}: volume '${r.volume}' is not a secondary of primary #${primaryId} in group '${group}' on subsystem #${this.c.id}`;
    }
    if (r.primaryId !== primaryId) return `RCR seq ${r.seq} names primary #${r.primaryId} on the link of #${primaryId}`;
    if (r.offset % 512 !== 0 || r.length % 512 !== 0 || r.length === 0 || r.offset + r.length > b.volume.sizeBytes) {
      return `RCR seq ${r.seq}: range ${r.offset}+${r.length} is not 512-aligned inside volume '${r.volume}' (${b.volume.sizeBytes} bytes)`;
    }
    if (r.op === "write" && (!r.data || r.data.length !== r.length)) return `RCR seq ${r.seq}: data length differs from length ${r.length}`;
    if (r.op === "verify" && r.offset % VERIFY_BLOCK_BYTES !== 0) return `RCR seq ${r.seq}: verify range ${r.offset}+${r.length} is not 4 KiB-aligned`;
    return null;
  }

  private push(w: Work): void {
    this.work.push(w);
    this.schedule();
  }

  private schedule(): void {
    if (this.scheduled || this.committing) return;
    this.scheduled = true;
    this.c.runtime.setImmediate(() => this.commit());
  }

  /** Until everything received so far is committed and durable (a fence needs that). */
  async flushCommits(): Promise<void> {
    for (;;) {
      if (!this.committing && this.work.length > 0) this.commit();
      if (!this.committing) return;
      await this.committing;
    }
  }

  /**
   * Payloads of the new RCRs (resends dropped) go to the queue's segment
   * first, one writev; then, an ack letting the primary forget the RCR, the
   * segment and the WAL are synced (the queue survives a power cut). Returns
   * where each new write's payload went.
   */
  private appendPayloads(work: readonly Work[]): Map<RcrRecord, { seg: number; off: number }> {
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
    // A verify record's hashes are a payload like a write's.
    const payloads = [...fresh].filter((r) => r.op !== "zero").map((r) => r.data!);
    const refs = this.c.segments.append(payloads);
    const refOf = new Map<RcrRecord, { seg: number; off: number }>();
    let ri = 0;
    for (const r of fresh) if (r.op !== "zero") refOf.set(r, refs[ri++]);
    return refOf;
  }

  /**
   * Group commit of everything received since the last one; then, once the
   * queue segment and the WAL are fdatasynced (in the thread pool, so the
   * loop goes on receiving), the new times take effect and the acks go out.
   * Commits run one at a time: frames that arrive meanwhile form the next.
   */
  private commit(): void {
    this.scheduled = false;
    if (this.c.stopped() || this.committing || this.work.length === 0) return;
    const work = this.work;
    this.work = [];
    const d: CommitDraft = {
      ackTo: new Map(),
      seqChanged: new Set(),
      committed: new Map(),
      groupsChanged: new Set(),
      lifted: new Set(),
      released: false,
      next: new Map(),
    };
    try {
      const refOf = this.appendPayloads(work);
      this.c.db.transaction(() => {
        for (const w of work) {
          if (w.kind === "rcr") this.queueRecords(w, refOf, d);
          else this.raiseTime(w, d);
        }
        for (const p of d.seqChanged) {
          this.c.stmts.setSeq.run(p, this.lastSeq.get(p)!);
          d.committed.set(p, this.lastSeq.get(p)!);
        }
        for (const g of d.groupsChanged) this.c.stmts.setSecond.run(d.next.get(g)!.second, g);
        // The barrier is passed: every copy sits at or below 112 now (applied,
        // or redone after a crash), so what differed no longer does.
        for (const g of d.lifted) this.c.endResync(g);
      })();
    } catch (err) {
      // The queue could not be written (disk full, I/O error): nothing was
      // acknowledged, so the primaries resend after the links are dropped.
      // A full disk is reported by the guard, which then keeps frames out.
      const full = this.c.disk?.failed(err, failedFile(err, stateFileName(this.c.db.name)));
      this.c.logger.error({ err: (full ?? (err as Error)).message }, "RCR queue commit failed; dropping links so primaries resend");
      this.reloadSeqs();
      this.c.bitmap.reset();
      this.c.recent.clear();
      for (const l of this.links.values()) l.close();
      return;
    }
    // Nothing takes effect before it is durable: an RCR applied, or a 112
    // raised, on the strength of a commit a power cut could take back would
    // leave a volume ahead of the 112 it restarts with.
    // An ack is cumulative: it also covers the rows loaded at start, whose payloads may sit in a
    // segment that start()'s sync has not finished with yet; this commit's sync covers only the
    // segments it appended to (finding 29). Until that sync is done, acks wait for it.
    const loaded = this.durableKnown || this.c.controls?.commitAcksBeforeLoadedDurable ? [] : [this.loadedDurable];
    this.committing = Promise.all([this.c.segments.syncAsync(), this.c.store.syncWal(), ...loaded])
      .then(
        () => {
          for (const [g, t] of d.next) this.c.groups.get(g)!.times = t;
          for (const g of d.lifted) {
            transition(this.c.groups.get(g)!, "barrier-passed");
            this.c.logger.info({ group: g, second: d.next.get(g)!.second.toString() }, "resync complete: the barrier is passed, the group replicates");
          }
          this.markDurable(d.committed);
          for (const [p, link] of d.ackTo) link.send({ type: "ack", seq: d.committed.get(p)! });
          if (d.released) this.c.kickApplier();
        },
        (err: Error) => {
          // Linux may drop the pages of a failed fsync: what was committed cannot be trusted.
          assert(false, `secondary #${this.c.id}: fdatasync of the RCR queue failed (${err.message}); stopping rather than acknowledge what may not be on disk`);
        },
      )
      .finally(() => {
        this.committing = null;
        if (this.work.length > 0) this.schedule();
      });
  }

  /** Inside the commit's transaction: one frame's new RCRs become queue rows; resends are counted and skipped. */
  private queueRecords(w: Extract<Work, { kind: "rcr" }>, refOf: ReadonlyMap<RcrRecord, { seg: number; off: number }>, d: CommitDraft): void {
    let last = this.lastSeq.get(w.primaryId) ?? 0;
    for (const r of w.records) {
      if (r.seq <= last) {
        this.duplicates++;
        continue;
      }
      const ref = refOf.get(r);
      const row = this.c.stmts.insert.run(
        w.group,
        r.ts,
        w.primaryId,
        r.seq,
        r.volume,
        r.op === "write" ? OP_WRITE : r.op === "verify" ? OP_VERIFY : OP_ZERO,
        r.offset,
        r.length,
        ref?.seg ?? null,
        ref?.off ?? null,
        r.op !== "zero" ? crc32c(r.data!) : null,
      );
      if (r.op !== "zero") this.c.recent.add(BigInt(row.lastInsertRowid), r.data!);
      last = r.seq;
      this.received++;
    }
    this.lastSeq.set(w.primaryId, last);
    d.seqChanged.add(w.primaryId);
    d.ackTo.set(w.primaryId, w.link);
  }

  /** Inside the commit's transaction: a SYNC raises 111, a COPIED moves a resync's hold (time-parameters.ts). */
  private raiseTime(w: Extract<Work, { kind: "sync" | "copied" }>, d: CommitDraft): void {
    // A SYNC received before a fence is committed after it: never let it lift 111.
    const gs = this.c.groups.get(w.group)!;
    if ((w.generation !== gs.generation || !replicating(gs.state)) && !this.c.controls?.noFence) return;
    const timesOf = (g: string) => d.next.get(g) ?? this.c.groups.get(g)!.times;
    const out: SyncOutcome = w.kind === "sync" ? onSync(timesOf(w.group), w.primaryId, w.t) : onCopied(timesOf(w.group), w.primaryId, w.t);
    if (out.kind === "raised") {
      d.next.set(w.group, out.times);
      if (w.kind === "sync") this.c.stmts.setFirst.run(w.group, w.primaryId, w.t);
      else this.c.stmts.setCopied.run(w.group, w.primaryId, w.t);
      d.groupsChanged.add(w.group);
      if (out.release) d.released = true;
      if (out.lifted) d.lifted.add(w.group);
    }
  }
}

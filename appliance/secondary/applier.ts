// The secondary's applier: writes the disk request queue (RCR rows with
// ts <= 112) to the secondary volumes in (ts, primary id, seq) order, a batch
// at a time. Invariant: nothing with ts > 112 is ever applied. A crash
// mid-apply is finished by redo: rows leave the queue only after their volume
// writes are fdatasynced.
import type { Logger } from "pino";
import { crc32c } from "@node-rs/crc32";
import type { Volume } from "../../disks/volume.ts";
import type { Db } from "../state/database.ts";
import type { PayloadCache } from "../state/payload-cache.ts";
import type { PayloadSegments } from "../state/payload-segments.ts";
import type { StateStore } from "../state/store.ts";
import type { NegativeControls } from "../runtime/controls.ts";
import type { Runtime } from "../runtime/runtime.ts";
import { stateFileName, type DiskGuard } from "../state/disk-guard.ts";
import { assert, InvariantError } from "../invariant.ts";
import { storedPayloadBytes } from "../replication/frames.ts";
import type { GroupState, SecondaryBinding } from "./engine-state.ts";
import { OP_VERIFY, OP_WRITE, type QueueStatements } from "./rcr-queue.ts";
import type { VerifyCheck, VerifyOutcome } from "./verify-check.ts";

/** Rows applied per transaction. */
export const APPLY_BATCH_ROWS = 1024;
/** Bytes per batch: synchronous writes block the loop, so a batch stays short. */
export const APPLY_BATCH_BYTES = 4 * 1024 * 1024;

/** What a simulation watches of the applier. Called synchronously; never changes what the engine does. */
export interface SecondaryProbe {
  /** An RCR's volume write is issued, in apply order, with the 112 it was applied under. */
  applying?(e: { secondary: number; group: string; volume: string; offset: number; length: number; ts: bigint; primaryId: number; seq: number; second: bigint }): void;
}

/** What the applier uses of the engine that owns it (secondary.ts). */
export interface ApplierContext {
  id: number;
  logger: Logger;
  runtime: Runtime;
  probe: SecondaryProbe | undefined;
  db: Db;
  stmts: Pick<QueueStatements, "due" | "payload" | "oldestSeg" | "del" | "applied" | "countDue">;
  segments: PayloadSegments;
  /** Its WAL sync makes the deletes of applied rows durable before their segments go. */
  store: Pick<StateStore, "syncWal">;
  /** Payloads of rows just queued, kept by the receiver. */
  recent: PayloadCache<bigint>;
  groups: ReadonlyMap<string, GroupState>;
  volumes: ReadonlyMap<string, SecondaryBinding>;
  stopped(): boolean;
  /** The state disk: a queue delete it cannot take puts the subsystem in state-disk-full (disk-guard.ts). */
  disk?: DiskGuard;
  /** Compares VERIFY records with the volume at their stamp (docs/verify.md). */
  verify?: VerifyCheck;
  controls?: NegativeControls;
}

export class Applier {
  private applying = false;
  private applyAgain = false;
  private readonly appliedWaiters: { group: string; ts: bigint; resolve: () => void }[] = [];
  /** The last failure to write a secondary volume; the RCM suspends the group on it. */
  applyError: string | null = null;

  constructor(private readonly c: ApplierContext) {}

  /** Whether a batch may be reading a payload (the queue segment must stay open). */
  get busy(): boolean {
    return this.applying;
  }

  /** 112 rose, or a redo at start: apply what is due, now or right after the run under way. */
  kick(): void {
    if (this.applying) {
      this.applyAgain = true;
      return;
    }
    this.applying = true;
    void this.applyLoop();
  }

  /** Resolves once nothing with ts <= `ts` is left in the group's queue (the synchronized time's rows are applied). */
  drainedThrough(name: string, ts: bigint): Promise<void> {
    const pending = () => (this.c.stmts.countDue.get(name, ts) as { n: bigint }).n > 0n;
    if (!pending()) return Promise.resolve();
    return new Promise((resolve) => {
      this.appliedWaiters.push({ group: name, ts, resolve });
      this.kick();
    });
  }

  private wakeAppliedWaiters(): void {
    for (let i = this.appliedWaiters.length - 1; i >= 0; i--) {
      const w = this.appliedWaiters[i];
      if ((this.c.stmts.countDue.get(w.group, w.ts) as { n: bigint }).n === 0n) {
        this.appliedWaiters.splice(i, 1);
        w.resolve();
      }
    }
  }

  private async applyLoop(): Promise<void> {
    try {
      do {
        this.applyAgain = false;
        for (const g of this.c.groups.values()) {
          while (!this.c.stopped() && (await this.applyBatch(g)) > 0) {
            /* keep draining */
          }
        }
      } while (this.applyAgain && !this.c.stopped());
    } catch (err) {
      // A broken invariant is a bug, not an I/O error to retry: stop loudly.
      if (err instanceof InvariantError) return this.c.runtime.fatal(err);
      // A volume's own ENOSPC or EIO is the pair's (applyError); the state file's is the subsystem's.
      const volumeError = String((err as { code?: unknown }).code ?? "").startsWith("TM_VOLUME_");
      const full = volumeError ? null : this.c.disk?.failed(err, stateFileName(this.c.db.name));
      this.applyError = (full ?? (err as Error)).message;
      this.c.logger.error({ err: (err as Error).message }, "applying the disk request queue failed; retrying");
      this.c.runtime.setTimeout(() => this.kick(), 1000);
    } finally {
      this.applying = false;
      this.wakeAppliedWaiters();
    }
  }

  /** One batch of the disk request queue: volume writes, fdatasync, then delete. */
  private async applyBatch(g: GroupState): Promise<number> {
    const second = g.times.second;
    const rows = this.c.stmts.due.all(g.name, second, APPLY_BATCH_ROWS) as {
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
    const verified: VerifyOutcome[] = [];
    let bytes = 0;
    let written = 0;
    let maxTs = 0n;
    let n = 0;
    // In order, on this thread: a batch of page-cache writes costs far less
    // CPU as synchronous pwrites than as one thread-pool promise each, and
    // (ts, primary, seq) order comes for free. The fdatasync below is async.
    for (const r of rows) {
      assert(r.ts <= second, `secondary #${this.c.id} group ${g.name}: RCR ts ${r.ts} above 112 ${second}`);
      const b = this.c.volumes.get(r.volume);
      assert(b, `queued RCR for unknown volume ${r.volume}`);
      const off = Number(r.off);
      const len = Number(r.len);
      this.c.probe?.applying?.({ secondary: this.c.id, group: g.name, volume: r.volume, offset: off, length: len, ts: r.ts, primaryId: Number(r.primary_id), seq: Number(r.seq), second });
      const op = Number(r.op);
      if (op === OP_VERIFY) {
        // At its place in apply order: the volume holds exactly the writes
        // stamped before it (those of this batch are in the page cache).
        const check = this.c.verify;
        assert(check, `secondary #${this.c.id}: a VERIFY record needs the verify check`);
        verified.push(check.compare(g.name, r.volume, off, len, r.ts, this.payloadOf(r.id, g.name), await b.volume.read(off, len)));
        bytes += len;
        if (r.ts > maxTs) maxTs = r.ts;
        n++;
        if (bytes >= APPLY_BATCH_BYTES) break;
        continue;
      }
      if (op === OP_WRITE) b.volume.writeSync(off, this.payloadOf(r.id, g.name));
      // A zero run over a hole (an initial copy onto a new sparse file) has nothing to write.
      else if (b.volume.nextData(off) < off + len) await b.volume.writeZeroes(off, len);
      touched.add(b.volume);
      bytes += len;
      written += len;
      if (r.ts > maxTs) maxTs = r.ts;
      n++;
      if (bytes >= APPLY_BATCH_BYTES) break;
    }
    await Promise.all([...touched].map((v) => v.sync()));
    this.c.db.transaction(() => {
      for (let i = 0; i < n; i++) this.c.stmts.del.run(rows[i].id);
      this.c.stmts.applied.run(n, written, maxTs, g.name);
      if (verified.length > 0) this.c.verify!.record(verified);
    })();
    if (verified.length > 0) this.c.verify!.report(verified);
    const oldest = (this.c.stmts.oldestSeg.get() as number | null | undefined) ?? null;
    if (this.c.controls?.segmentsGoBeforeDurable) this.c.segments.collect(oldest);
    else this.c.segments.collectWhenDurable(oldest, () => this.c.store.syncWal());
    g.applied += n;
    g.appliedBytes += written;
    this.applyError = null;
    if (maxTs > g.lastAppliedTs) g.lastAppliedTs = maxTs;
    return n;
  }

  /** A queued RCR's payload: from memory, from its segment (checked against its CRC32C), or the row itself for rows of older versions. */
  private payloadOf(id: bigint, group: string): Buffer {
    const kept = this.c.recent.take(id);
    if (kept) return kept;
    const p = this.c.stmts.payload.get(id) as { data: Buffer | null; seg: number | null; seg_off: number | null; op: number; len: number; crc: number | null };
    if (p.data) return p.data;
    assert(p.seg !== null && p.seg_off !== null, `secondary #${this.c.id} group ${group}: RCR row ${id} has no payload`);
    const data = this.c.segments.read({ seg: p.seg, off: p.seg_off }, storedPayloadBytes(p.op, p.len));
    // The segment was synced before the row's commit: a mismatch is damage, not a crash.
    assert(crc32c(data) === p.crc, `secondary #${this.c.id} group ${group}: payload of RCR row ${id} fails its CRC32C (segment ${p.seg} at ${p.seg_off})`);
    return data;
  }
}

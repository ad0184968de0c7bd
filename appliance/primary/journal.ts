// The primary's journal in SQLite: every host write is committed here before
// its block reaches the primary volume, and stays until its secondary has
// acknowledged it and the volume write is durable. Group commit: appends made
// while a commit runs form the next transaction, so a burst of writes costs
// one transaction. The same transaction raises the stamp and seq floors and
// durably marks activity-log regions hot before their first write. Payloads
// go to append-only segment files (docs/segments.md), written before the
// rows that name them; a row carries its payload's CRC32C, so after a power
// cut an entry whose payload did not reach the disk is known and skipped
// (its region was hot, so its blocks are in the bitmap).
import { crc32c } from "@node-rs/crc32";
import type { Db } from "../state/database.ts";
import { durableBarrier } from "../state/database.ts";
import { PayloadSegments } from "../state/payload-segments.ts";
import type { NegativeControls } from "../runtime/controls.ts";
import { storedPayloadBytes } from "../replication/frames.ts";
import { PayloadCache } from "../state/payload-cache.ts";
import { FreshEntries } from "./fresh-entries.ts";
import type { StateStore } from "../state/store.ts";
import type { Runtime } from "../runtime/runtime.ts";
import { failedFile, stateFileName, type DiskGuard } from "../state/disk-guard.ts";

export const OP_WRITE = 1;
export const OP_ZERO = 2;
/** An online verify's record: the block hashes of a range at its stamp (docs/verify.md); never written to a volume. */
export const OP_VERIFY = 3;
/** Activity-log region: 4 MiB of a volume. */
export const ACTIVITY_REGION_BYTES = 4 * 1024 * 1024;
/**
 * Payloads of committed entries not yet read by their sender stay in memory
 * up to this many bytes: the sender normally takes an entry within a few
 * milliseconds of its commit, and reading it back from its segment (a pread
 * and a buffer per entry) cost 15% of the primary's CPU on 4 KiB writes.
 * Beyond it, and for resends, the segment is read.
 */
const RECENT_PAYLOAD_BYTES = 16 * 1024 * 1024;
/**
 * Per link, committed entries not yet handed to the sender stay in memory up
 * to these bounds, so the sender need not read its rows back from SQLite
 * (6% of the primary's CPU on 4 KiB writes). Their payloads are the ones the
 * payload cache holds too; beyond the bounds, and for resends, SQLite is read.
 */
const FRESH_BYTES_MAX = RECENT_PAYLOAD_BYTES / 2;
const FRESH_ENTRIES_MAX = 65_536;
/** Upper bound on entries per transaction, so one commit never stalls the loop long. */
export const COMMIT_ENTRIES_MAX = 4096;
/**
 * Seqs are leased this many at a time in a FULL (WAL-syncing) commit. The
 * sender streams entries whose NORMAL commit a power cut may take back; were
 * their seqs issued again after the restart, the secondary would drop the
 * new writes as duplicates. One fsync per lease, not per write.
 */
export const SEQ_LEASE_SPAN = 65536;

export interface JournalEntry {
  seq: number;
  ts: bigint;
  group: string;
  link: number;
  volume: string;
  target: string;
  op: typeof OP_WRITE | typeof OP_ZERO | typeof OP_VERIFY;
  offset: number;
  length: number;
  data: Buffer | null;
  /**
   * A resync's copy (docs/resync.md): read from the volume, never written to
   * it, so it turns no activity-log region hot.
   */
  copy?: boolean;
}

interface Waiting {
  entry: JournalEntry;
  resolve: () => void;
  reject: (err: Error) => void;
}

export class Journal {
  private batch: Waiting[] = [];
  private scheduled = false;
  private readonly hot = new Set<string>();
  private readonly insert;
  private readonly floors;
  private readonly leaseStmt;
  private seqLease = 0;
  private readonly markHot;
  private readonly readLinkStmt;
  private readonly trimStmt;
  private readonly coolStmt;
  /** Payload bytes in the journal (the primary caps it: journalBytesMax). */
  bytes = 0;
  private readonly sumStmt;
  /** Called after every commit with the highest committed seq. */
  onCommit: (lastSeq: number) => void = () => {};
  readonly segments: PayloadSegments;
  private readonly oldestSegStmt;
  /** Entries skipped at replay because their payload was torn (a power cut). */
  torn = 0;
  /** The torn rows the last replay found, until dropTornRows() removes them. */
  private tornRows: { seq: bigint; volume: string; offset: number; length: number }[] = [];
  /** Payloads of committed entries by seq, until the sender takes them. */
  private readonly recent = new PayloadCache<number>(RECENT_PAYLOAD_BYTES);
  /**
   * Per link, the highest seq ever committed: a sender that has sent that
   * far skips the query (it asks after every commit and every ack).
   */
  private readonly linkHigh = new Map<number, number>();
  /** Per link, the committed entries its sender has not taken yet (fresh-entries.ts). */
  private readonly fresh = new Map<number, FreshEntries<JournalEntry>>();

  private readonly db: Db;
  private readonly syncWal: () => Promise<void>;

  constructor(
    store: StateStore,
    private readonly runtime: Runtime,
    /** DESIGN.md's activity-log region; only a simulation scales it down. */
    private readonly regionBytes = ACTIVITY_REGION_BYTES,
    /** Told of every failed commit: a full disk fails the batch with ENOSPC for hosts (disk-guard.ts). */
    private readonly disk?: DiskGuard,
    private readonly controls?: NegativeControls,
    segmentBytes?: number,
  ) {
    this.db = store.db;
    const db = this.db;
    this.syncWal = () => store.syncWal();
    this.segments = new PayloadSegments(store.segments("journal"), segmentBytes);
    this.insert = db.prepare(
      "INSERT INTO journal (seq, ts, grp, link, volume, target, op, off, len, seg, seg_off, crc, copy) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    );
    this.oldestSegStmt = db.prepare("SELECT seg FROM journal WHERE seg IS NOT NULL ORDER BY seq LIMIT 1").pluck(true);
    this.floors = db.prepare("UPDATE stamp SET ts_floor = max(ts_floor, ?), seq_floor = max(seq_floor, ?) WHERE id = 1");
    this.leaseStmt = db.prepare("UPDATE stamp SET seq_lease = ? WHERE id = 1");
    this.seqLease = (db.prepare("SELECT seq_lease FROM stamp WHERE id = 1").get() as { seq_lease: number }).seq_lease;
    this.markHot = db.prepare("INSERT OR IGNORE INTO activity (volume, region) VALUES (?, ?)");
    // Rows as arrays: building an object per row cost three times as much.
    this.readLinkStmt = db
      .prepare("SELECT seq, ts, grp, target, op, off, len, data, seg, seg_off FROM journal WHERE link = ? AND seq > ? ORDER BY seq LIMIT ?")
      .safeIntegers(true)
      .raw(true);
    for (const [link, seq] of db.prepare("SELECT link, max(seq) FROM journal GROUP BY link").raw(true).all() as [number, number][]) {
      this.linkHigh.set(link, seq);
    }
    this.trimStmt = db.prepare("DELETE FROM journal WHERE link = ? AND seq <= ?");
    this.coolStmt = db.prepare("DELETE FROM activity WHERE volume = ? AND region = ?");
    this.sumStmt = db.prepare("SELECT coalesce(sum(len), 0) AS b FROM journal WHERE link = ? AND seq <= ? AND op = 1");
    this.recount();
    for (const r of db.prepare("SELECT volume, region FROM activity").all() as { volume: string; region: number }[]) {
      this.hot.add(`${r.volume}\u0000${r.region}`);
    }
  }

  /** Resolves once the entry is committed (in the WAL: it survives kill -9). */
  append(entry: JournalEntry): Promise<void> {
    return new Promise((resolve, reject) => {
      this.batch.push({ entry, resolve, reject });
      if (!this.scheduled) {
        this.scheduled = true;
        this.runtime.setImmediate(() => this.commit());
      }
    });
  }

  private commit(): void {
    this.scheduled = false;
    const batch = this.batch.splice(0, COMMIT_ENTRIES_MAX);
    if (this.batch.length > 0) {
      this.scheduled = true;
      this.runtime.setImmediate(() => this.commit());
    }
    if (batch.length === 0) return;
    const newRegions: [string, number][] = [];
    for (const { entry: e } of batch) {
      if (e.copy) continue;
      const first = Math.floor(e.offset / this.regionBytes);
      const last = Math.floor((e.offset + e.length - 1) / this.regionBytes);
      for (let r = first; r <= last; r++) {
        const key = `${e.volume}\u0000${r}`;
        if (!this.hot.has(key)) {
          this.hot.add(key);
          newRegions.push([e.volume, r]);
        }
      }
    }
    let maxTs = 0n;
    let maxSeq = 0;
    for (const { entry: e } of batch) if (e.seq > maxSeq) maxSeq = e.seq;
    const lease = maxSeq > this.seqLease ? maxSeq + SEQ_LEASE_SPAN : null;
    const full = newRegions.length > 0 || lease !== null;
    try {
      // Payloads first, in one writev: the rows that name them come after.
      const payloads: Buffer[] = [];
      for (const { entry: e } of batch) if (e.data) payloads.push(e.data);
      const refs = this.segments.append(payloads);
      // A region turning hot must be durable before any block of it reaches the
      // volume, and a new seq lease before any of its seqs leaves: such a commit
      // syncs the WAL. Not the payloads: a row whose payload a power cut took
      // fails its CRC at replay and goes, and its region is hot (in the bitmap).
      // Only FLUSH/FUA (barrier) needs them on disk.
      if (full) this.db.pragma("synchronous = FULL");
      this.db.transaction(() => {
        let i = 0;
        for (const { entry: e } of batch) {
          const ref = e.data ? refs[i++] : null;
          this.insert.run(e.seq, e.ts, e.group, e.link, e.volume, e.target, e.op, e.offset, e.length, ref?.seg ?? null, ref?.off ?? null, e.data ? crc32c(e.data) : null, e.copy ? 1 : 0);
          if (e.ts > maxTs) maxTs = e.ts;
        }
        for (const [v, r] of newRegions) this.markHot.run(v, r);
        this.floors.run(maxTs, maxSeq);
        if (lease !== null) this.leaseStmt.run(lease);
      })();
      if (lease !== null) this.seqLease = lease;
    } catch (err) {
      for (const [v, r] of newRegions) this.hot.delete(`${v}\u0000${r}`);
      const e = this.disk?.failed(err, failedFile(err, stateFileName(this.db.name))) ?? (err instanceof Error ? err : new Error(String(err)));
      for (const w of batch) w.reject(e);
      return;
    } finally {
      // A closed database cannot take the pragma back; the batch has failed already.
      if (full && this.db.open) this.db.pragma("synchronous = NORMAL");
    }
    for (const { entry: e } of batch) {
      if (!e.data) continue;
      // A verify record's hashes travel too, but only writes count against the journal's cap.
      if (e.op === OP_WRITE) this.bytes += e.length;
      // Seqs are committed in order, so the oldest the cache drops are the lowest seqs.
      this.recent.add(e.seq, e.data);
    }
    for (const { entry: e } of batch) {
      this.freshOf(e.link).push(e);
      if (e.seq > (this.linkHigh.get(e.link) ?? 0)) this.linkHigh.set(e.link, e.seq);
    }
    for (const w of batch) w.resolve();
    this.onCommit(maxSeq);
  }

  /**
   * Committed entries of one link after `afterSeq`, in seq order, up to
   * `limit` entries or until `bytesMax` payload bytes (at least one entry):
   * a backlog of 1 MiB writes must not be read into memory all at once.
   */
  readLink(link: number, afterSeq: number, limit: number, bytesMax = Number.POSITIVE_INFINITY): JournalEntry[] {
    const out: JournalEntry[] = [];
    let bytes = 0;
    if (afterSeq >= (this.linkHigh.get(link) ?? 0)) return out;
    const fresh = this.fresh.get(link)?.take(afterSeq, limit, bytesMax);
    if (fresh) {
      // Each payload is taken from the cache once, whichever way it is read.
      for (const e of fresh) this.recent.take(e.seq);
      return fresh;
    }
    type Row = [seq: bigint, ts: bigint, grp: string, target: string, op: bigint, off: bigint, len: bigint, data: Buffer | null, seg: bigint | null, segOff: bigint | null];
    for (const [rseq, ts, grp, target, op, off, len, rdata, seg, segOff] of this.readLinkStmt.iterate(link, afterSeq, limit) as IterableIterator<Row>) {
      const seq = Number(rseq);
      // Taken whether or not it is used: each payload is read from the cache once.
      const kept = this.recent.take(seq);
      let data = rdata ?? kept ?? null;
      if (data === null && seg !== null) data = this.segments.read({ seg: Number(seg), off: Number(segOff) }, storedPayloadBytes(Number(op), Number(len)));
      out.push({
        seq,
        ts,
        group: grp,
        link,
        volume: "",
        target,
        op: Number(op) as typeof OP_WRITE,
        offset: Number(off),
        length: Number(len),
        data,
      });
      bytes += data?.length ?? 0;
      // Leaving the loop early resets the statement.
      if (bytes >= bytesMax) break;
    }
    return out;
  }

  private freshOf(link: number): FreshEntries<JournalEntry> {
    let f = this.fresh.get(link);
    if (!f) {
      // Whatever the link committed before this moment is read from SQLite.
      f = new FreshEntries<JournalEntry>(this.linkHigh.get(link) ?? 0, FRESH_BYTES_MAX, FRESH_ENTRIES_MAX);
      this.fresh.set(link, f);
    }
    return f;
  }

  /**
   * Rows left SQLite other than by a trim (a suspension drops its group's
   * entries): every sender reads SQLite again for what is committed so far.
   */
  forgetFresh(): void {
    for (const [link, f] of this.fresh) f.reset(this.linkHigh.get(link) ?? 0);
  }

  /** The highest seq ever committed on a link (0: none). */
  highestOn(link: number): number {
    return this.linkHigh.get(link) ?? 0;
  }

  /** Drops entries that are acknowledged and durable on the volume, per link, in one transaction. */
  trim(upTo: ReadonlyMap<number, number>): void {
    this.db.transaction(() => {
      for (const [link, seq] of upTo) {
        this.bytes -= (this.sumStmt.get(link, seq) as { b: number }).b;
        this.trimStmt.run(link, seq);
      }
    })();
    for (const [link, seq] of upTo) this.fresh.get(link)?.trimmed(seq);
    // The trim is a NORMAL commit: its segments go once a WAL sync covers it.
    const seg = this.oldestSegStmt.get() as number | null | undefined;
    if (this.controls?.segmentsGoBeforeDurable) this.segments.collect(seg ?? null);
    else this.segments.collectWhenDurable(seg ?? null, () => this.syncWal());
  }

  /**
   * Segments below the oldest entry's are free; only after a barrier (else
   * collectWhenDurable, as trim does). Payloads are appended in seq
   * order, so segments only grow with seq and one lookup by the primary key
   * finds the oldest in use.
   */
  collectSegments(): void {
    const seg = this.oldestSegStmt.get() as number | null | undefined;
    this.segments.collect(seg ?? null);
  }

  /** Cools regions with no journal entry left; they are marked hot again on their next write. */
  cool(regions: Iterable<[string, number]>): void {
    this.db.transaction(() => {
      for (const [v, r] of regions) {
        this.coolStmt.run(v, r);
        this.hot.delete(`${v}\u0000${r}`);
      }
    })();
  }

  /** After entries left by another path (a suspended group's): count again. */
  recount(): void {
    this.bytes = (this.db.prepare("SELECT coalesce(sum(len), 0) AS b FROM journal WHERE op = 1").get() as { b: number }).b;
  }

  isHot(volume: string, region: number): boolean {
    return this.hot.has(`${volume}\u0000${region}`);
  }

  /** Every entry, oldest first: replayed onto the volumes after a restart. */
  *replay(): IterableIterator<JournalEntry & { volume: string }> {
    const stmt = this.db
      .prepare("SELECT seq, ts, grp, link, volume, target, op, off, len, data, seg, seg_off, crc, copy FROM journal ORDER BY seq")
      .safeIntegers(true);
    const rows = stmt.all() as Record<string, unknown>[];
    for (const r of rows) {
      let data = r.data as Buffer | null;
      if (data === null && r.seg !== null) {
        const len = storedPayloadBytes(Number(r.op), Number(r.len));
        try {
          data = this.segments.read({ seg: Number(r.seg), off: Number(r.seg_off) }, len);
        } catch {
          data = null;
        }
        if (data === null || crc32c(data) !== Number(r.crc)) {
          // The row reached the disk, its payload did not (a power cut between a
          // NORMAL commit and the page cache's writeback). The row goes, and its
          // blocks go back into the bitmap (dropTornRows): a host write's region
          // is hot anyway, but a resync's copy is in no activity region, and its
          // bits left the bitmap when it was journaled.
          this.torn++;
          this.tornRows.push({ seq: r.seq as bigint, volume: r.volume as string, offset: Number(r.off), length: Number(r.len) });
          continue;
        }
      }
      yield {
        seq: Number(r.seq),
        ts: r.ts as bigint,
        group: r.grp as string,
        link: Number(r.link),
        volume: r.volume as string,
        target: r.target as string,
        op: Number(r.op) as typeof OP_WRITE,
        offset: Number(r.off),
        length: Number(r.len),
        data,
        copy: Number(r.copy) === 1,
      };
    }
  }

  /**
   * After replay: each torn row goes, and `mark` puts its blocks back in the
   * bitmap, in one transaction (a crash in between must not drop the row
   * without its bits). The caller makes it durable before serving.
   */
  dropTornRows(mark: (volume: string, offset: number, length: number) => void): number {
    const rows = this.tornRows;
    this.tornRows = [];
    if (rows.length === 0) return 0;
    const del = this.db.prepare("DELETE FROM journal WHERE seq = ?");
    try {
      this.db.transaction(() => {
        for (const r of rows) {
          mark(r.volume, r.offset, r.length);
          del.run(r.seq);
        }
      })();
    } finally {
      this.forgetFresh();
    }
    return rows.length;
  }

  /** Where stamps and seqs resume after a restart: above everything issued, leased seqs included. */
  floorsNow(): { tsFloor: bigint; seqFloor: number } {
    const r = this.db.prepare("SELECT ts_floor, seq_floor, seq_lease FROM stamp WHERE id = 1").safeIntegers(true).get() as {
      ts_floor: bigint;
      seq_floor: bigint;
      seq_lease: bigint;
    };
    return { tsFloor: r.ts_floor, seqFloor: Number(r.seq_floor > r.seq_lease ? r.seq_floor : r.seq_lease) };
  }

  raiseTsFloor(ts: bigint): void {
    this.floors.run(ts, 0);
  }

  counts(): { entries: number; bytes: number; hotRegions: number } {
    const r = this.db.prepare("SELECT count(*) AS n, coalesce(sum(len), 0) AS b FROM journal").get() as { n: number; b: number };
    return { entries: r.n, bytes: r.b, hotRegions: this.hot.size };
  }

  /** FLUSH/FUA: every commit so far is on stable storage, payloads included. */
  barrier(): void {
    this.segments.sync();
    durableBarrier(this.db);
  }
}

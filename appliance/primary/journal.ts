// The primary's journal in SQLite: every host write is committed here before
// its block reaches the primary volume, and stays until its secondary has
// acknowledged it and the volume write is durable. Group commit: appends made
// while a commit runs form the next transaction, so a burst of writes costs
// one transaction. The same transaction raises the stamp and seq floors and
// durably marks activity-log regions hot before their first write.
import type { Db } from "../state/database.ts";
import { durableBarrier } from "../state/database.ts";

export const OP_WRITE = 1;
export const OP_ZERO = 2;
/** Activity-log region: 4 MiB of a volume. */
export const ACTIVITY_REGION_BYTES = 4 * 1024 * 1024;
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
  op: typeof OP_WRITE | typeof OP_ZERO;
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

  constructor(private readonly db: Db) {
    this.insert = db.prepare(
      "INSERT INTO journal (seq, ts, grp, link, volume, target, op, off, len, data) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    );
    this.floors = db.prepare("UPDATE stamp SET ts_floor = max(ts_floor, ?), seq_floor = max(seq_floor, ?) WHERE id = 1");
    this.leaseStmt = db.prepare("UPDATE stamp SET seq_lease = ? WHERE id = 1");
    this.seqLease = (db.prepare("SELECT seq_lease FROM stamp WHERE id = 1").get() as { seq_lease: number }).seq_lease;
    this.markHot = db.prepare("INSERT OR IGNORE INTO activity (volume, region) VALUES (?, ?)");
    this.readLinkStmt = db
      .prepare("SELECT seq, ts, grp, target, op, off, len, data FROM journal WHERE link = ? AND seq > ? ORDER BY seq LIMIT ?")
      .safeIntegers(true);
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
        setImmediate(() => this.commit());
      }
    });
  }

  private commit(): void {
    this.scheduled = false;
    const batch = this.batch.splice(0, COMMIT_ENTRIES_MAX);
    if (this.batch.length > 0) {
      this.scheduled = true;
      setImmediate(() => this.commit());
    }
    if (batch.length === 0) return;
    const newRegions: [string, number][] = [];
    for (const { entry: e } of batch) {
      if (e.copy) continue;
      const first = Math.floor(e.offset / ACTIVITY_REGION_BYTES);
      const last = Math.floor((e.offset + e.length - 1) / ACTIVITY_REGION_BYTES);
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
      // A region turning hot must be durable before any block of it reaches the
      // volume, and a new seq lease before any of its seqs leaves: such a commit
      // syncs the WAL. Later writes to hot regions under the lease do not.
      if (full) this.db.pragma("synchronous = FULL");
      this.db.transaction(() => {
        for (const { entry: e } of batch) {
          this.insert.run(e.seq, e.ts, e.group, e.link, e.volume, e.target, e.op, e.offset, e.length, e.data);
          if (e.ts > maxTs) maxTs = e.ts;
        }
        for (const [v, r] of newRegions) this.markHot.run(v, r);
        this.floors.run(maxTs, maxSeq);
        if (lease !== null) this.leaseStmt.run(lease);
      })();
      if (lease !== null) this.seqLease = lease;
    } catch (err) {
      for (const [v, r] of newRegions) this.hot.delete(`${v}\u0000${r}`);
      const e = err instanceof Error ? err : new Error(String(err));
      for (const w of batch) w.reject(e);
      return;
    } finally {
      // A closed database cannot take the pragma back; the batch has failed already.
      if (full && this.db.open) this.db.pragma("synchronous = NORMAL");
    }
    for (const { entry: e } of batch) if (e.op === OP_WRITE) this.bytes += e.length;
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
    for (const r of this.readLinkStmt.iterate(link, afterSeq, limit) as IterableIterator<{
      seq: bigint;
      ts: bigint;
      grp: string;
      target: string;
      op: bigint;
      off: bigint;
      len: bigint;
      data: Buffer | null;
    }>) {
      out.push({
        seq: Number(r.seq),
        ts: r.ts,
        group: r.grp,
        link,
        volume: "",
        target: r.target,
        op: Number(r.op) as typeof OP_WRITE,
        offset: Number(r.off),
        length: Number(r.len),
        data: r.data,
      });
      bytes += r.data?.length ?? 0;
      // Leaving the loop early resets the statement.
      if (bytes >= bytesMax) break;
    }
    return out;
  }

  /** Drops entries that are acknowledged and durable on the volume, per link, in one transaction. */
  trim(upTo: ReadonlyMap<number, number>): void {
    this.db.transaction(() => {
      for (const [link, seq] of upTo) {
        this.bytes -= (this.sumStmt.get(link, seq) as { b: number }).b;
        this.trimStmt.run(link, seq);
      }
    })();
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
      .prepare("SELECT seq, ts, grp, link, volume, target, op, off, len, data FROM journal ORDER BY seq")
      .safeIntegers(true);
    for (const r of stmt.iterate() as IterableIterator<Record<string, unknown>>) {
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
        data: r.data as Buffer | null,
      };
    }
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

  /** FLUSH/FUA: every commit so far is on stable storage. */
  barrier(): void {
    durableBarrier(this.db);
  }
}

// Durable bitmap marks (114) with group commit: a host write that is not
// replicated (group suspended on the primary, or a secondary taken over)
// marks its blocks here, and its volume write waits for that commit, so a
// crash or a power cut never leaves a changed block the bitmap does not name.
import type { Db } from "./database.ts";
import { blockSpan } from "../resync/blocks.ts";
import type { Runtime } from "../runtime/runtime.ts";
import { stateFileName, type DiskGuard } from "./disk-guard.ts";

interface Waiting {
  resolve: () => void;
  reject: (e: Error) => void;
}

export class BitmapWriter {
  private readonly known = new Map<string, Set<number>>();
  private marks: [string, number][] = [];
  private waiting: Waiting[] = [];
  private scheduled = false;
  private readonly insert;
  private readonly countStmt;
  private readonly del;

  constructor(
    private readonly db: Db,
    private readonly runtime: Runtime,
    /** Told of a failed commit: on a full disk the writes waiting for it get ENOSPC (disk-guard.ts). */
    private readonly disk?: DiskGuard,
  ) {
    this.insert = db.prepare("INSERT OR IGNORE INTO bitmap (volume, block) VALUES (?, ?)");
    this.countStmt = db.prepare("SELECT count(*) AS n FROM bitmap WHERE volume = ?");
    this.del = db.prepare("DELETE FROM bitmap WHERE volume = ? AND block = ?");
  }

  private setOf(volume: string): Set<number> {
    let s = this.known.get(volume);
    if (!s) {
      s = new Set((this.db.prepare("SELECT block FROM bitmap WHERE volume = ?").all(volume) as { block: number }[]).map((r) => r.block));
      this.known.set(volume, s);
    }
    return s;
  }

  /** Resolves once every block of the range is durably (kill -9-safe) in the bitmap. */
  mark(volume: string, offset: number, length: number): Promise<void> {
    const set = this.setOf(volume);
    const { first, last } = blockSpan(offset, length);
    let fresh = false;
    for (let b = first; b <= last; b++) {
      if (!set.has(b)) {
        set.add(b);
        this.marks.push([volume, b]);
        fresh = true;
      }
    }
    // Blocks already marked may still be in a batch not yet committed.
    if (!fresh && this.marks.length === 0) return Promise.resolve();
    return new Promise((resolve, reject) => {
      this.waiting.push({ resolve, reject });
      if (!this.scheduled) {
        this.scheduled = true;
        this.runtime.setImmediate(() => this.commit());
      }
    });
  }

  /** Inside a caller's transaction: marks blocks without waiting (the caller commits). */
  markNow(volume: string, offset: number, length: number): number {
    const set = this.setOf(volume);
    const { first, last } = blockSpan(offset, length);
    let n = 0;
    for (let b = first; b <= last; b++) {
      if (!set.has(b)) {
        set.add(b);
        this.insert.run(volume, b);
        n++;
      }
    }
    return n;
  }

  /** Inside a caller's transaction, or on its own: the blocks are copied and leave the bitmap. */
  clearNow(volume: string, blocks: Iterable<number>): void {
    const set = this.setOf(volume);
    for (const b of blocks) {
      set.delete(b);
      this.del.run(volume, b);
    }
  }

  /** Every block of these volumes leaves the bitmap (a resync's barrier was passed). */
  clearVolumesNow(volumes: Iterable<string>): void {
    for (const v of volumes) {
      this.db.prepare("DELETE FROM bitmap WHERE volume = ?").run(v);
      this.known.delete(v);
    }
  }

  /** Dirty blocks of a volume, ascending. */
  blocks(volume: string): number[] {
    return [...this.setOf(volume)].sort((a, b) => a - b);
  }

  /** After a failed transaction that used markNow: forget the cache. */
  reset(): void {
    this.known.clear();
  }

  private commit(): void {
    this.scheduled = false;
    const marks = this.marks;
    const waiting = this.waiting;
    this.marks = [];
    this.waiting = [];
    try {
      // The volume write waits for this: after a power cut the mark must be
      // there whenever the block is, so the commit syncs the WAL. Only blocks
      // not yet marked cost a commit.
      this.db.pragma("synchronous = FULL");
      this.db.transaction(() => {
        for (const [v, b] of marks) this.insert.run(v, b);
      })();
    } catch (err) {
      this.known.clear();
      const e = this.disk?.failed(err, stateFileName(this.db.name)) ?? (err as Error);
      for (const w of waiting) w.reject(e);
      return;
    } finally {
      if (this.db.open) this.db.pragma("synchronous = NORMAL");
    }
    for (const w of waiting) w.resolve();
  }

  count(volume: string): number {
    return (this.countStmt.get(volume) as { n: number }).n;
  }
}

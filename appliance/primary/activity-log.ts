// DESIGN.md's activity log, the primary's in-memory half: which regions hold
// writes not yet trimmed from the journal, and when a region may go cold.
// The durable half is the `activity` table, which the journal marks in the
// commit that first writes a region (a WAL fsync) and cools here, once every
// write of the region is trimmed (acknowledged and durable) and it has been
// idle. After a power loss, every region still hot goes to the bitmap.
import type { Logger } from "pino";
import type { Db } from "../state/database.ts";
import type { Runtime } from "../runtime/runtime.ts";
import type { BitmapWriter } from "../state/bitmap-writer.ts";
import type { Journal } from "./journal.ts";

/**
 * A region stays hot this long after its last write even once its entries
 * are trimmed: turning one hot costs a WAL fsync, and random writes would
 * otherwise re-heat regions in most commits (DRBD keeps its activity log's
 * extents hot for the same reason).
 */
const ACTIVITY_COOL_IDLE_MS = 5000;

export class ActivityLog {
  /** Highest seq written per region (volume\0region), its link, and when. */
  private readonly regionSeq = new Map<string, { volume: string; region: number; link: number; seq: number; at: number }>();

  constructor(
    private readonly o: { db: Db; journal: Journal; runtime: Runtime; logger: Logger; regionBytes: number; bitmap: BitmapWriter },
  ) {}

  /** A write (or a replayed journal entry) of `seq` on `link` touches these bytes. */
  note(volume: string, link: number, offset: number, length: number, seq: number): void {
    const first = Math.floor(offset / this.o.regionBytes);
    const last = Math.floor((offset + length - 1) / this.o.regionBytes);
    const now = this.o.runtime.nowMs();
    for (let r = first; r <= last; r++) {
      const key = `${volume}\u0000${r}`;
      const cur = this.regionSeq.get(key);
      if (cur) {
        cur.seq = seq;
        cur.at = now;
      } else this.regionSeq.set(key, { volume, region: r, link, seq, at: now });
    }
  }

  /** Regions whose writes are all trimmed (so durable) and idle for a while go cold. */
  coolIdle(trimmedSeq: ReadonlyMap<number, number>): void {
    const cool: [string, number][] = [];
    const idleSince = this.o.runtime.nowMs() - ACTIVITY_COOL_IDLE_MS;
    for (const [key, r] of this.regionSeq) {
      if (r.seq <= (trimmedSeq.get(r.link) ?? 0) && r.at < idleSince) {
        cool.push([r.volume, r.region]);
        this.regionSeq.delete(key);
      }
    }
    if (cool.length > 0) this.o.journal.cool(cool);
  }

  /**
   * After a power loss a hot region may hold volume writes whose journal
   * entries never reached the disk: every block of it goes to the bitmap.
   */
  markHotRegionsDirty(): void {
    const { db } = this.o;
    const rows = db.prepare("SELECT volume, region FROM activity").all() as { volume: string; region: number }[];
    // Through the bitmap writer, so the sets it caches for the copier include these blocks.
    try {
      db.transaction(() => {
        for (const r of rows) this.o.bitmap.markNow(r.volume, r.region * this.o.regionBytes, this.o.regionBytes);
      })();
    } catch (err) {
      this.o.bitmap.reset();
      throw err;
    }
    if (rows.length > 0) {
      this.o.logger.warn({ regions: rows.length }, "unclean restart after a reboot: hot activity-log regions marked in the bitmap for resync");
    }
  }
}

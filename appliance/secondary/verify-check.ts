// The secondary's half of an online verify (docs/verify.md): the applier
// reaches a VERIFY record at its place in (ts, primary, seq) order, so the
// volume holds exactly the writes stamped before it; its blocks are hashed
// and compared with the primary's hashes. What a batch found is recorded in
// the transaction that deletes its rows: each mismatched block into the
// bitmap (the next resync repairs it) and into verify_mismatch with both
// hashes, and the run's progress into verify_seen. A crash before that
// transaction redoes the rows, which finds the same result.
import type { Logger } from "pino";
import type { Db } from "../state/database.ts";
import type { BitmapWriter } from "../state/bitmap-writer.ts";
import { compareBlocks, verifyRunTs, type BlockMismatch } from "../resync/verify-hashes.ts";
import { VERIFY_BLOCK_BYTES } from "../replication/frames.ts";
import type { VerifyEvents } from "../resync/verify-events.ts";

/** Mismatch log lines per volume and run; the rest are counted and kept in verify_mismatch. */
export const VERIFY_MISMATCH_LOG_MAX = 64;

export interface VerifyOutcome {
  group: string;
  volume: string;
  runTs: bigint;
  ts: bigint;
  offset: number;
  length: number;
  mismatches: BlockMismatch[];
}

export interface VerifiedVolume {
  volume: string;
  runTs: string;
  throughOffset: number;
  verifiedBlocks: number;
  mismatchedBlocks: number;
  lastTs: string;
  verifiedTotal: number;
  mismatchedTotal: number;
  /** The first mismatched blocks of the run (at most 16), with both hashes. */
  mismatches: { offset: number; primaryHash: string; secondaryHash: string }[];
}

export class VerifyCheck {
  private readonly seen;
  private readonly upsert;
  private readonly clearRun;
  private readonly addMismatch;
  private readonly list;
  private readonly firstMismatches;
  /** Log lines written per volume for its current run. */
  private readonly logged = new Map<string, { runTs: bigint; n: number }>();

  constructor(
    private readonly o: { id: number; db: Db; bitmap: BitmapWriter; logger: Logger; events?: VerifyEvents },
  ) {
    const db = o.db;
    this.seen = db.prepare("SELECT run_ts, through_off, verified, mismatched FROM verify_seen WHERE volume = ?").safeIntegers(true);
    this.upsert = db.prepare(
      `INSERT INTO verify_seen (volume, run_ts, through_off, verified, mismatched, last_ts, verified_total, mismatched_total)
       VALUES (@volume, @run, @through, @verified, @mismatched, @ts, @verifiedAdd, @mismatchedAdd)
       ON CONFLICT(volume) DO UPDATE SET run_ts = @run, through_off = @through, verified = @verified, mismatched = @mismatched,
         last_ts = max(last_ts, @ts), verified_total = verified_total + @verifiedAdd, mismatched_total = mismatched_total + @mismatchedAdd`,
    );
    this.clearRun = db.prepare("DELETE FROM verify_mismatch WHERE volume = ? AND run_ts != ?");
    this.addMismatch = db.prepare("INSERT OR IGNORE INTO verify_mismatch (volume, block, run_ts, primary_hash, secondary_hash) VALUES (?, ?, ?, ?, ?)");
    this.list = db.prepare("SELECT volume, run_ts, through_off, verified, mismatched, last_ts, verified_total, mismatched_total FROM verify_seen").safeIntegers(true);
    this.firstMismatches = db.prepare("SELECT block, primary_hash, secondary_hash FROM verify_mismatch WHERE volume = ? AND run_ts = ? ORDER BY block LIMIT 16").safeIntegers(true);
  }

  /** Compares one VERIFY record with the blocks the secondary holds at its stamp. */
  compare(group: string, volume: string, offset: number, length: number, ts: bigint, data: Buffer, blocks: Buffer): VerifyOutcome {
    return { group, volume, runTs: verifyRunTs(data), ts, offset, length, mismatches: compareBlocks(data, blocks) };
  }

  /** Inside the applier's delete transaction: bitmap, mismatch rows and progress. */
  record(outcomes: readonly VerifyOutcome[]): void {
    for (const v of outcomes) {
      const row = this.seen.get(v.volume) as { run_ts: bigint; through_off: bigint; verified: bigint; mismatched: bigint } | undefined;
      const sameRun = row !== undefined && row.run_ts === v.runTs;
      if (!sameRun) this.clearRun.run(v.volume, v.runTs);
      let through = sameRun ? Number(row.through_off) : v.offset;
      let verified = sameRun ? Number(row.verified) : 0;
      let mismatched = sameRun ? Number(row.mismatched) : 0;
      // A range compared again (the primary re-hashed the runs in flight at a
      // crash) is not counted again; blocks are compared in cursor order.
      const fresh = v.offset + v.length > through ? (v.offset + v.length - Math.max(v.offset, through)) / VERIFY_BLOCK_BYTES : 0;
      verified += fresh;
      through = Math.max(through, v.offset + v.length);
      let newMismatches = 0;
      for (const m of v.mismatches) {
        const offset = v.offset + m.index * VERIFY_BLOCK_BYTES;
        this.o.bitmap.markNow(v.volume, offset, VERIFY_BLOCK_BYTES);
        newMismatches += this.addMismatch.run(v.volume, offset / VERIFY_BLOCK_BYTES, v.runTs, m.primaryHash, m.secondaryHash).changes;
      }
      mismatched += newMismatches;
      this.upsert.run({ volume: v.volume, run: v.runTs, through, verified, mismatched, ts: v.ts, verifiedAdd: fresh, mismatchedAdd: newMismatches });
    }
  }

  /** After the transaction: one log line and one event per mismatched block (log lines bounded per run). */
  report(outcomes: readonly VerifyOutcome[]): void {
    for (const v of outcomes) {
      for (const m of v.mismatches) {
        const offset = v.offset + m.index * VERIFY_BLOCK_BYTES;
        let l = this.logged.get(v.volume);
        if (!l || l.runTs !== v.runTs) this.logged.set(v.volume, (l = { runTs: v.runTs, n: 0 }));
        if (l.n < VERIFY_MISMATCH_LOG_MAX) {
          this.o.logger.warn(
            { group: v.group, volume: v.volume, offset, ts: v.ts.toString(), primaryHash: m.primaryHash, secondaryHash: m.secondaryHash },
            "verify: block differs from the primary's at the same stamp; marked in the bitmap for the next resync",
          );
        } else if (l.n === VERIFY_MISMATCH_LOG_MAX) {
          this.o.logger.warn({ group: v.group, volume: v.volume, logged: l.n }, "verify: further mismatches of this run are counted in status and kept in verify_mismatch, not logged");
        }
        l.n++;
        this.o.events?.emit({ kind: "mismatch", subsystem: this.o.id, group: v.group, volume: v.volume, runTs: v.runTs.toString(), offset, ts: v.ts.toString(), primaryHash: m.primaryHash, secondaryHash: m.secondaryHash });
      }
    }
  }

  /** Per secondary volume: the last run compared, for status. */
  status(): VerifiedVolume[] {
    const rows = this.list.all() as { volume: string; run_ts: bigint; through_off: bigint; verified: bigint; mismatched: bigint; last_ts: bigint; verified_total: bigint; mismatched_total: bigint }[];
    return rows.map((r) => ({
      volume: r.volume,
      runTs: r.run_ts.toString(),
      throughOffset: Number(r.through_off),
      verifiedBlocks: Number(r.verified),
      mismatchedBlocks: Number(r.mismatched),
      lastTs: r.last_ts.toString(),
      verifiedTotal: Number(r.verified_total),
      mismatchedTotal: Number(r.mismatched_total),
      mismatches: (this.firstMismatches.all(r.volume, r.run_ts) as { block: bigint; primary_hash: string; secondary_hash: string }[]).map((m) => ({
        offset: Number(m.block) * VERIFY_BLOCK_BYTES,
        primaryHash: m.primary_hash,
        secondaryHash: m.secondary_hash,
      })),
    }));
  }
}

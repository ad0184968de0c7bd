// The secondary's RCR queue in SQLite (table rcr, with link_seq, first_time,
// copied and grp's counters): its statements, prepared once, and its repair
// after a power cut. A row's payload sits in a queue segment written and
// synced before the row's commit is acknowledged; the row keeps its CRC32C.
import type { Logger } from "pino";
import { crc32c } from "@node-rs/crc32";
import type { Db } from "../state/database.ts";
import type { PayloadSegments } from "../state/payload-segments.ts";
import { storedPayloadBytes } from "../replication/frames.ts";

/** rcr.op of a write (with a payload) and of a zero run. */
export const OP_WRITE = 1;
export const OP_ZERO = 2;
/** rcr.op of a verify record: its payload is the primary's block hashes (docs/verify.md). */
export const OP_VERIFY = 3;

export type QueueStatements = ReturnType<typeof prepareQueue>;

export function prepareQueue(db: Db) {
  return {
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
    payload: db.prepare("SELECT data, seg, seg_off, op, len, crc FROM rcr WHERE id = ?"),
    oldestSeg: db.prepare("SELECT seg FROM rcr WHERE seg IS NOT NULL ORDER BY id LIMIT 1").pluck(true),
    del: db.prepare("DELETE FROM rcr WHERE id = ?"),
    applied: db.prepare(
      "UPDATE grp SET applied = applied + ?, applied_bytes = applied_bytes + ?, last_applied_ts = max(last_applied_ts, ?) WHERE name = ?",
    ),
    countAll: db.prepare("SELECT count(*) AS n, coalesce(sum(len), 0) AS b FROM rcr WHERE grp = ?"),
    countDue: db.prepare("SELECT count(*) AS n, coalesce(sum(len), 0) AS b, min(ts) AS m FROM rcr WHERE grp = ? AND ts <= ?").safeIntegers(true),
  };
}

/**
 * After a power cut: the last queue commit's rows may have reached the disk
 * while their payloads did not (its WAL sync finished, its segment sync did
 * not). That commit was never acknowledged, so its primaries still hold
 * those RCRs: the rows go, and each primary's last seq falls back below
 * them, so the resend is taken rather than dropped as a duplicate. Only the
 * newest rows can be torn, so the scan stops at the first whole one.
 */
export function dropTornTail(q: { db: Db; segments: PayloadSegments; stmts: Pick<QueueStatements, "setSeq">; logger: Logger }): void {
  const db = q.db;
  const torn = new Map<number, number>();
  const rows = db.prepare("SELECT id, primary_id, seq, seg, seg_off, op, len, crc FROM rcr WHERE seg IS NOT NULL ORDER BY id DESC").iterate() as IterableIterator<{
    op: number;
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
      whole = crc32c(q.segments.read({ seg: r.seg, off: r.seg_off }, storedPayloadBytes(r.op, r.len))) === r.crc;
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
      q.stmts.setSeq.run(p, seq - 1);
    }
  })();
  q.logger.warn({ primaries: Object.fromEntries(torn) }, "RCR queue: rows of the last commit before a power cut lost their payloads; they go, and their primaries resend them");
}

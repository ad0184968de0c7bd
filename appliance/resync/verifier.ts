// The primary's online verify (docs/verify.md): hashes its volumes' blocks
// run by run under the range lock host writes hold, and sends the hashes as
// a VERIFY record through the ordered RCR stream, stamped and registered
// pending in the same synchronous step as a write (the write path's
// stamping step). The secondary compares them when it applies that stamp.
// Built like the copier: a cursor per volume in SQLite (verify_run), moved
// only once the run's record is journaled, so a kill -9 re-hashes at most the
// run in flight; a rate limit in MiB/s; host writes first.
import type { Db } from "../state/database.ts";
import type { Journal } from "../primary/journal.ts";
import type { Runtime } from "../runtime/runtime.ts";
import type { Logger } from "pino";
import type { CopiedBinding, CopiedGroup } from "./copier.ts";
import { verifyData } from "./verify-hashes.ts";
import { VERIFY_BLOCK_BYTES } from "../replication/frames.ts";
import type { VerifyEvents } from "./verify-events.ts";
import { tmError } from "../errors/codes.ts";

/** Largest range one VERIFY record covers: one lock, one read, 4 KiB of hashes. */
export const VERIFY_RUN_BYTES = 1024 * 1024;
/** How often a paused verify (its group not paired) looks again. */
export const VERIFY_PAUSE_POLL_MS = 500;
/** The verifier waits while the journal holds more than this, at most VERIFY_YIELD_MS per run: host writes first. */
export const VERIFY_JOURNAL_BYTES = 64 * 1024 * 1024;
export const VERIFY_YIELD_MS = 200;
/** Highest rate accepted (MiB/s): far above what one core hashes and reads. */
export const VERIFY_RATE_MIBPS_MAX = 100_000;
/** Progress events at most this often per volume. */
const PROGRESS_EVERY_MS = 1000;

export interface VerifyRequest {
  group: string;
  /** One primary volume of the group, or all of them. */
  volume?: string;
  /** A byte range (whole 4 KiB blocks), or the whole volume. */
  offset?: number;
  length?: number;
  rateMiBps: number;
}

export interface VerifierHost {
  id: number;
  db: Db;
  journal: Journal;
  runtime: Runtime;
  logger: Logger;
  events?: VerifyEvents;
  group(name: string): CopiedGroup | undefined;
  bindingsOf(group: string): CopiedBinding[];
  stopped(): boolean;
  /** A stamp for a run's name: above every stamp handed out, registered nowhere (it stamps no record). */
  stampNow(): bigint;
  /** The write path's stamping step for a VERIFY record, then its journal append; resolves with its stamp once committed. */
  journalVerify(b: CopiedBinding, offset: number, length: number, data: Buffer): { ts: bigint; journaled: Promise<void> };
  /** Resolves at the next trim, or after 50 ms. */
  trimmed(): Promise<void>;
}

interface RunRow {
  volume: string;
  grp: string;
  run_ts: bigint;
  start_off: number;
  next_off: number;
  end_off: number;
  rate_mibps: number;
  started_ms: number;
  last_ts: bigint | null;
  finished_ms: number | null;
}

type RawRow = { [K in keyof RunRow]: RunRow[K] extends string ? string : bigint | (null extends RunRow[K] ? null : never) } & { rate_mibps: number | bigint };

/** A row read with safeIntegers: stamps stay bigints, offsets and times become numbers (all below 2^53). */
function runRow(r: RawRow): RunRow {
  return {
    volume: r.volume,
    grp: r.grp,
    run_ts: r.run_ts,
    start_off: Number(r.start_off),
    next_off: Number(r.next_off),
    end_off: Number(r.end_off),
    rate_mibps: Number(r.rate_mibps),
    started_ms: Number(r.started_ms),
    last_ts: r.last_ts,
    finished_ms: r.finished_ms === null ? null : Number(r.finished_ms),
  };
}

/** What status shows of one volume's verify run. */
export interface VerifyRunStatus {
  volume: string;
  target: string;
  runTs: string;
  state: "running" | "paused" | "done";
  startOffset: number;
  nextOffset: number;
  endOffset: number;
  rateMiBps: number;
  startedMs: number;
  finishedMs: number | null;
  /** Stamp of the run's last VERIFY record: the secondary has compared the run once it applied this. */
  lastTs: string | null;
  bytesPerSecond: number;
}

export class Verifier {
  private readonly running = new Map<string, Promise<void>>();
  /** Per volume: bytes hashed and when since this process took the run up (the rate). */
  private readonly pace = new Map<string, { sinceMs: number; bytes: number; paused: boolean }>();
  private readonly stmt;
  /** Hashed bytes and records since start (metrics). */
  hashedBytes = 0;
  records = 0;

  constructor(private readonly h: VerifierHost) {
    const db = h.db;
    this.stmt = {
      // Stamps are u64 nanoseconds, beyond 2^53: read as bigints, never as numbers.
      ofGroup: db.prepare("SELECT * FROM verify_run WHERE grp = ? ORDER BY volume").safeIntegers(true),
      open: db.prepare("SELECT DISTINCT grp FROM verify_run WHERE finished_ms IS NULL").pluck(true),
      one: db.prepare("SELECT * FROM verify_run WHERE volume = ?").safeIntegers(true),
      put: db.prepare(
        "INSERT OR REPLACE INTO verify_run (volume, grp, run_ts, start_off, next_off, end_off, rate_mibps, started_ms, last_ts, finished_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, NULL, NULL)",
      ),
      move: db.prepare("UPDATE verify_run SET next_off = ?, last_ts = ? WHERE volume = ? AND run_ts = ?"),
      finish: db.prepare("UPDATE verify_run SET finished_ms = ? WHERE volume = ? AND run_ts = ?"),
    };
  }

  /**
   * Starts a verify of the group (or one volume, or one range): a new run
   * per volume, persisted before this returns. Refused unless the group is
   * paired here (a group that copies or is suspended has nothing settled to compare).
   */
  start(req: VerifyRequest): VerifyRunStatus[] {
    const { h } = this;
    const gs = h.group(req.group);
    if (!gs) throw tmError("TM_NO_GROUP", `subsystem #${h.id} is no primary of group '${req.group}'`, { group: req.group, subsystem: h.id });
    if (gs.state !== "active") {
      throw tmError("TM_VERIFY_STATE", `verify of '${req.group}': the group is ${gs.state} on primary #${h.id}; only a paired group is verified (resync it first)`, { group: req.group, subsystem: h.id, state: gs.state });
    }
    if (!(req.rateMiBps > 0 && req.rateMiBps <= VERIFY_RATE_MIBPS_MAX)) {
      throw tmError("TM_BAD_REQUEST", `verify of '${req.group}': rateMiBps must be above 0 and at most ${VERIFY_RATE_MIBPS_MAX}, not ${req.rateMiBps}`, { group: req.group, field: "rateMiBps" });
    }
    const all = h.bindingsOf(req.group);
    const vols = req.volume === undefined ? all : all.filter((b) => b.volume.name === req.volume);
    if (vols.length === 0) {
      throw tmError("TM_NO_VOLUME", `verify of '${req.group}': volume '${req.volume}' is no primary volume of the group on #${h.id}`, { group: req.group, volume: req.volume, subsystem: h.id });
    }
    const runTs = h.stampNow();
    const now = h.runtime.nowMs();
    h.db.transaction(() => {
      for (const b of vols) {
        const [start, end] = rangeOf(req, b.volume.sizeBytes, req.group);
        this.stmt.put.run(b.volume.name, req.group, runTs, start, start, end, req.rateMiBps, now);
        this.pace.delete(b.volume.name);
      }
    })();
    h.logger.info({ group: req.group, volumes: vols.map((b) => b.volume.name), runTs: runTs.toString(), rateMiBps: req.rateMiBps }, "verify begins");
    this.resume(req.group);
    return this.status(req.group).filter((s) => vols.some((b) => b.volume.name === s.volume));
  }

  /** After a restart: every run not finished goes on from its cursor. */
  resumeAll(): void {
    for (const g of this.stmt.open.all() as string[]) this.resume(g);
  }

  private resume(group: string): void {
    if (this.running.has(group)) return;
    const done = this.verifyGroup(group)
      .catch((err: Error) => this.h.logger.error({ group, err: err.message }, "verify stopped on an error; it resumes from its cursor at the next start or restart"))
      .finally(() => this.running.delete(group));
    this.running.set(group, done);
  }

  status(group: string): VerifyRunStatus[] {
    const targets = new Map(this.h.bindingsOf(group).map((b) => [b.volume.name, b.target]));
    return (this.stmt.ofGroup.all(group) as RawRow[]).map(runRow).map((r) => {
      const p = this.pace.get(r.volume);
      const elapsed = p ? Math.max(1, this.h.runtime.nowMs() - p.sinceMs) : 0;
      return {
        volume: r.volume,
        target: targets.get(r.volume) ?? "",
        runTs: String(r.run_ts),
        state: r.finished_ms !== null ? "done" : p?.paused ? "paused" : "running",
        startOffset: r.start_off,
        nextOffset: r.next_off,
        endOffset: r.end_off,
        rateMiBps: r.rate_mibps,
        startedMs: r.started_ms,
        finishedMs: r.finished_ms,
        lastTs: r.last_ts === null ? null : String(r.last_ts),
        bytesPerSecond: p && r.finished_ms === null ? Math.round(p.bytes / (elapsed / 1000)) : 0,
      };
    });
  }

  /** One group's open runs, volume after volume, until done or the engine stops. */
  private async verifyGroup(group: string): Promise<void> {
    const { h } = this;
    for (;;) {
      if (h.stopped()) return;
      const rows = (this.stmt.ofGroup.all(group) as RawRow[]).map(runRow).filter((r) => r.finished_ms === null);
      if (rows.length === 0) return;
      const b = h.bindingsOf(group).find((x) => x.volume.name === rows[0].volume);
      if (!b) {
        // The volume is no primary here any more (a turn): its run cannot go on.
        h.logger.warn({ group, volume: rows[0].volume }, "verify: the volume is no longer a primary here; its run ends");
        this.stmt.finish.run(h.runtime.nowMs(), rows[0].volume, rows[0].run_ts);
        continue;
      }
      const progressed = await this.verifyVolume(group, b, rows[0]);
      // Replaced by a new run: the next pass takes it up at once. Otherwise stopped.
      if (!progressed) return;
    }
  }

  /** Verifies one volume's run to its end; false when the engine stopped (true: done, or replaced by a newer run). */
  private async verifyVolume(group: string, b: CopiedBinding, row: RunRow): Promise<boolean> {
    const { h } = this;
    const name = b.volume.name;
    const runTs = row.run_ts;
    let pace = this.pace.get(name);
    if (!pace) this.pace.set(name, (pace = { sinceMs: h.runtime.nowMs(), bytes: 0, paused: false }));
    h.events?.emit({ kind: "start", subsystem: h.id, group, volume: name, runTs: runTs.toString(), startOffset: row.start_off, endOffset: row.end_off, resumed: row.next_off > row.start_off });
    const startedMs = h.runtime.nowMs();
    let next = row.next_off;
    let lastTs = row.last_ts;
    let progressAt = 0;
    const rateBps = row.rate_mibps * 1024 * 1024;
    let generation = h.group(group)?.generation ?? -1;
    while (next < row.end_off) {
      if (h.stopped()) return false;
      // A new start replaced this run: the loop picks the new one up.
      const cur = this.stmt.one.get(name) as RawRow | undefined;
      if (!cur || cur.run_ts !== runTs) return true;
      const gs = h.group(group);
      // A generation that moved on while running is a suspension and resync between two looks.
      if (!gs || gs.state !== "active" || (!pace.paused && gs.generation !== generation)) {
        if (!pace.paused) next = this.pauseRun(group, row, pace, gs?.state ?? "gone", lastTs, startedMs);
        await h.runtime.sleep(VERIFY_PAUSE_POLL_MS);
        if (!gs) return false;
        continue;
      }
      if (pace.paused) {
        pace.paused = false;
        generation = gs.generation;
        pace.sinceMs = h.runtime.nowMs();
        pace.bytes = 0;
        h.logger.info({ group, volume: name, nextOffset: next }, "verify resumes");
      }
      if (await this.paced(pace, rateBps)) continue;
      const length = Math.min(VERIFY_RUN_BYTES, row.end_off - next);
      const ts = await this.verifyRun(b, gs, runTs, next, length);
      if (ts === null) continue;
      lastTs = ts;
      next += length;
      // The cursor moves once the record is journaled: a crash re-hashes at most this run.
      this.stmt.move.run(next, lastTs, name, runTs);
      pace.bytes += length;
      this.hashedBytes += length;
      this.records++;
      const now = h.runtime.nowMs();
      if (now - progressAt >= PROGRESS_EVERY_MS) {
        progressAt = now;
        h.events?.emit({ kind: "progress", subsystem: h.id, group, volume: name, runTs: runTs.toString(), nextOffset: next, endOffset: row.end_off, bytesPerSecond: Math.round(pace.bytes / (Math.max(1, now - pace.sinceMs) / 1000)) });
      }
    }
    this.stmt.finish.run(h.runtime.nowMs(), name, runTs);
    this.pace.delete(name);
    const ms = h.runtime.nowMs() - startedMs;
    h.logger.info({ group, volume: name, runTs: runTs.toString(), lastTs: String(lastTs), ms }, "verify of the volume hashed and journaled; the secondary compares it when it applies its last stamp");
    h.events?.emit({ kind: "end", subsystem: h.id, group, volume: name, runTs: runTs.toString(), lastTs: String(lastTs ?? 0n), blocks: (row.end_off - row.next_off) / VERIFY_BLOCK_BYTES, ms, outcome: "done" });
    return true;
  }

  /**
   * The group is not paired (suspended, copying, taken over): nothing
   * settled to compare. A suspension drops the records its cut leaves above
   * Ts, here and on the secondaries, so which ranges were compared is not
   * known: the run starts again from its first block once the group is
   * paired (the secondary counts no block twice). Returns the new cursor.
   */
  private pauseRun(group: string, row: RunRow, pace: { paused: boolean }, state: string, lastTs: bigint | null, startedMs: number): number {
    const { h } = this;
    pace.paused = true;
    this.stmt.move.run(row.start_off, lastTs, row.volume, row.run_ts);
    h.logger.warn({ group, volume: row.volume, state }, "verify paused: the group is not paired; the run starts again from its first block once it is");
    h.events?.emit({ kind: "end", subsystem: h.id, group, volume: row.volume, runTs: row.run_ts.toString(), lastTs: String(lastTs ?? 0n), blocks: 0, ms: h.runtime.nowMs() - startedMs, outcome: "paused" });
    return row.start_off;
  }

  /**
   * The rate limit (no faster than rateMiBps on average since the run was
   * taken up) and host writes first (a journal past the mark waits for
   * trims, a bounded while). True when the rate limit made it wait: the
   * caller looks at the group again before the next run.
   */
  private async paced(pace: { sinceMs: number; bytes: number }, rateBps: number): Promise<boolean> {
    const { h } = this;
    const waitMs = pace.sinceMs + (pace.bytes / rateBps) * 1000 - h.runtime.nowMs();
    if (waitMs > 0) {
      await h.runtime.sleep(Math.min(waitMs, 1000));
      return true;
    }
    const yieldUntil = h.runtime.nowMs() + VERIFY_YIELD_MS;
    while (h.journal.bytes > VERIFY_JOURNAL_BYTES && h.runtime.nowMs() < yieldUntil && !h.stopped()) await h.trimmed();
    return false;
  }

  /**
   * One run: under the range lock host writes hold from stamping until their
   * volume write completes, read and hash, then stamp, register pending and
   * journal in one synchronous step. No overlapping host write can come
   * between the read and the stamp, so the hashes are those of the blocks at
   * that stamp. Null when the group left `active` meanwhile (tried again).
   */
  private async verifyRun(b: CopiedBinding, gs: CopiedGroup, runTs: bigint, offset: number, length: number): Promise<bigint | null> {
    const release = await b.lock.acquire(offset, length);
    gs.inflight++;
    try {
      if (gs.state !== "active" || this.h.stopped()) return null;
      const blocks = await b.volume.read(offset, length);
      if (gs.state !== "active" || this.h.stopped()) return null;
      const issued = this.h.journalVerify(b, offset, length, verifyData(runTs, blocks));
      await issued.journaled;
      return issued.ts;
    } finally {
      release();
      if (--gs.inflight === 0) for (const w of gs.idle.splice(0)) w();
    }
  }
}

/** The byte range a request verifies on a volume of `size` bytes: whole 4 KiB blocks inside it. */
export function rangeOf(req: Pick<VerifyRequest, "offset" | "length">, size: number, group: string): [number, number] {
  const offset = req.offset ?? 0;
  const length = req.length ?? size - offset;
  const ok = Number.isSafeInteger(offset) && Number.isSafeInteger(length) && offset >= 0 && length > 0 && offset % VERIFY_BLOCK_BYTES === 0 && length % VERIFY_BLOCK_BYTES === 0 && offset + length <= size;
  if (!ok) {
    throw tmError("TM_VERIFY_RANGE", `verify of '${group}': range ${offset}:${length} is not whole 4 KiB blocks inside the volume (${size} bytes)`, { group, offset, length, size });
  }
  return [offset, offset + length];
}

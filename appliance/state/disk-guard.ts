// A subsystem's state disk as a state, not a crash (issue 18). Every failed
// write of a state file (state.db and its WAL, journal and queue segments,
// bitmap marks) is shown to the guard by name: ENOSPC, EDQUOT and EFBIG put
// the subsystem in `state-disk-full`, where it refuses host writes with NBD
// ENOSPC, takes no RCRs, and keeps serving reads, replication of what is
// journaled already, and the RCM's procedures. Invariants: a host write is
// acknowledged only once recorded durably (the guard refuses before anything
// is stamped); the procedures that record a suspension find room, because
// half of a reserve file of `stateReserveMiB` is released the moment the disk
// fills (CockroachDB's ballast file), the other half at a start on a full
// disk (WAL recovery and the start's own writes), and the whole is written
// again once space is back.
import { closeSync, fsyncSync, openSync, readFileSync, realpathSync, statfsSync, truncateSync, unlinkSync, writeSync, existsSync, statSync } from "node:fs";
import { open, type FileHandle } from "node:fs/promises";
import path from "node:path";
import type { Logger } from "pino";
import { TidemarkError, tmError } from "../errors/codes.ts";
import type { Runtime, TimerHandle } from "../runtime/runtime.ts";

/** How often a full disk is looked at again for space. */
export const DISK_RECHECK_MS = 1000;
/** Space that must be free, beyond the reserve, before host writes are taken again. */
export const DISK_RESUME_MARGIN_BYTES = 4 * 1024 * 1024;
/** The reserve is written in chunks of this size (zeroes: a sparse file would reserve nothing). */
const RESERVE_CHUNK_BYTES = 1024 * 1024;

export type DiskFullCause = "ENOSPC" | "EDQUOT" | "EFBIG";
const FULL_CODES: readonly string[] = ["ENOSPC", "EDQUOT", "EFBIG"];

/**
 * The errno behind a failed write when it means "no room": node:fs codes,
 * a volume or segment error's sysCode, SQLite's SQLITE_FULL (better-sqlite3
 * reports ENOSPC on the database or its WAL so), or any of them as a cause.
 * Null for anything else (EIO is not a full disk). Pure.
 */
export function diskFullCause(err: unknown, depth = 0): DiskFullCause | null {
  if (typeof err !== "object" || err === null || depth > 4) return null;
  const e = err as { code?: unknown; sysCode?: unknown; cause?: unknown; context?: { sysCode?: unknown } };
  for (const c of [e.sysCode, e.context?.sysCode, e.code]) {
    if (typeof c === "string" && FULL_CODES.includes(c)) return c as DiskFullCause;
    if (c === "SQLITE_FULL") return "ENOSPC";
  }
  return diskFullCause(e.cause, depth + 1);
}

/**
 * Whether a failed write of a state file is an I/O error the state cannot
 * survive: EIO or EROFS (a file system that turned read-only on errors), or
 * SQLite's SQLITE_IOERR family. Pure.
 */
export function stateIoCause(err: unknown, depth = 0): string | null {
  if (typeof err !== "object" || err === null || depth > 4) return null;
  const e = err as { code?: unknown; sysCode?: unknown; cause?: unknown; context?: { sysCode?: unknown } };
  for (const c of [e.sysCode, e.context?.sysCode, e.code]) {
    if (c === "EIO" || c === "EROFS") return c;
    if (typeof c === "string" && c.startsWith("SQLITE_IOERR")) return c;
  }
  return stateIoCause(e.cause, depth + 1);
}

/** The file a failed write names (a segment error's context), else `fallback` (the state file, for SQLite's errors). */
export function failedFile(err: unknown, fallback: string): string {
  const f = (err as { context?: { file?: unknown } } | null)?.context?.file;
  return typeof f === "string" ? f : fallback;
}

/** SQLite says only "database or disk is full": the write was to the state file or its WAL. */
export function stateFileName(dbName: string): string {
  return `${dbName} (or its -wal)`;
}

/** What status shows while the disk is full. */
export interface DiskFull {
  /** The file whose write failed first. */
  file: string;
  /** Its file system: mount point and type, e.g. "/var/lib/tidemark (ext4)". */
  fileSystem: string;
  cause: DiskFullCause;
  sinceMs: number;
  /** One sentence for status, the log and a group's suspension reason. */
  reason: string;
}

/**
 * The error a host write (or a commit) gets while the state disk is full:
 * `sysCode` makes the NBD edge answer ENOSPC (nbdErrno), whatever the cause
 * was (EDQUOT and EFBIG are "no space" to a host too).
 */
export class DiskFullError extends TidemarkError {
  readonly sysCode = "ENOSPC";
  constructor(message: string, full: DiskFull, options?: { cause?: unknown }) {
    super("TM_STATE_DISK_FULL", message, { file: full.file, fileSystem: full.fileSystem, cause: full.cause, sysCode: "ENOSPC" }, options);
    this.name = "DiskFullError";
  }
}

/** The mount a path lives on, from /proc/self/mountinfo: "<mount point> (<type>)"; the folder if that cannot be read. */
export function fileSystemOf(file: string): string {
  let p = path.resolve(file);
  // The file may be gone (a segment); its folder is on the same mount.
  while (!existsSync(p) && path.dirname(p) !== p) p = path.dirname(p);
  try {
    p = realpathSync(p);
    let best: { mount: string; type: string } | null = null;
    for (const line of readFileSync("/proc/self/mountinfo", "utf8").split("\n")) {
      const [pre, post] = line.split(" - ");
      if (!post) continue;
      const mount = pre.split(" ")[4].replace(/\\(\d{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
      const inside = mount === "/" || p === mount || p.startsWith(mount + "/");
      if (inside && (!best || mount.length >= best.mount.length)) best = { mount, type: post.split(" ")[0] };
    }
    if (best) return `${best.mount} (${best.type})`;
  } catch {
    // Not Linux, or /proc not mounted: the folder is the best name there is.
  }
  return path.dirname(p);
}

export interface DiskGuardOptions {
  /** The subsystem's state folder: the reserve lives here, and its free space is watched. */
  dir: string;
  /** Size of the reserve file; 0: no reserve. */
  reserveBytes: number;
  runtime: Runtime;
  logger: Logger;
}

export class DiskGuard {
  private fullNow: DiskFull | null = null;
  private timer: TimerHandle | null = null;
  private readonly reserveFile: string;
  /** Times the disk filled since start (status, metrics). */
  episodes = 0;
  /** Host writes refused while full (status, metrics). */
  refusedWrites = 0;
  private readonly fullListeners: ((full: DiskFull) => void)[] = [];
  private stopping = false;
  private rechecking = false;

  constructor(private readonly o: DiskGuardOptions) {
    this.reserveFile = path.join(o.dir, "state.reserve");
  }

  /** Called, on a later turn of the loop (never inside the failed commit), each time the disk fills. */
  onFull(fn: (full: DiskFull) => void): void {
    this.fullListeners.push(fn);
    if (this.fullNow) this.o.runtime.setImmediate(() => fn(this.fullNow!));
  }

  get full(): DiskFull | null {
    return this.fullNow;
  }

  /**
   * At start, before the state file is opened: the reserve is made, or, if
   * the disk has no room for it, the one left by the last run is deleted so
   * the start's own writes (WAL recovery, migrations) fit, and the
   * subsystem starts in state-disk-full.
   */
  start(): void {
    if (this.o.reserveBytes === 0) return;
    const free = this.freeBytes();
    if (free >= DISK_RESUME_MARGIN_BYTES && (this.reserveHeld() || (free >= this.o.reserveBytes + DISK_RESUME_MARGIN_BYTES && this.writeReserve()))) return;
    const released = this.releaseReserve(0);
    const err = Object.assign(new Error(`${free} bytes free at start, ${released} more from the reserve`), { code: "ENOSPC" });
    this.enter(err, this.reserveFile);
  }

  stop(): void {
    if (this.timer) this.o.runtime.clearInterval(this.timer);
    this.timer = null;
  }

  /**
   * A write of `file` failed with `err`. A full disk puts the subsystem in
   * state-disk-full and returns the error to hand on (hosts read ENOSPC);
   * anything else returns null and the caller handles it as before.
   */
  failed(err: unknown, file: string): DiskFullError | null {
    if (!diskFullCause(err)) {
      if (stateIoCause(err)) this.stopOnIoError(err, file);
      return null;
    }
    const full = this.enter(err, file);
    return new DiskFullError(`${full.reason}: ${(err as Error).message ?? String(err)}`, full, { cause: err });
  }

  /**
   * An I/O error on a state file: after a failed write or fdatasync Linux may
   * have dropped the pages (and the next fdatasync succeeds), so the state
   * can no longer be trusted. The process stops (runtime.fatal: exit 70, one
   * stderr line) rather than serve, acknowledge or replicate from it.
   */
  private stopOnIoError(err: unknown, file: string): void {
    if (this.stopping) return;
    this.stopping = true;
    const fileSystem = fileSystemOf(file);
    const cause = stateIoCause(err)!;
    const e = tmError(
      "TM_STATE_IO",
      `${cause} on state file ${file} on ${fileSystem}: stopping, the state can no longer be trusted (${(err as Error).message ?? String(err)}). Check the disk (dmesg), repair or replace it, then start the subsystem again`,
      { file, fileSystem, sysCode: cause },
      { cause: err },
    );
    this.o.logger.fatal({ file, fileSystem, cause, err: (err as Error).message }, e.message);
    this.o.runtime.fatal(e);
  }

  /** The error a host write gets while the state disk is full: nothing is stamped or acknowledged. */
  refusal(volume: string): DiskFullError {
    const full = this.fullNow!;
    this.refusedWrites++;
    return new DiskFullError(`volume ${volume}: host write refused: ${full.reason}; it could not be recorded safely`, full);
  }

  private enter(err: unknown, file: string): DiskFull {
    if (this.fullNow) return this.fullNow;
    const cause = diskFullCause(err) ?? "ENOSPC";
    const fileSystem = fileSystemOf(file);
    const full: DiskFull = { file, fileSystem, cause, sinceMs: this.o.runtime.nowMs(), reason: `state disk full: ${cause} writing ${file} on ${fileSystem}` };
    this.fullNow = full;
    this.episodes++;
    // Room for the procedures that record a suspension (fence, bitmap marks,
    // trims); the other half is kept for a restart on this full disk.
    const released = this.releaseReserve(Math.floor(this.o.reserveBytes / 2));
    this.o.logger.error(
      { file, fileSystem, cause, reserveReleasedBytes: released },
      "state disk full: host writes are refused with ENOSPC and no RCRs are taken until there is space again; reads, replication of the journal and procedures go on",
    );
    this.timer ??= this.o.runtime.setInterval(() => this.recheck(), DISK_RECHECK_MS);
    this.o.runtime.setImmediate(() => {
      if (this.fullNow === full) for (const fn of this.fullListeners) fn(full);
    });
    return full;
  }

  /** While full: once there is room for the reserve and a margin, the reserve is written again and host writes are taken. */
  private recheck(): void {
    const full = this.fullNow;
    if (!full || this.rechecking) return;
    const free = this.freeBytes();
    if (free < this.o.reserveBytes + DISK_RESUME_MARGIN_BYTES) return;
    // Off the event loop: 16 MiB and an fsync on a slow disk must not hold up status or NBD.
    this.rechecking = true;
    void this.writeReserveAsync()
      .then((ok) => {
        if (ok && this.fullNow === full) this.resumed(full, free);
      })
      .finally(() => {
        this.rechecking = false;
      });
  }

  private resumed(full: DiskFull, free: number): void {
    this.fullNow = null;
    this.stop();
    this.o.logger.warn(
      { file: full.file, fileSystem: full.fileSystem, freeBytes: free, fullForMs: this.o.runtime.nowMs() - full.sinceMs, refusedWrites: this.refusedWrites },
      "state disk has space again: host writes and RCRs are taken again; a group suspended meanwhile stays suspended until `tidemark resync`",
    );
  }

  private freeBytes(): number {
    try {
      const s = statfsSync(this.o.dir);
      return s.bavail * s.bsize;
    } catch {
      return 0;
    }
  }

  private reserveHeld(): boolean {
    try {
      return statSync(this.reserveFile).size >= this.o.reserveBytes;
    } catch {
      return false;
    }
  }

  /** Writes the reserve whole (zeroes, fsynced); false if the disk has no room for it (a partial one is removed). */
  private writeReserve(): boolean {
    if (this.o.reserveBytes === 0 || this.reserveHeld()) return true;
    let fd: number | null = null;
    try {
      fd = openSync(this.reserveFile, "w", 0o600);
      const chunk = Buffer.alloc(RESERVE_CHUNK_BYTES);
      for (let done = 0; done < this.o.reserveBytes; ) {
        done += writeSync(fd, chunk, 0, Math.min(chunk.length, this.o.reserveBytes - done));
      }
      fsyncSync(fd);
      return true;
    } catch (err) {
      if (fd !== null) closeSync(fd);
      fd = null;
      this.releaseReserve();
      if (!diskFullCause(err)) this.o.logger.warn({ file: this.reserveFile, err: (err as Error).message }, "the state disk's reserve file could not be written");
      return false;
    } finally {
      if (fd !== null) closeSync(fd);
    }
  }

  /** Shrinks the reserve to `keepBytes` (deletes it at 0); returns the bytes given back. */
  /** writeReserve, in the thread pool. */
  private async writeReserveAsync(): Promise<boolean> {
    if (this.o.reserveBytes === 0 || this.reserveHeld()) return true;
    let fh: FileHandle | null = null;
    // What is left of it (the half kept for a restart) stays if this fails.
    let kept = 0;
    try {
      kept = statSync(this.reserveFile).size;
    } catch {
      kept = 0;
    }
    try {
      fh = await open(this.reserveFile, "a", 0o600);
      const chunk = Buffer.alloc(RESERVE_CHUNK_BYTES);
      for (let done = kept; done < this.o.reserveBytes; ) {
        done += (await fh.write(chunk, 0, Math.min(chunk.length, this.o.reserveBytes - done))).bytesWritten;
      }
      await fh.sync();
      return true;
    } catch (err) {
      await fh?.close().catch(() => {});
      fh = null;
      this.releaseReserve(kept);
      if (!diskFullCause(err)) this.o.logger.warn({ file: this.reserveFile, err: (err as Error).message }, "the state disk's reserve file could not be written");
      return false;
    } finally {
      await fh?.close().catch(() => {});
    }
  }

  private releaseReserve(keepBytes = 0): number {
    try {
      const size = statSync(this.reserveFile).size;
      if (size <= keepBytes) return 0;
      if (keepBytes === 0) unlinkSync(this.reserveFile);
      else truncateSync(this.reserveFile, keepBytes);
      return size - keepBytes;
    } catch {
      return 0;
    }
  }

  status() {
    const f = this.fullNow;
    return {
      state: f ? ("state-disk-full" as const) : ("ok" as const),
      reason: f?.reason ?? null,
      file: f?.file ?? null,
      fileSystem: f?.fileSystem ?? null,
      cause: f?.cause ?? null,
      sinceMs: f?.sinceMs ?? null,
      episodes: this.episodes,
      refusedWrites: this.refusedWrites,
      reserveBytes: this.reserveHeld() ? this.o.reserveBytes : 0,
    };
  }
}

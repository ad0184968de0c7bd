// The clocks stamps are read from (DESIGN.md, Timestamps; docs/clock.md has
// the file formats).
//
// "monotonic" (one host): a reading is EPOCH + CLOCK_MONOTONIC, where EPOCH is
// fixed once per boot and is the same number in every process of the host for
// the whole boot. It used to be /proc/stat btime read by each process at its
// start; the kernel derives btime from the wall clock, so it moves when the
// clock is stepped (NTP makestep, a manual set, a VM resume) and was seen to
// flip by a second between two reads. Two subsystems started on either side
// of a step then stamped a second or more apart, and dependent writes
// alternating between them got inverted stamps.
//
// The epoch now lives in a file of a host-wide folder, one file per boot:
//   <dir>/<boot_id>.epoch  (boot_id: /proc/sys/kernel/random/boot_id)
// - The first process of a boot creates it: it writes a temporary file,
//   fsyncs it, and link()s it to the final name. link() never replaces, so
//   exactly one creator wins; every other one gets EEXIST and reads the
//   winner's file. Readers never see a partial file. Once read, the epoch is
//   kept in memory: no wall-clock reading is used again in this mode, so a
//   step at any moment after the epoch is fixed changes nothing.
// - Stamps of a later boot must exceed every stamp of the earlier ones,
//   whatever the wall clock did across the reboot. The creator makes its
//   first reading exceed each of:
//   (a) the wall clock now, in ns;
//   (b) per earlier boot's epoch file, the wall clock now plus that boot's
//       lead (its first reading minus the wall clock when its file was
//       created): its readings advanced with real time, so they are at most
//       wall + lead unless the wall clock was stepped back since, plus 1 ms;
//   (c) per boot's high-water file <boot_id>.hw, the highest reading it
//       records plus HW_MARGIN_NS (6 s), which covers the wall clock stepped
//       back across the reboot.
//   The high-water record: each process raises it (under flock, read, write
//   the max) with its first reading and then whenever its reading has gone
//   HW_RAISE_NS (1 s) past the last value it wrote, so every reading of a
//   process is below the record + 1 s. That is a pwrite of 48 bytes once a
//   second, never an fsync on the read path; a background timer (unref'd)
//   fdatasyncs the record every HW_SYNC_MS (4 s), so a power cut loses at
//   most the last ~5 s of it, which the 6 s margin covers.
//   The winner then fsyncs the folder and removes the earlier boots' files:
//   its own epoch file, with its lead, now carries their bound forward.
// - The high-water record also holds the epoch. If this boot's epoch file
//   has gone (a /tmp cleaner) while its high-water file remains, the epoch is
//   restored from it rather than chosen anew, so a process started later
//   still reads the clock of the running ones. The timer also touches the
//   epoch file so that age-based cleaners leave it alone.
// - The folder: $TIDEMARK_CLOCK_DIR when set (tests), else
//   /var/lib/tidemark/clock when it exists or can be created (root), else
//   os.tmpdir()/tidemark-clock. Not /run: it is a tmpfs emptied at boot, and
//   (b) and (c) need the previous boot's files. A tmpdir that is emptied at
//   boot leaves only (a); docs/clock.md says so.
// - Any error reading or creating a file is a ClockFileError (TM_CLOCK) that
//   names the file. An earlier boot's high-water record that does not parse
//   (a power cut while it was written) is skipped with a warning; everything
//   else that does not parse is refused.
//
// "realtime" (several hosts): every reading is the wall clock read at that
// moment (Date.now(), whole milliseconds), never an origin frozen at process
// start: a frozen origin stops following NTP steps, so two processes of one
// host started on either side of a step disagree by the step, more than the
// commit wait covers. A reading is within (-1 ms, 0] of the host's wall
// clock, so two readers of one host differ by less than 1 ms: that is why
// config/schema.ts refuses maxClockOffsetMs below 1 with this clock.
// StampClock keeps stamps strictly increasing within a millisecond and over
// steps back.
//
// createHostClock() takes the readers (wall ns, monotonic ns, boot id, folder)
// so tests step the clocks without touching the machine's; the exported
// functions below use one default instance reading the real ones.
import { randomBytes } from "node:crypto";
import {
  accessSync,
  closeSync,
  constants,
  fdatasync,
  fsyncSync,
  linkSync,
  mkdirSync,
  openSync,
  readFileSync,
  readSync,
  readdirSync,
  unlinkSync,
  utimes,
  writeSync,
} from "node:fs";
import os from "node:os";
import path from "node:path";
import { crc32c, flockSync } from "../runtime/lazy-native.ts";
import type { ErrorCode } from "../errors/codes.ts";

export type ClockSource = "monotonic" | "realtime";

/** A process raises the high-water record when its reading has gone this far past the last value it wrote. */
export const HW_RAISE_NS = 1_000_000_000n;
/** How often the background timer makes the high-water record durable (fdatasync). */
export const HW_SYNC_MS = 4_000;
/** Added to a high-water record: HW_RAISE_NS + HW_SYNC_MS + 1 s for a late timer and the fdatasync itself. */
export const HW_MARGIN_NS = HW_RAISE_NS + BigInt(HW_SYNC_MS) * 1_000_000n + 1_000_000_000n;
/** Added to an earlier boot's wall + lead bound: covers stamps a StampClock handed out past its clock (last + 1). */
export const LEAD_MARGIN_NS = 1_000_000n;

export const BOOT_ID_FILE = "/proc/sys/kernel/random/boot_id";
export const SYSTEM_CLOCK_DIR = "/var/lib/tidemark/clock";

const EPOCH_MAGIC = Buffer.from("TMEPOCH\0", "latin1");
const HW_MAGIC = Buffer.from("TMHIWAT\0", "latin1");
const FORMAT_VERSION = 1;
export const EPOCH_FILE_BYTES = 64;
export const HW_FILE_BYTES = 48;
const U64_MAX = (1n << 64n) - 1n;
const BOOT_ID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
/** <boot_id>.epoch, <boot_id>.hw, and temporary files <boot_id>.epoch.tmp-<pid>-<hex>. */
const NAME_RE = /^([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})\.(epoch|hw)(\.tmp-[0-9a-z-]+)?$/;

/** A clock file that cannot be read, created or parsed; the message names the file. */
export class ClockFileError extends Error {
  readonly code = "TM_CLOCK" satisfies ErrorCode;
  constructor(
    readonly file: string,
    problem: string,
  ) {
    super(`clock file ${file}: ${problem}`);
    this.name = "ClockFileError";
  }
}

export interface EpochRecord {
  bootId: string;
  /** Added to the monotonic clock for the whole boot. */
  epochNs: bigint;
  /** The wall clock (ns) and monotonic clock (ns) when the file was created. */
  createdWallNs: bigint;
  createdMonoNs: bigint;
  /** The bound the boot's first reading was chosen above (max of (a), (b), (c)). */
  floorNs: bigint;
}

export interface HighWaterRecord {
  bootId: string;
  epochNs: bigint;
  /** The highest reading any process of the boot recorded. */
  highNs: bigint;
}

export interface HostClockOptions {
  /** The host-wide folder; default defaultClockDir(). */
  dir?: string;
  /** This boot's id; default the content of /proc/sys/kernel/random/boot_id. */
  bootId?: string | (() => string);
  /** The wall clock in ns since 1970; default Date.now() * 1e6. */
  wallNs?: () => bigint;
  /** The monotonic clock in ns; default process.hrtime.bigint(). */
  monoNs?: () => bigint;
  /** Warnings that do not stop the clock (an unwritable high-water file); default process.emitWarning. */
  warn?: (message: string) => void;
  /** Period of the background fdatasync of the high-water record; 0 disables the timer (tests). */
  syncIntervalMs?: number;
}

export interface HostClock {
  /** The folder, the boot id, and the epoch, fixing it on first use (creating the file when first on this boot). */
  readonly dir: string;
  readonly bootId: string;
  readonly epochFile: string;
  epochNs(): bigint;
  /** EPOCH + CLOCK_MONOTONIC: one clock for every process of the host. */
  monotonicNs(): bigint;
  /** The wall clock read now. */
  realtimeNs(): bigint;
  reader(source: ClockSource): () => bigint;
  /** Stops the background timer and closes the high-water file (tests; processes just exit). */
  close(): void;
}

function errno(err: unknown): string | undefined {
  return (err as NodeJS.ErrnoException | null)?.code;
}

function message(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

/** The folder every tidemark process of this host uses; see the header. */
export function defaultClockDir(env: NodeJS.ProcessEnv = process.env): string {
  const fromEnv = env.TIDEMARK_CLOCK_DIR;
  if (fromEnv !== undefined && fromEnv !== "") return path.resolve(fromEnv);
  try {
    mkdirSync(SYSTEM_CLOCK_DIR, { recursive: true, mode: 0o755 });
    accessSync(SYSTEM_CLOCK_DIR, constants.F_OK);
    return SYSTEM_CLOCK_DIR;
  } catch {
    return path.join(os.tmpdir(), "tidemark-clock");
  }
}

function readBootId(): string {
  try {
    return readFileSync(BOOT_ID_FILE, "utf8").trim();
  } catch (err) {
    throw new ClockFileError(BOOT_ID_FILE, `cannot read the boot id (${message(err)}); the monotonic clock needs Linux`);
  }
}

function bootIdBytes(bootId: string): Buffer {
  return Buffer.from(bootId.replaceAll("-", ""), "hex");
}

function u64(v: bigint, what: string): bigint {
  if (v < 0n || v > U64_MAX) throw new RangeError(`${what} ${v} does not fit in 64 bits`);
  return v;
}

/** Both files open alike (docs/clock.md): magic, format version, CRC32C (filled last), boot id. */
function withHeader(bytes: number, magic: Buffer, bootId: string): Buffer {
  const b = Buffer.alloc(bytes);
  magic.copy(b, 0);
  b.writeUInt32LE(FORMAT_VERSION, 8);
  bootIdBytes(bootId).copy(b, 16);
  return b;
}

export function encodeEpoch(r: EpochRecord): Buffer {
  const b = withHeader(EPOCH_FILE_BYTES, EPOCH_MAGIC, r.bootId);
  b.writeBigUInt64LE(u64(r.epochNs, "epoch"), 32);
  b.writeBigUInt64LE(u64(r.createdWallNs, "wall clock"), 40);
  b.writeBigUInt64LE(u64(r.createdMonoNs, "monotonic clock"), 48);
  b.writeBigUInt64LE(u64(r.floorNs, "floor"), 56);
  b.writeUInt32LE(crc32c(b.subarray(16)), 12);
  return b;
}

export function encodeHighWater(r: HighWaterRecord): Buffer {
  const b = withHeader(HW_FILE_BYTES, HW_MAGIC, r.bootId);
  b.writeBigUInt64LE(u64(r.epochNs, "epoch"), 32);
  b.writeBigUInt64LE(u64(r.highNs, "high-water reading"), 40);
  b.writeUInt32LE(crc32c(b.subarray(16)), 12);
  return b;
}

function formatBootId(b: Buffer): string {
  const h = b.toString("hex");
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

/** Checks the common header; returns the problem, or null. */
function headerProblem(b: Buffer, magic: Buffer, size: number, bootId: string): string | null {
  if (b.length !== size) return `${b.length} bytes, expected ${size}`;
  if (!b.subarray(0, 8).equals(magic)) return `bad magic ${JSON.stringify(b.subarray(0, 8).toString("latin1"))}`;
  const version = b.readUInt32LE(8);
  if (version !== FORMAT_VERSION) return `format version ${version}, this tidemark reads ${FORMAT_VERSION}`;
  if (b.readUInt32LE(12) !== crc32c(b.subarray(16))) return "CRC32C mismatch (corrupt)";
  const inFile = formatBootId(b.subarray(16, 32));
  if (inFile !== bootId) return `holds boot id ${inFile}, but its name says ${bootId}`;
  return null;
}

export function decodeEpoch(b: Buffer, bootId: string, file: string): EpochRecord {
  const problem = headerProblem(b, EPOCH_MAGIC, EPOCH_FILE_BYTES, bootId);
  if (problem) throw new ClockFileError(file, `not a valid epoch file: ${problem}`);
  return {
    bootId,
    epochNs: b.readBigUInt64LE(32),
    createdWallNs: b.readBigUInt64LE(40),
    createdMonoNs: b.readBigUInt64LE(48),
    floorNs: b.readBigUInt64LE(56),
  };
}

export function decodeHighWater(b: Buffer, bootId: string, file: string): HighWaterRecord {
  const problem = headerProblem(b, HW_MAGIC, HW_FILE_BYTES, bootId);
  if (problem) throw new ClockFileError(file, `not a valid high-water file: ${problem}`);
  return { bootId, epochNs: b.readBigUInt64LE(32), highNs: b.readBigUInt64LE(40) };
}

/** The epoch file's record, or null when it does not exist. */
function readEpochFile(file: string, bootId: string): EpochRecord | null {
  let b: Buffer;
  try {
    b = readFileSync(file);
  } catch (err) {
    if (errno(err) === "ENOENT") return null;
    throw new ClockFileError(file, `cannot read it: ${message(err)}`);
  }
  return decodeEpoch(b, bootId, file);
}

/** The high-water record; null when absent or empty (a process died between creating and writing it). */
function readHighWaterFile(file: string, bootId: string): HighWaterRecord | null {
  let b: Buffer;
  try {
    b = readFileSync(file);
  } catch (err) {
    if (errno(err) === "ENOENT") return null;
    throw new ClockFileError(file, `cannot read it: ${message(err)}`);
  }
  return b.length === 0 ? null : decodeHighWater(b, bootId, file);
}

function preadAll(fd: number, size: number): Buffer {
  const b = Buffer.alloc(size + 1);
  let got = 0;
  for (;;) {
    const n = readSync(fd, b, got, b.length - got, got);
    if (n === 0) break;
    got += n;
    if (got === b.length) break;
  }
  return b.subarray(0, got);
}

/** This boot's high-water record, read under a shared flock (processes raise it as we read); null when absent or empty. */
function readHighWaterLocked(file: string, bootId: string): HighWaterRecord | null {
  let fd: number;
  try {
    fd = openSync(file, "r");
  } catch (err) {
    if (errno(err) === "ENOENT") return null;
    throw new ClockFileError(file, `cannot read it: ${message(err)}`);
  }
  let b: Buffer;
  try {
    flockSync(fd, "sh");
    b = preadAll(fd, HW_FILE_BYTES);
  } catch (err) {
    throw new ClockFileError(file, `cannot read it: ${message(err)}`);
  } finally {
    closeSync(fd); // also drops the lock
  }
  return b.length === 0 ? null : decodeHighWater(b, bootId, file);
}

function fsyncDir(dir: string): void {
  const fd = openSync(dir, "r");
  try {
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

function max(a: bigint, b: bigint): bigint {
  return a > b ? a : b;
}

export function createHostClock(opts: HostClockOptions = {}): HostClock {
  const wallNs = opts.wallNs ?? (() => BigInt(Date.now()) * 1_000_000n);
  const monoNs = opts.monoNs ?? (() => process.hrtime.bigint());
  const warn = opts.warn ?? ((m: string) => process.emitWarning(m, { code: "TM_CLOCK" satisfies ErrorCode }));
  const syncIntervalMs = opts.syncIntervalMs ?? HW_SYNC_MS;
  let dir: string | undefined = opts.dir !== undefined ? path.resolve(opts.dir) : undefined;
  let bootId: string | undefined;

  let epoch: bigint | undefined;
  let hwFd: number | undefined;
  let hwNext = 0n; // raise the record when a reading reaches this
  let hwDirty = false;
  let hwWarned = false;
  let timer: NodeJS.Timeout | undefined;

  const theDir = (): string => (dir ??= defaultClockDir());
  const theBootId = (): string => {
    if (bootId !== undefined) return bootId;
    const raw = typeof opts.bootId === "function" ? opts.bootId() : (opts.bootId ?? readBootId());
    const id = raw.trim().toLowerCase();
    if (!BOOT_ID_RE.test(id)) throw new ClockFileError(opts.bootId === undefined ? BOOT_ID_FILE : "(boot id)", `boot id '${raw}' is not a UUID`);
    return (bootId = id);
  };
  const fileOf = (kind: "epoch" | "hw"): string => path.join(theDir(), `${theBootId()}.${kind}`);

  /**
   * The bound the new boot's first reading must exceed, and the epoch to
   * restore (with its highest reading) when this boot's high-water file has one.
   */
  function bound(wall0: bigint): { floor: bigint; restore: HighWaterRecord | null } {
    const d = theDir();
    const me = theBootId();
    let names: string[];
    try {
      names = readdirSync(d);
    } catch (err) {
      throw new ClockFileError(d, `cannot list the clock folder: ${message(err)}`);
    }
    let floor = wall0;
    let restore: HighWaterRecord | null = null;
    for (const name of names) {
      const m = NAME_RE.exec(name);
      if (!m || m[3] !== undefined) continue;
      const [, boot, kind] = m;
      const file = path.join(d, name);
      if (kind === "epoch") {
        if (boot === me) continue; // a racing creator just won; our link() will say so
        const rec = readEpochFile(file, boot);
        if (!rec) continue;
        const first = rec.epochNs + rec.createdMonoNs;
        const lead = first > rec.createdWallNs ? first - rec.createdWallNs : 0n;
        floor = max(floor, max(first, wall0 + lead) + LEAD_MARGIN_NS);
      } else if (boot === me) {
        restore = readHighWaterLocked(file, me);
      } else {
        let rec: HighWaterRecord | null;
        try {
          rec = readHighWaterFile(file, boot);
        } catch (err) {
          // An earlier boot's record may be torn by a power cut: it only
          // tightens the bound; (a) and (b) remain.
          warn(`${message(err)}; skipped (the bound from the epoch files and the wall clock remain)`);
          continue;
        }
        if (rec) floor = max(floor, rec.highNs + HW_MARGIN_NS);
      }
    }
    return { floor, restore };
  }

  /** Creates this boot's epoch file, or reads the one a racing creator made first. */
  function create(file: string): bigint {
    const d = theDir();
    const me = theBootId();
    const mono0 = monoNs();
    const wall0 = wallNs();
    const { floor, restore } = bound(wall0);
    // Restored: the running processes' epoch, and their highest reading as the floor.
    const chosen = restore ? restore.epochNs : floor + 1n > mono0 ? floor + 1n - mono0 : 0n;
    const body = encodeEpoch({ bootId: me, epochNs: chosen, createdWallNs: wall0, createdMonoNs: mono0, floorNs: restore ? restore.highNs : floor });
    const tmp = `${file}.tmp-${process.pid}-${randomBytes(6).toString("hex")}`;
    let won = false;
    try {
      const fd = openSync(tmp, "wx", 0o644);
      try {
        writeSync(fd, body, 0, body.length, 0);
        fsyncSync(fd);
      } finally {
        closeSync(fd);
      }
      try {
        linkSync(tmp, file);
        won = true;
      } catch (err) {
        if (errno(err) !== "EEXIST") throw err;
      }
    } catch (err) {
      if (err instanceof ClockFileError) throw err;
      throw new ClockFileError(file, `cannot create it: ${message(err)}`);
    } finally {
      try {
        unlinkSync(tmp);
      } catch {
        /* never created */
      }
    }
    if (!won) {
      const rec = readEpochFile(file, me);
      if (!rec) throw new ClockFileError(file, "link() said it exists, but it cannot be found");
      return rec.epochNs;
    }
    try {
      fsyncDir(d);
    } catch (err) {
      throw new ClockFileError(d, `cannot fsync the clock folder: ${message(err)}`);
    }
    // The new file carries the earlier boots' bound forward: drop their files.
    try {
      for (const name of readdirSync(d)) {
        const m = NAME_RE.exec(name);
        if (m && m[1] !== me) unlinkSync(path.join(d, name));
      }
    } catch (err) {
      warn(`clock folder ${d}: cannot remove an earlier boot's file (${message(err)}); it is folded in again at the next boot`);
    }
    return chosen;
  }

  function startTimer(): void {
    if (timer || syncIntervalMs <= 0) return;
    timer = setInterval(() => {
      if (!hwDirty || hwFd === undefined) return;
      hwDirty = false;
      fdatasync(hwFd, (err) => {
        if (err) warnHw(err);
      });
      const t = new Date();
      utimes(fileOf("epoch"), t, t, () => {});
    }, syncIntervalMs);
    timer.unref();
  }

  function warnHw(err: unknown): void {
    if (hwWarned) return;
    hwWarned = true;
    warn(`clock file ${fileOf("hw")}: cannot raise the high-water record (${message(err)}); readings of this process may not be covered after a reboot with the wall clock set back`);
  }

  /** Raises the high-water record to r (max with what is there), under an exclusive flock. */
  function raise(r: bigint): void {
    hwNext = r + HW_RAISE_NS;
    try {
      hwFd ??= openSync(fileOf("hw"), constants.O_RDWR | constants.O_CREAT, 0o644);
      flockSync(hwFd, "ex");
      try {
        const cur = preadAll(hwFd, HW_FILE_BYTES);
        let high = -1n;
        if (cur.length > 0) {
          const rec = decodeHighWater(cur, theBootId(), fileOf("hw"));
          if (rec.epochNs !== epoch) {
            throw new ClockFileError(fileOf("hw"), `records epoch ${rec.epochNs}, but ${fileOf("epoch")} says ${epoch}: two epochs in one boot`);
          }
          high = rec.highNs;
        }
        if (r > high) {
          const b = encodeHighWater({ bootId: theBootId(), epochNs: epoch!, highNs: r });
          writeSync(hwFd, b, 0, b.length, 0);
          hwDirty = true;
        }
      } finally {
        flockSync(hwFd, "un");
      }
      startTimer();
    } catch (err) {
      warnHw(err);
    }
  }

  function epochNs(): bigint {
    if (epoch !== undefined) return epoch;
    const d = theDir();
    try {
      mkdirSync(d, { recursive: true, mode: 0o755 });
    } catch (err) {
      throw new ClockFileError(d, `cannot create the clock folder: ${message(err)}`);
    }
    const file = fileOf("epoch");
    const rec = readEpochFile(file, theBootId());
    const e = rec ? rec.epochNs : create(file);
    // This boot's high-water record, when there is one, must hold the same
    // epoch; then the first raise, which also puts the epoch in the record.
    const hw = readHighWaterLocked(fileOf("hw"), theBootId());
    if (hw && hw.epochNs !== e) {
      throw new ClockFileError(file, `says epoch ${e}, but ${fileOf("hw")} records ${hw.epochNs}: two epochs in one boot (was the epoch file replaced by hand?)`);
    }
    epoch = e;
    raise(e + monoNs());
    return e;
  }

  function monotonicNs(): bigint {
    const r = (epoch ?? epochNs()) + monoNs();
    if (r >= hwNext) raise(r);
    return r;
  }

  return {
    get dir() {
      return theDir();
    },
    get bootId() {
      return theBootId();
    },
    get epochFile() {
      return fileOf("epoch");
    },
    epochNs,
    monotonicNs,
    realtimeNs: wallNs,
    reader(source: ClockSource): () => bigint {
      if (source === "realtime") return wallNs;
      epochNs(); // fix the epoch now: a bad clock file fails the caller's start, not its first write
      return monotonicNs;
    },
    close(): void {
      if (timer) clearInterval(timer);
      timer = undefined;
      if (hwFd !== undefined) {
        try {
          closeSync(hwFd);
        } catch {
          /* closed */
        }
      }
      hwFd = undefined;
    },
  };
}

let host: HostClock | undefined;

/** The process's host clock: the real readers, defaultClockDir() (read at first use). */
export function hostClock(): HostClock {
  return (host ??= createHostClock());
}

/** Nanoseconds: CLOCK_MONOTONIC plus this boot's epoch, identical in every process of the host for the whole boot. */
export function monotonicNs(): bigint {
  return hostClock().monotonicNs();
}

/** Nanoseconds since 1970, read from the wall clock now (millisecond resolution). */
export function realtimeNs(): bigint {
  return hostClock().realtimeNs();
}

/** The reader for a config's `clock`; for "monotonic" it fixes the epoch now (throws ClockFileError). */
export function clockReader(source: ClockSource): () => bigint {
  return hostClock().reader(source);
}

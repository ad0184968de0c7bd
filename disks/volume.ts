// A volume: a fixed-size byte range on a regular file or a Linux block device,
// read and written at 512-byte-aligned offsets with positional async I/O.
// Invariants: at most one opener per path (exclusive flock, plus O_EXCL on
// block devices), the size never changes while open, and no request touches a
// byte outside [0, sizeBytes).
import { constants as fsc, writeSync } from "node:fs";
import { mkdir, open, stat, type FileHandle } from "node:fs/promises";
import { dirname } from "node:path";
import fsExt from "fs-ext";
import { VolumeError, sysCodeOf, type VolumeErrorCode } from "./errors.ts";

export { VolumeError, VOLUME_ERROR_CODES, type VolumeErrorCode } from "./errors.ts";

/** Every offset and length must be a multiple of this; it is the smallest sector any block device has. */
export const SECTOR_BYTES = 512;
/** writeZeroes writes at most this much per pwrite, so zeroing a whole volume needs no large buffer. */
export const ZERO_CHUNK_BYTES = 1024 * 1024;
/** Largest single read: read() allocates its result, so a bad length must not allocate gigabytes. */
export const READ_BYTES_MAX = 32 * 1024 * 1024;
// lseek whences Linux adds (fs-ext exports only the POSIX three).
const SEEK_DATA = 3;
const SEEK_HOLE = 4;

/** New volume files hold host data: readable by their owner only. */
const CREATE_FILE_MODE = 0o600;

// Shared by every volume; only ever passed to pwrite, never handed to callers.
const ZERO_CHUNK = Buffer.alloc(ZERO_CHUNK_BYTES);

export type VolumeKind = "file" | "block";

export interface Volume {
  readonly name: string;
  readonly path: string;
  readonly kind: VolumeKind;
  readonly sizeBytes: number;
  /** offset and length multiples of 512, inside the volume. */
  read(offset: number, length: number): Promise<Buffer>;
  write(offset: number, data: Buffer): Promise<void>;
  /**
   * The same pwrite, done on the calling thread: about 4 us of CPU for 4 KiB
   * against about 22 us for a promise through the thread pool. For batches of
   * small writes into the page cache (the secondary's applier); it blocks
   * the event loop for as long as the kernel takes.
   */
  writeSync(offset: number, data: Buffer): void;
  writeZeroes(offset: number, length: number): Promise<void>;
  /**
   * The first offset at or after `offset` that may hold data (lseek
   * SEEK_DATA), or sizeBytes when the rest reads as zeroes. Where the kernel
   * cannot tell (block devices, some filesystems) everything is data.
   */
  nextData(offset: number): number;
  /** The first offset at or after `offset` of a hole (SEEK_HOLE), or sizeBytes. */
  nextHole(offset: number): number;
  /** fdatasync */
  sync(): Promise<void>;
  close(): Promise<void>;
}

export interface OpenVolumeOptions {
  name: string;
  path: string;
  /** create a sparse file of this size if the path does not exist (regular files only) */
  createSizeBytes?: number;
  readOnly?: boolean;
}

export async function openVolume(o: OpenVolumeOptions): Promise<Volume> {
  const readOnly = o.readOnly === true;
  const ctx = { volume: o.name, path: o.path };
  if (o.createSizeBytes !== undefined && !isValidSize(o.createSizeBytes)) {
    throw new VolumeError(
      "TM_VOLUME_SIZE",
      `volume "${o.name}": createSizeBytes ${o.createSizeBytes} for ${o.path} must be a positive multiple of ${SECTOR_BYTES}`,
      ctx,
    );
  }

  let pre: Awaited<ReturnType<typeof stat>> | undefined;
  try {
    pre = await stat(o.path);
  } catch (err) {
    const sys = sysCodeOf(err);
    if (sys !== "ENOENT" && sys !== "ENOTDIR") throw openError(o, readOnly, "stat", err);
  }

  if (pre === undefined) {
    const created = await createSparse(o, readOnly);
    // Lost a race with another creator: that file exists now, open it as any existing one.
    if (created !== undefined) return created;
  }
  return openExisting(o, readOnly, pre?.isBlockDevice() === true);
}

async function openExisting(o: OpenVolumeOptions, readOnly: boolean, looksBlock: boolean): Promise<Volume> {
  // O_EXCL on a block device (without O_CREAT) is Linux's kernel-level claim:
  // it fails with EBUSY while the device is mounted or claimed by dm/md or
  // another O_EXCL opener, which flock alone would not notice.
  let flags = readOnly ? fsc.O_RDONLY : fsc.O_RDWR;
  if (looksBlock) flags |= fsc.O_EXCL;
  let handle: FileHandle;
  try {
    handle = await open(o.path, flags);
  } catch (err) {
    throw openError(o, readOnly, "open", err);
  }
  try {
    lockExclusive(handle, o);
    const st = await handle.stat();
    let kind: VolumeKind;
    let sizeBytes: number;
    if (st.isFile()) {
      kind = "file";
      sizeBytes = st.size;
    } else if (st.isBlockDevice()) {
      kind = "block";
      // fstat reports 0 for a block device; lseek(SEEK_END) asks the driver.
      // Synchronous, but once per open and it does not touch the medium.
      sizeBytes = fsExt.seekSync(handle.fd, 0, fsExt.constants.SEEK_END);
    } else {
      throw new VolumeError(
        "TM_VOLUME_KIND",
        `volume "${o.name}": ${o.path} is neither a regular file nor a block device`,
        { volume: o.name, path: o.path },
      );
    }
    if ((kind === "block") !== looksBlock) {
      throw new VolumeError("TM_VOLUME_KIND", `volume "${o.name}": ${o.path} changed type while being opened`, {
        volume: o.name,
        path: o.path,
      });
    }
    if (!isValidSize(sizeBytes)) {
      const hint = sizeBytes === 0 && kind === "file" ? " (an empty file, perhaps a creation cut short: remove it to recreate)" : "";
      throw new VolumeError(
        "TM_VOLUME_SIZE",
        `volume "${o.name}": ${o.path} is ${sizeBytes} bytes, not a positive multiple of ${SECTOR_BYTES}${hint}`,
        { volume: o.name, path: o.path },
      );
    }
    // An existing file keeps its size even when createSizeBytes differs:
    // growing or truncating a volume that holds data is never done silently.
    return new FileVolume(o.name, o.path, kind, sizeBytes, readOnly, handle);
  } catch (err) {
    await handle.close().catch(() => undefined);
    if (err instanceof VolumeError) throw err;
    throw new VolumeError("TM_VOLUME_IO", `volume "${o.name}": cannot open ${o.path}: ${describe(err)}`, {
      volume: o.name,
      path: o.path,
      sysCode: sysCodeOf(err),
      cause: err,
    });
  }
}

/** Creates, locks and sizes a new sparse file; undefined when the path appeared meanwhile. */
async function createSparse(o: OpenVolumeOptions, readOnly: boolean): Promise<Volume | undefined> {
  const ctx = { volume: o.name, path: o.path };
  if (o.createSizeBytes === undefined) {
    throw new VolumeError("TM_VOLUME_MISSING", `volume "${o.name}": ${o.path} does not exist`, ctx);
  }
  if (readOnly) {
    throw new VolumeError(
      "TM_VOLUME_MISSING",
      `volume "${o.name}": ${o.path} does not exist, and a read-only volume is never created`,
      ctx,
    );
  }
  // A missing /dev node means a missing device; a regular file there would
  // hide that and fill the tmpfs that /dev lives on.
  if (o.path.startsWith("/dev/")) {
    throw new VolumeError("TM_VOLUME_MISSING", `volume "${o.name}": block device ${o.path} does not exist`, ctx);
  }
  const size = o.createSizeBytes;
  const parent = dirname(o.path);
  let handle: FileHandle;
  try {
    await mkdir(parent, { recursive: true });
    handle = await open(o.path, fsc.O_RDWR | fsc.O_CREAT | fsc.O_EXCL, CREATE_FILE_MODE);
  } catch (err) {
    if (sysCodeOf(err) === "EEXIST") return undefined;
    throw openError(o, readOnly, "create", err);
  }
  try {
    lockExclusive(handle, o);
    await handle.truncate(size);
    // The new size and the directory entry must survive a power cut before
    // any write to the volume is acknowledged.
    await handle.sync();
    await syncDirectory(parent);
    return new FileVolume(o.name, o.path, "file", size, false, handle);
  } catch (err) {
    await handle.close().catch(() => undefined);
    if (err instanceof VolumeError) throw err;
    throw new VolumeError("TM_VOLUME_IO", `volume "${o.name}": cannot create ${o.path} (${size} bytes): ${describe(err)}`, {
      ...ctx,
      sysCode: sysCodeOf(err),
      cause: err,
    });
  }
}

async function syncDirectory(dir: string): Promise<void> {
  const d = await open(dir, fsc.O_RDONLY);
  try {
    await d.sync();
  } finally {
    await d.close();
  }
}

function lockExclusive(handle: FileHandle, o: OpenVolumeOptions): void {
  // flock belongs to the open file description, so a second open() in this
  // same process conflicts too, and close() of our only fd releases it.
  // Non-blocking: the syscall returns at once, so calling it sync is fine.
  try {
    fsExt.flockSync(handle.fd, "exnb");
  } catch (err) {
    const sys = sysCodeOf(err);
    if (sys === "EAGAIN" || sys === "EWOULDBLOCK") {
      throw new VolumeError(
        "TM_VOLUME_LOCKED",
        `volume "${o.name}": ${o.path} is locked by another opener (an exclusive flock is held by this or another process)`,
        { volume: o.name, path: o.path, sysCode: sys, cause: err },
      );
    }
    throw new VolumeError("TM_VOLUME_IO", `volume "${o.name}": cannot flock ${o.path}: ${describe(err)}`, {
      volume: o.name,
      path: o.path,
      sysCode: sys,
      cause: err,
    });
  }
}

function openError(o: OpenVolumeOptions, readOnly: boolean, op: string, err: unknown): VolumeError {
  const sys = sysCodeOf(err);
  const ctx = { volume: o.name, path: o.path, sysCode: sys, cause: err };
  const mode = readOnly ? "reading" : "reading and writing";
  let code: VolumeErrorCode = "TM_VOLUME_IO";
  let why = describe(err);
  switch (sys) {
    case "ENOENT":
    case "ENOTDIR":
      code = "TM_VOLUME_MISSING";
      why = "it does not exist";
      break;
    case "EACCES":
    case "EPERM":
      code = "TM_VOLUME_ACCESS";
      why = `permission denied (${sys}); check its owner and mode, or run tidemark as a user allowed to open it for ${mode}`;
      break;
    case "EROFS":
      code = "TM_VOLUME_ACCESS";
      why = "it is on a read-only file system; open the volume read-only or remount";
      break;
    case "EBUSY":
      code = "TM_VOLUME_LOCKED";
      why = "the device is in use (mounted, or claimed by the kernel or another exclusive opener)";
      break;
    case "EISDIR":
      code = "TM_VOLUME_KIND";
      why = "it is a directory";
      break;
  }
  return new VolumeError(code, `volume "${o.name}": cannot ${op} ${o.path} for ${mode}: ${why}`, ctx);
}

function isValidSize(n: number): boolean {
  return Number.isSafeInteger(n) && n > 0 && n % SECTOR_BYTES === 0;
}

function describe(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

class FileVolume implements Volume {
  private handle: FileHandle | null;
  // After a failed fdatasync Linux may have dropped the dirty pages and a
  // later fdatasync can succeed without them, so one failure poisons every
  // later write and sync: the caller must treat the volume as suspect.
  private syncFailure: VolumeError | null = null;

  constructor(
    readonly name: string,
    readonly path: string,
    readonly kind: VolumeKind,
    readonly sizeBytes: number,
    private readonly readOnly: boolean,
    handle: FileHandle,
  ) {
    this.handle = handle;
  }

  async read(offset: number, length: number): Promise<Buffer> {
    const h = this.usable("read", offset, length);
    if (length > READ_BYTES_MAX) {
      throw this.error("TM_VOLUME_RANGE", `read of ${length} bytes exceeds READ_BYTES_MAX (${READ_BYTES_MAX})`, offset, length);
    }
    // Unsafe is fine: the loop below fills every byte or throws.
    const buf = Buffer.allocUnsafe(length);
    let done = 0;
    try {
      while (done < length) {
        const { bytesRead } = await h.read(buf, done, length - done, offset + done);
        if (bytesRead === 0) {
          throw this.error("TM_VOLUME_IO", `unexpected end of ${this.path} (was it truncated?)`, offset + done, length - done);
        }
        done += bytesRead;
      }
    } catch (err) {
      throw this.ioError("read", err, offset, length);
    }
    return buf;
  }

  async write(offset: number, data: Buffer): Promise<void> {
    const h = this.writable("write", offset, data.length);
    try {
      await this.writeAll(h, data, data.length, offset);
    } catch (err) {
      throw this.ioError("write", err, offset, data.length);
    }
  }

  writeSync(offset: number, data: Buffer): void {
    const h = this.writable("write", offset, data.length);
    let done = 0;
    try {
      while (done < data.length) {
        const n = writeSync(h.fd, data, done, data.length - done, offset + done);
        if (n === 0) throw this.error("TM_VOLUME_IO", "pwrite wrote 0 bytes", offset + done, data.length - done);
        done += n;
      }
    } catch (err) {
      if (err instanceof VolumeError) throw err;
      throw this.ioError("write", err, offset + done, data.length - done);
    }
  }

  nextData(offset: number): number {
    return this.seekExtent(offset, SEEK_DATA, offset);
  }

  nextHole(offset: number): number {
    return this.seekExtent(offset, SEEK_HOLE, this.sizeBytes);
  }

  private seekExtent(offset: number, whence: number, fallback: number): number {
    const h = this.open("seek");
    if (offset >= this.sizeBytes) return this.sizeBytes;
    try {
      return Math.min(this.sizeBytes, fsExt.seekSync(h.fd, offset, whence));
    } catch (err) {
      // ENXIO: no data at or after offset. Anything else (EINVAL where the
      // filesystem or device has no extents): be safe, call it data.
      if ((err as NodeJS.ErrnoException).code === "ENXIO") return this.sizeBytes;
      return fallback;
    }
  }

  async writeZeroes(offset: number, length: number): Promise<void> {
    const h = this.writable("writeZeroes", offset, length);
    let done = 0;
    try {
      while (done < length) {
        const n = Math.min(ZERO_CHUNK_BYTES, length - done);
        await this.writeAll(h, ZERO_CHUNK, n, offset + done);
        done += n;
      }
    } catch (err) {
      throw this.ioError("writeZeroes", err, offset + done, length - done);
    }
  }

  async sync(): Promise<void> {
    const h = this.open("sync");
    if (this.syncFailure !== null) throw this.syncFailure;
    try {
      await h.datasync();
    } catch (err) {
      const e = this.ioError("sync", err);
      if (e.code === "TM_VOLUME_IO") this.syncFailure = e;
      throw e;
    }
  }

  async close(): Promise<void> {
    const h = this.handle;
    if (h === null) return;
    this.handle = null;
    // FileHandle.close waits for operations already in flight; closing our
    // only descriptor releases the flock.
    try {
      await h.close();
    } catch (err) {
      throw this.ioError("close", err);
    }
  }

  private async writeAll(h: FileHandle, data: Buffer, length: number, position: number): Promise<void> {
    let done = 0;
    while (done < length) {
      const { bytesWritten } = await h.write(data, done, length - done, position + done);
      if (bytesWritten === 0) {
        throw this.error("TM_VOLUME_IO", "pwrite wrote 0 bytes", position + done, length - done);
      }
      done += bytesWritten;
    }
  }

  private open(op: string): FileHandle {
    if (this.handle === null) {
      throw new VolumeError("TM_VOLUME_CLOSED", `volume "${this.name}": ${op} on ${this.path} after close`, {
        volume: this.name,
        path: this.path,
      });
    }
    return this.handle;
  }

  private usable(op: string, offset: number, length: number): FileHandle {
    const h = this.open(op);
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0) {
      throw this.error("TM_VOLUME_RANGE", `${op}: offset and length must be non-negative integers`, offset, length);
    }
    if (offset % SECTOR_BYTES !== 0 || length % SECTOR_BYTES !== 0) {
      throw this.error("TM_VOLUME_ALIGN", `${op}: offset and length must be multiples of ${SECTOR_BYTES}`, offset, length);
    }
    if (offset + length > this.sizeBytes) {
      throw this.error("TM_VOLUME_RANGE", `${op}: [${offset}, ${offset + length}) is outside the volume's ${this.sizeBytes} bytes`, offset, length);
    }
    return h;
  }

  private writable(op: string, offset: number, length: number): FileHandle {
    const h = this.usable(op, offset, length);
    if (this.readOnly) throw this.error("TM_VOLUME_READONLY", `${op}: the volume is open read-only`, offset, length);
    if (this.syncFailure !== null) throw this.syncFailure;
    return h;
  }

  private error(code: VolumeErrorCode, what: string, offset?: number, length?: number, sysCode?: string, cause?: unknown): VolumeError {
    return new VolumeError(code, `volume "${this.name}" (${this.path}): ${what}`, {
      volume: this.name,
      path: this.path,
      offset,
      length,
      sysCode,
      cause,
    });
  }

  private ioError(op: string, err: unknown, offset?: number, length?: number): VolumeError {
    if (err instanceof VolumeError) return err;
    const sys = sysCodeOf(err);
    // close() raced with this operation: say so rather than report EBADF.
    if (this.handle === null && sys === "EBADF") {
      return this.error("TM_VOLUME_CLOSED", `${op} interrupted by close`, offset, length, sys, err);
    }
    const range = offset === undefined ? "" : ` at offset ${offset}` + (length === undefined ? "" : ` length ${length}`);
    return this.error("TM_VOLUME_IO", `${op} failed${range}: ${describe(err)}`, offset, length, sys, err);
  }
}

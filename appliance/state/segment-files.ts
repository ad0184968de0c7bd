// The files a payload-segment store (payload-segments.ts) lives in, as an
// interface: the subsystem passes a directory of real files beside its state
// file; the seeded simulation passes files that lose what was not synced at a
// power cut. The durability rule both keep: bytes written are readable at
// once and survive kill -9 (page cache); they survive a power cut only once
// sync (fdatasync) has returned.
import { closeSync, existsSync, fdatasync, fdatasyncSync, fstatSync, mkdirSync, openSync, readdirSync, readSync, unlink, writevSync } from "node:fs";
import path from "node:path";
import { promisify } from "node:util";

const fdatasyncAsync = promisify(fdatasync);

export interface SegmentFile {
  /** Bytes in the file now. */
  size(): number;
  /** Positional writev; returns the bytes written (may be fewer than asked). */
  writev(bufs: readonly Buffer[], position: number): number;
  read(buf: Buffer, offset: number, length: number, position: number): number;
  /** fdatasync on this thread. */
  syncNow(): void;
  /** fdatasync in the thread pool. */
  sync(): Promise<void>;
  close(): void;
}

export interface SegmentDir {
  /** Numbers of the segments present. */
  list(): number[];
  /** Opens a segment, creating it empty if it does not exist. */
  open(seg: number): SegmentFile;
  /** Deletes a segment, off the event loop; a failure is reported, never thrown. */
  remove(seg: number): void;
  /** The segment's file name, for errors. */
  nameOf(seg: number): string;
}

/** `<dir>/<prefix>-<n>.seg`, real files. */
export function fileSegmentDir(dir: string, prefix: string, onError: (err: Error) => void = () => {}): SegmentDir {
  mkdirSync(dir, { recursive: true });
  const nameOf = (seg: number) => path.join(dir, `${prefix}-${String(seg).padStart(8, "0")}.seg`);
  const re = new RegExp(`^${prefix}-(\\d+)\\.seg$`);
  return {
    nameOf,
    list: () =>
      readdirSync(dir)
        .map((f) => re.exec(f))
        .filter((m): m is RegExpExecArray => m !== null)
        .map((m) => Number(m[1])),
    open: (seg) => {
      const file = nameOf(seg);
      const fd = openSync(file, existsSync(file) ? "r+" : "w+", 0o600);
      return {
        size: () => fstatSync(fd).size,
        writev: (bufs, position) => writevSync(fd, bufs as Buffer[], position),
        read: (buf, offset, length, position) => readSync(fd, buf, offset, length, position),
        syncNow: () => fdatasyncSync(fd),
        sync: () => fdatasyncAsync(fd),
        close: () => closeSync(fd),
      };
    },
    // Freeing 64 MiB of extents takes milliseconds: off the event loop.
    remove: (seg) =>
      unlink(nameOf(seg), (err) => {
        if (err && err.code !== "ENOENT") onError(err);
      }),
  };
}

// Append-only payload files beside the state file (docs/segments.md). The
// primary's journal and the secondary's RCR queue keep their rows in SQLite
// and their payloads here: SQLite writes a blob page by page into its WAL and
// copies it again at the checkpoint, on the event-loop thread, which bound
// large writes at about 100 MiB/s; a segment takes each payload once, in one
// positional writev per commit. A row names its payload by (segment, offset,
// length, CRC32C); segments older than the oldest row still in the table are
// deleted.
import { closeSync, existsSync, fdatasyncSync, mkdirSync, openSync, readdirSync, readSync, unlink, writevSync, fstatSync } from "node:fs";
import path from "node:path";
import { fdatasync } from "node:fs";
import { promisify } from "node:util";

const fdatasyncAsync = promisify(fdatasync);

/** A segment is closed for appends once it holds this much. */
export const SEGMENT_BYTES = 64 * 1024 * 1024;

export interface PayloadRef {
  seg: number;
  off: number;
}

interface Segment {
  fd: number;
  size: number;
}

export class PayloadSegments {
  private readonly segments = new Map<number, Segment>();
  private current: number;
  /** No segment below this one exists. */
  private lowest: number;
  /** Segments appended to since the last sync. */
  private readonly dirty = new Set<number>();

  /** `dir` holds files named `<prefix>-<n>.seg`; the highest n is appended to. */
  constructor(
    private readonly dir: string,
    private readonly prefix: string,
    private readonly segmentBytes = SEGMENT_BYTES,
    /** A segment that could not be deleted (it stays; the next collect does not retry it). */
    private readonly onError: (err: Error) => void = () => {},
  ) {
    mkdirSync(dir, { recursive: true });
    const re = new RegExp(`^${prefix}-(\\d+)\\.seg$`);
    let top = 0;
    let bottom = Number.POSITIVE_INFINITY;
    for (const f of readdirSync(dir)) {
      const m = re.exec(f);
      if (!m) continue;
      top = Math.max(top, Number(m[1]));
      bottom = Math.min(bottom, Number(m[1]));
    }
    this.current = top === 0 ? 1 : top;
    this.lowest = top === 0 ? 1 : bottom;
  }

  private fileOf(seg: number): string {
    return path.join(this.dir, `${this.prefix}-${String(seg).padStart(8, "0")}.seg`);
  }

  private open(seg: number): Segment {
    let s = this.segments.get(seg);
    if (!s) {
      const file = this.fileOf(seg);
      const fd = openSync(file, existsSync(file) ? "r+" : "w+", 0o600);
      s = { fd, size: fstatSync(fd).size };
      this.segments.set(seg, s);
    }
    return s;
  }

  /**
   * Appends the payloads in one writev and says where each went. Synchronous
   * (page cache, a few us per 4 KiB): it runs inside a group commit, before
   * the rows that name the payloads are committed.
   */
  append(payloads: readonly Buffer[]): PayloadRef[] {
    if (payloads.length === 0) return [];
    let s = this.open(this.current);
    if (s.size >= this.segmentBytes) {
      this.current++;
      s = this.open(this.current);
    }
    const refs: PayloadRef[] = [];
    let off = s.size;
    for (const p of payloads) {
      refs.push({ seg: this.current, off });
      off += p.length;
    }
    let done = 0;
    const total = off - s.size;
    // writev may write less than asked (a signal, a full disk): go on from
    // where it stopped; at most IOV_BATCH buffers per call (IOV_MAX is 1024).
    while (done < total) {
      const bufs = remaining(payloads, done, IOV_BATCH);
      const n = writevSync(s.fd, bufs, s.size + done);
      if (n === 0) throw Object.assign(new Error(`${this.fileOf(this.current)}: writev wrote 0 bytes at ${s.size + done}`), { code: "TM_SEGMENT_IO" });
      done += n;
    }
    s.size = off;
    this.dirty.add(this.current);
    return refs;
  }

  /** fdatasync of every segment appended to since the last sync: before a commit that must survive a power cut. */
  sync(): void {
    for (const seg of this.dirty) {
      const s = this.segments.get(seg);
      if (s) fdatasyncSync(s.fd);
    }
    this.dirty.clear();
  }

  /** sync(), in the thread pool. */
  async syncAsync(): Promise<void> {
    const fds = [...this.dirty].map((seg) => this.segments.get(seg)?.fd).filter((fd): fd is number => fd !== undefined);
    this.dirty.clear();
    await Promise.all(fds.map((fd) => fdatasyncAsync(fd)));
  }

  read(ref: PayloadRef, length: number): Buffer {
    const s = this.open(ref.seg);
    const buf = Buffer.allocUnsafe(length);
    let done = 0;
    while (done < length) {
      const n = readSync(s.fd, buf, done, length - done, ref.off + done);
      if (n === 0) throw Object.assign(new Error(`${this.fileOf(ref.seg)}: payload at ${ref.off}+${length} ends at ${ref.off + done}, past the end of the file`), { code: "TM_SEGMENT_SHORT" });
      done += n;
    }
    return buf;
  }

  /** Deletes every segment below `oldestInUse` (the segment of the oldest row still in the table), never the current one. */
  collect(oldestInUse: number | null): number {
    const keep = Math.min(oldestInUse ?? this.current, this.current);
    let removed = 0;
    for (let seg = this.lowest; seg < keep; seg++) {
      const s = this.segments.get(seg);
      if (s) closeSync(s.fd);
      this.segments.delete(seg);
      this.dirty.delete(seg);
      // Freeing 64 MiB of extents takes milliseconds: off the event loop.
      unlink(this.fileOf(seg), (err) => {
        if (err && err.code !== "ENOENT") this.onError(err);
      });
      removed++;
    }
    if (keep > this.lowest) this.lowest = keep;
    return removed;
  }

  close(): void {
    for (const s of this.segments.values()) closeSync(s.fd);
    this.segments.clear();
  }
}

const IOV_BATCH = 512;

/** The payloads after the first `skip` bytes, at most `max` buffers. */
function remaining(payloads: readonly Buffer[], skip: number, max: number): Buffer[] {
  const out: Buffer[] = [];
  for (const p of payloads) {
    if (out.length >= max) break;
    if (skip >= p.length) {
      skip -= p.length;
      continue;
    }
    out.push(skip > 0 ? p.subarray(skip) : p);
    skip = 0;
  }
  return out;
}

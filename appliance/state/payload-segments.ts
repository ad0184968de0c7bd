// Append-only payload files beside the state file (docs/segments.md). The
// primary's journal and the secondary's RCR queue keep their rows in SQLite
// and their payloads here: SQLite writes a blob page by page into its WAL and
// copies it again at the checkpoint, on the event-loop thread, which bound
// large writes at about 100 MiB/s; a segment takes each payload once, in one
// positional writev per commit. A row names its payload by (segment, offset,
// length, CRC32C); segments older than the oldest row still in the table are
// deleted.
import type { SegmentDir, SegmentFile } from "./segment-files.ts";
import { tmError } from "../errors/codes.ts";
import { assert } from "../invariant.ts";

/** A segment is closed for appends once it holds this much. */
export const SEGMENT_BYTES = 64 * 1024 * 1024;
/**
 * When no row names any payload and the current segment holds at least this
 * much, appends move to a new segment and the old one is deleted: a drained
 * journal or queue gives its space back (a suspension on a full disk relies
 * on it) instead of keeping up to SEGMENT_BYTES until the segment fills.
 */
export const SEGMENT_RESET_BYTES = 4 * 1024 * 1024;

export interface PayloadRef {
  seg: number;
  off: number;
}

interface Segment {
  file: SegmentFile;
  size: number;
}

export class PayloadSegments {
  private readonly segments = new Map<number, Segment>();
  private current: number;
  /** No segment below this one exists. */
  private lowest: number;
  /** Segments appended to since the last sync. */
  private readonly dirty = new Set<number>();
  /** The highest keep a pending collectWhenDurable will remove below (0: none). */
  private removing = 0;
  private closed = false;

  /** `dir` holds this prefix's segments; the highest one is appended to. */
  constructor(
    private readonly dir: SegmentDir,
    private readonly segmentBytes = SEGMENT_BYTES,
  ) {
    const present = dir.list();
    this.current = present.length === 0 ? 1 : Math.max(...present);
    this.lowest = present.length === 0 ? 1 : Math.min(...present);
    // A process killed between its append and its sync leaves pages no
    // fdatasync covered: the rows that name them must not be taken for
    // durable (and acknowledged) before the first sync of this incarnation.
    for (const seg of present) this.dirty.add(seg);
  }

  private open(seg: number): Segment {
    let s = this.segments.get(seg);
    if (!s) {
      const file = this.dir.open(seg);
      s = { file, size: file.size() };
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
    try {
      return this.appendUnnamed(payloads);
    } catch (err) {
      const code = (err as { code?: unknown }).code;
      if (code === "TM_SEGMENT_IO" || typeof code !== "string") throw err;
      // The operating system's error (ENOSPC, EDQUOT, EIO) with the file it was
      // about: the disk guard names it, and the NBD edge maps sysCode.
      const file = this.dir.nameOf(this.current);
      throw Object.assign(tmError("TM_SEGMENT_IO", `${file}: ${(err as Error).message}`, { file, sysCode: code }, { cause: err }), { sysCode: code });
    }
  }

  private appendUnnamed(payloads: readonly Buffer[]): PayloadRef[] {
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
      const n = s.file.writev(bufs, s.size + done);
      if (n === 0) {
        const file = this.dir.nameOf(this.current);
        throw tmError("TM_SEGMENT_IO", `${file}: writev wrote 0 bytes at ${s.size + done}`, { file, offset: s.size + done });
      }
      done += n;
    }
    s.size = off;
    this.dirty.add(this.current);
    return refs;
  }

  /** fdatasync of every segment appended to since the last sync: before a commit that must survive a power cut. */
  sync(): void {
    for (const seg of this.dirty) this.open(seg).file.syncNow();
    this.dirty.clear();
  }

  /** sync(), in the thread pool. */
  async syncAsync(): Promise<void> {
    const files = [...this.dirty].map((seg) => this.open(seg).file);
    this.dirty.clear();
    await Promise.all(files.map((f) => f.sync()));
  }

  read(ref: PayloadRef, length: number): Buffer {
    const s = this.open(ref.seg);
    const buf = Buffer.allocUnsafe(length);
    let done = 0;
    while (done < length) {
      const n = s.file.read(buf, done, length - done, ref.off + done);
      if (n === 0) {
        const file = this.dir.nameOf(ref.seg);
        throw tmError("TM_SEGMENT_SHORT", `${file}: payload at ${ref.off}+${length} ends at ${ref.off + done}, past the end of the file`, { file, offset: ref.off, length });
      }
      done += n;
    }
    return buf;
  }

  /**
   * Deletes every segment below `oldestInUse` (the segment of the oldest row
   * still in the table), never the current one. Only for a caller whose
   * table is durable as it reads it (after a barrier); otherwise
   * collectWhenDurable.
   */
  collect(oldestInUse: number | null): number {
    return this.removeBelow(this.retire(oldestInUse));
  }

  /**
   * collect() once `durable` resolves. The rows that named the segments went
   * in a NORMAL commit, which a power cut can take back while an unlink
   * stays: the rows would come back without their payloads, and a queue or
   * journal row whose payload is gone cannot be applied or replayed
   * (docs/segments.md, finding 18 of docs/simulation.md). `durable` must
   * sync every commit made before this call (the WAL's fdatasync does).
   */
  collectWhenDurable(oldestInUse: number | null, durable: () => Promise<void>): void {
    const keep = this.retire(oldestInUse);
    if (keep <= this.lowest || keep <= this.removing) return;
    this.removing = keep;
    durable().then(
      () => {
        if (!this.closed) this.removeBelow(keep);
      },
      // Left for the next collect, whose sync covers this one's commit too.
      () => {
        if (this.removing === keep) this.removing = 0;
      },
    );
  }

  /**
   * Where removal may stop: segments below it hold no row's payload. A
   * drained table with a current segment big enough moves appends to a new
   * one, so that the old one can go too.
   */
  private retire(oldestInUse: number | null): number {
    if (oldestInUse === null && (this.segments.get(this.current)?.size ?? 0) >= Math.min(SEGMENT_RESET_BYTES, this.segmentBytes)) this.current++;
    return Math.min(oldestInUse ?? this.current, this.current);
  }

  private removeBelow(keep: number): number {
    // Appends only move forward: a segment below a keep once computed never takes a payload again.
    assert(keep <= this.current, `payload segments: removal up to ${keep} would take the current segment ${this.current}`);
    let removed = 0;
    for (let seg = this.lowest; seg < keep; seg++) {
      this.segments.get(seg)?.file.close();
      this.segments.delete(seg);
      this.dirty.delete(seg);
      this.dir.remove(seg);
      removed++;
    }
    if (keep > this.lowest) this.lowest = keep;
    return removed;
  }

  close(): void {
    this.closed = true;
    for (const s of this.segments.values()) s.file.close();
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

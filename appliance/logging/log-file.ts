// The subsystem's log file as pino's destination: a log line costs the write
// path one array push, never a wait. Lines are written by one asynchronous
// fs.write at a time (a libuv thread, off the event loop), from a buffer
// bounded at `logBufferKiB` (LOG_BUFFER_BYTES_MAX by default); while the file cannot be written (a full
// or failing log disk) or the disk is slow, lines past the bound are dropped
// and counted, and once writing works again one line says how many went
// missing. Why not pino.destination (sonic-boom): on ENOSPC it emits an
// 'error' that, unhandled, ends the process, and its flushSync retries a
// failing write forever in Atomics.wait, which wedged a subsystem with a full
// log disk in its exit path (issue 18). Invariant: nothing here throws into
// the caller or blocks the loop beyond one bounded writeSync in flushSync().
import { closeSync, fstatSync, mkdirSync, openSync, write, writeSync } from "node:fs";
import path from "node:path";

/** Lines held in memory while the file is slow or failing; past it they are dropped (and counted). */
export const LOG_BUFFER_BYTES_MAX = 4 * 1024 * 1024;
/** After a failed write, the next attempt waits this long: a full disk is not retried in a loop. */
export const LOG_RETRY_MS = 1000;
/** On the way out, how long flushSync waits for a write in flight to land before it writes the rest itself. */
const EXIT_WAIT_MS = 100;
/** One write takes at most this much of the buffer. */
const LOG_WRITE_BYTES_MAX = 256 * 1024;

export interface LogFileStats {
  droppedLines: number;
  droppedBytes: number;
  /** The errno of the last failed write (ENOSPC, EIO), until a write succeeds. */
  lastError: string | null;
  bufferedBytes: number;
}

export class LogFile {
  private readonly fd: number;
  private queue: Buffer[] = [];
  private queued = 0;
  private writing = false;
  /** Bytes of the chunk the write in flight was given (the front of the queue). */
  private inflightBytes = 0;
  /** The file's size as this writer knows it: where the write in flight began. */
  private fileBytes: number;
  private retryTimer: NodeJS.Timeout | null = null;
  /** After flushSync or close: lines are no longer taken. */
  private closed = false;
  private fdClosed = false;
  /** Drops since the last report, and the first drop's time. */
  private unreported = 0;
  private unreportedSince = 0;
  droppedLines = 0;
  droppedBytes = 0;
  lastError: string | null = null;
  /**
   * Called once writing works again after lines were dropped, with how many
   * and since when: the subsystem logs it (through this same file).
   */
  onRecovered: (dropped: number, sinceMs: number, cause: string | null) => void = () => {};

  constructor(
    readonly file: string,
    private readonly bufferBytesMax = LOG_BUFFER_BYTES_MAX,
    private readonly retryMs = LOG_RETRY_MS,
  ) {
    mkdirSync(path.dirname(file), { recursive: true });
    this.fd = openSync(file, "a");
    this.fileBytes = fstatSync(this.fd).size;
  }

  /** pino calls this with one serialized line: queued, or dropped and counted; never blocks, never throws. */
  write(line: string): boolean {
    if (this.closed) return false;
    const buf = Buffer.from(line);
    if (this.queued + buf.length > this.bufferBytesMax) {
      if (this.unreported === 0) this.unreportedSince = Date.now();
      this.unreported++;
      this.droppedLines++;
      this.droppedBytes += buf.length;
      return false;
    }
    this.queue.push(buf);
    this.queued += buf.length;
    this.kick();
    return true;
  }

  private kick(): void {
    if (this.writing || this.retryTimer || this.queue.length === 0 || this.closed) return;
    // Whole lines up to LOG_WRITE_BYTES_MAX (at least one) in one write.
    let n = 0;
    let bytes = 0;
    while (n < this.queue.length && (n === 0 || bytes + this.queue[n].length <= LOG_WRITE_BYTES_MAX)) bytes += this.queue[n++].length;
    const chunk = n === 1 ? this.queue[0] : Buffer.concat(this.queue.slice(0, n), bytes);
    this.writing = true;
    this.inflightBytes = chunk.length;
    write(this.fd, chunk, 0, chunk.length, null, (err, written) => {
      this.writing = false;
      this.inflightBytes = 0;
      if (this.closed) return this.closeFd();
      if (err) {
        this.lastError = err.code ?? err.message;
        // The chunk stays queued: a line cut by a partial write is finished when the disk has room.
        this.retryTimer = setTimeout(() => {
          this.retryTimer = null;
          this.kick();
        }, this.retryMs);
        this.retryTimer.unref();
        return;
      }
      this.consume(written);
      this.fileBytes += written;
      const cause = this.lastError;
      this.lastError = null;
      if (this.unreported > 0) {
        const dropped = this.unreported;
        this.unreported = 0;
        this.onRecovered(dropped, this.unreportedSince, cause);
      }
      this.kick();
    });
  }

  /** Drops `n` written bytes from the front of the queue. */
  private consume(n: number): void {
    this.queued -= n;
    while (n > 0) {
      const head = this.queue[0];
      if (head.length <= n) {
        n -= head.length;
        this.queue.shift();
      } else {
        this.queue[0] = head.subarray(n);
        n = 0;
      }
    }
  }

  /**
   * On the way out (a fatal stop, a signal), just before process.exit: what
   * is queued is written on this thread, once; a failure is given up at
   * once, nothing is retried. A write still in flight in the thread pool may
   * not happen before the exit, so its chunk is written here too, less what
   * the file's size shows already landed (one writer appends to this file).
   */
  flushSync(): void {
    if (this.closed) return;
    // Whatever happens below, this writer is done: a late callback must not write the lines again.
    this.closed = true;
    if (this.retryTimer) clearTimeout(this.retryTimer);
    if (this.queue.length === 0) return;
    let landed = 0;
    if (this.writing) {
      // A bounded wait (EXIT_WAIT_MS) for the thread pool's write: written
      // here too, its lines would appear twice once it lands.
      const until = Date.now() + EXIT_WAIT_MS;
      const nap = new Int32Array(new SharedArrayBuffer(4));
      for (;;) {
        try {
          landed = Math.min(Math.max(fstatSync(this.fd).size - this.fileBytes, 0), this.inflightBytes);
        } catch {
          landed = 0;
        }
        if (landed === this.inflightBytes || Date.now() >= until) break;
        Atomics.wait(nap, 0, 0, 1);
      }
    }
    const rest = Buffer.concat(this.queue, this.queued).subarray(landed);
    this.queue = [];
    this.queued = 0;
    try {
      for (let off = 0; off < rest.length; ) off += writeSync(this.fd, rest, off);
    } catch {
      // The disk cannot take it: the lines are lost, the process still stops.
    }
  }

  private closeFd(): void {
    if (this.fdClosed) return;
    this.fdClosed = true;
    closeSync(this.fd);
  }

  /** Resolves once everything queued is written, or after `timeoutMs` (a full or failing disk): a clean stop waits here. */
  async drain(timeoutMs: number): Promise<void> {
    const until = Date.now() + timeoutMs;
    while ((this.writing || this.queue.length > 0) && !this.closed && Date.now() < until) await new Promise((r) => setTimeout(r, 5));
  }

  stats(): LogFileStats {
    return { droppedLines: this.droppedLines, droppedBytes: this.droppedBytes, lastError: this.lastError, bufferedBytes: this.queued };
  }

  close(): void {
    this.flushSync();
    // A write in flight still holds the fd: it is closed once that returns.
    if (!this.writing) this.closeFd();
  }
}

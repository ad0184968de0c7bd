// One link's journal entries committed and not yet handed to its sender, kept
// in memory so that in steady state the sender takes them from here rather
// than reading its own rows back out of SQLite. Pure: no I/O, no timers.
// Invariant: the queue holds every committed entry of the link with a seq
// above `after`, in seq order, and nothing else. A read that starts below
// `after` (a reconnect resending from the last ack, or entries dropped to keep
// the bounds) gets null and goes to SQLite, which holds every entry.

export interface FreshEntry {
  seq: number;
  data: Buffer | null;
}

export class FreshEntries<E extends FreshEntry> {
  private queue: E[] = [];
  private head = 0;
  private heldBytes = 0;

  constructor(
    /** Every entry of the link with a seq at or below this is in SQLite only. */
    private after: number,
    private readonly bytesMax: number,
    private readonly entriesMax: number,
  ) {}

  /** A committed entry, the link's newest; the oldest go (to SQLite only) past the bounds. */
  push(e: E): void {
    const last = this.queue.length > this.head ? this.queue[this.queue.length - 1].seq : this.after;
    if (e.seq <= last) {
      // Not the link's newest (the engine commits in seq order; a caller that
      // does not): the queue could not say what comes after what, SQLite can.
      this.reset(last);
      return;
    }
    this.queue.push(e);
    this.heldBytes += e.data?.length ?? 0;
    while (this.queue.length - this.head > this.entriesMax || (this.heldBytes > this.bytesMax && this.queue.length > this.head)) this.dropHead();
  }

  /**
   * The entries after `afterSeq`, oldest first, up to `limit` entries or until
   * `bytesMax` payload bytes (at least one entry), which leave the queue; null
   * when some of them are no longer here.
   */
  take(afterSeq: number, limit: number, bytesMax: number): E[] | null {
    if (afterSeq < this.after) return null;
    while (this.queue.length > this.head && this.queue[this.head].seq <= afterSeq) this.dropHead();
    this.after = afterSeq;
    const out: E[] = [];
    let bytes = 0;
    while (this.queue.length > this.head && out.length < limit && bytes < bytesMax) {
      const e = this.queue[this.head];
      out.push(e);
      bytes += e.data?.length ?? 0;
      this.dropHead();
    }
    return out;
  }

  /** A trim deleted the link's rows up to `seq`: they are not sent from here either. */
  trimmed(seq: number): void {
    while (this.queue.length > this.head && this.queue[this.head].seq <= seq) this.dropHead();
    if (seq > this.after) this.after = seq;
  }

  /** Rows went from SQLite by other ways than a trim: read from SQLite up to `highSeq`. */
  reset(highSeq: number): void {
    this.queue = [];
    this.head = 0;
    this.heldBytes = 0;
    this.after = highSeq;
  }

  get bytes(): number {
    return this.heldBytes;
  }

  get length(): number {
    return this.queue.length - this.head;
  }

  private dropHead(): void {
    const e = this.queue[this.head];
    this.queue[this.head] = undefined as unknown as E;
    this.head++;
    this.heldBytes -= e.data?.length ?? 0;
    this.after = e.seq;
    // Compacted now and then rather than shifted per entry (O(n) each).
    if (this.head >= 1024 && this.head * 2 >= this.queue.length) {
      this.queue = this.queue.slice(this.head);
      this.head = 0;
    }
  }
}

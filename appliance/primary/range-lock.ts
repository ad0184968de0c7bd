// Orders overlapping writes to one volume: a write holds its byte range from
// stamping until its volume write completes, so stamp order and the order of
// overlapping volume writes agree (the secondary applies in stamp order).
// The resync copier takes the same lock to read a block at a known stamp.

interface Held {
  start: number;
  end: number;
}

interface Waiter extends Held {
  grant: (release: () => void) => void;
}

export class RangeLock {
  private readonly held = new Set<Held>();
  private waiters: Waiter[] = [];

  /** Resolves with a release function once no held range overlaps [offset, offset+length). */
  acquire(offset: number, length: number): Promise<() => void> {
    const want = { start: offset, end: offset + length };
    // FIFO among overlapping waiters: a newer request never overtakes an older one.
    if (this.overlapsHeld(want) || this.waiters.some((w) => overlaps(w, want))) {
      return new Promise((grant) => this.waiters.push({ ...want, grant }));
    }
    return Promise.resolve(this.take(want));
  }

  get heldCount(): number {
    return this.held.size;
  }

  private take(r: Held): () => void {
    const h: Held = { start: r.start, end: r.end };
    this.held.add(h);
    let done = false;
    return () => {
      if (done) return;
      done = true;
      this.held.delete(h);
      this.wake();
    };
  }

  private overlapsHeld(r: Held): boolean {
    for (const h of this.held) if (overlaps(h, r)) return true;
    return false;
  }

  private wake(): void {
    const still: Waiter[] = [];
    for (const w of this.waiters) {
      // A waiter runs only if nothing held and no older waiter overlaps it.
      if (!this.overlapsHeld(w) && !still.some((s) => overlaps(s, w))) w.grant(this.take(w));
      else still.push(w);
    }
    this.waiters = still;
  }
}

function overlaps(a: Held, b: Held): boolean {
  return a.start < b.end && b.start < a.end;
}

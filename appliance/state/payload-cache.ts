// Payloads just appended to a segment, kept in memory for the one reader that
// takes each of them soon after (the primary's sender, the secondary's
// applier), so it need not read them back from the segment. Pure: a Map in
// insertion order under a byte bound. Invariants: `bytes` is the sum of the
// lengths held, and once `add` returns it is at most `bytesMax`, the oldest
// payloads having gone first. A payload not held is read from its segment.

export class PayloadCache<K> {
  private readonly held = new Map<K, Buffer>();
  private heldBytes = 0;

  constructor(readonly bytesMax: number) {}

  /**
   * Keeps `data` under `key` as the newest payload, then drops the oldest
   * until the bound holds: all of them, `data` too, if it alone is larger.
   * A key added again counts once and becomes the newest (neither caller
   * does that: seqs and row ids are added once until taken or cleared).
   */
  add(key: K, data: Buffer): void {
    const old = this.held.get(key);
    if (old !== undefined) {
      this.held.delete(key);
      this.heldBytes -= old.length;
    }
    this.held.set(key, data);
    this.heldBytes += data.length;
    for (const [k, d] of this.held) {
      if (this.heldBytes <= this.bytesMax) break;
      this.held.delete(k);
      this.heldBytes -= d.length;
    }
  }

  /** The payload under `key`, which leaves the cache: each is read once. */
  take(key: K): Buffer | undefined {
    const data = this.held.get(key);
    if (data === undefined) return undefined;
    this.held.delete(key);
    this.heldBytes -= data.length;
    return data;
  }

  /** Forgets every payload (their keys may be issued again for other data). */
  clear(): void {
    this.held.clear();
    this.heldBytes = 0;
  }

  /** Payload bytes held now. */
  get bytes(): number {
    return this.heldBytes;
  }
}

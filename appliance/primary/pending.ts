// RCRs stamped but not yet acknowledged by their secondary, per group and
// link, in stamp order. The SYNC time of a group is one below its oldest
// pending stamp, so it never promises an RCR that is still in flight. Pure.

interface Entry {
  seq: number;
  ts: bigint;
}

class Fifo {
  items: Entry[] = [];
  head = 0;
  get size(): number {
    return this.items.length - this.head;
  }
  first(): Entry | undefined {
    return this.items[this.head];
  }
  push(e: Entry): void {
    this.items.push(e);
  }
  shift(): void {
    this.head++;
    // Compact once the dead prefix dominates, so memory tracks what is pending.
    if (this.head > 1024 && this.head * 2 > this.items.length) {
      this.items = this.items.slice(this.head);
      this.head = 0;
    }
  }
}

export class PendingRcrs {
  private readonly byGroup = new Map<string, Map<number, Fifo>>();
  private count = 0;

  add(group: string, link: number, seq: number, ts: bigint): void {
    let links = this.byGroup.get(group);
    if (!links) this.byGroup.set(group, (links = new Map()));
    let fifo = links.get(link);
    if (!fifo) links.set(link, (fifo = new Fifo()));
    const last = fifo.items[fifo.items.length - 1];
    // Checked against the last entry ever queued here, popped or not.
    if (last && (last.seq >= seq || last.ts >= ts)) {
      throw new Error(`pending RCRs out of order on link ${link}: seq ${seq} after ${last.seq}`);
    }
    fifo.push({ seq, ts });
    this.count++;
  }

  /** Cumulative ack from a link's secondary: every seq <= `seq` is queued there. */
  ackUpTo(link: number, seq: number): number {
    let popped = 0;
    for (const links of this.byGroup.values()) {
      const fifo = links.get(link);
      if (!fifo) continue;
      for (let e = fifo.first(); e && e.seq <= seq; e = fifo.first()) {
        fifo.shift();
        popped++;
      }
    }
    this.count -= popped;
    return popped;
  }

  /** A write that failed before it was journaled: it will never be sent. */
  cancel(group: string, link: number, seq: number): void {
    const fifo = this.byGroup.get(group)?.get(link);
    if (!fifo) return;
    const i = fifo.items.findIndex((e, idx) => idx >= fifo.head && e.seq === seq);
    if (i >= 0) {
      fifo.items.splice(i, 1);
      this.count--;
    }
  }

  /** The lowest seq still awaited on a link, over every group, or null when none is. */
  lowestOn(link: number): number | null {
    let min: number | null = null;
    for (const links of this.byGroup.values()) {
      const e = links.get(link)?.first();
      if (e && (min === null || e.seq < min)) min = e.seq;
    }
    return min;
  }

  /** A suspended group: its RCRs are no longer awaited (they went to the bitmap). */
  dropGroup(group: string): void {
    this.count -= this.sizeOf(group);
    this.byGroup.delete(group);
  }

  /** The oldest pending stamp of a group, or null when nothing is pending. */
  oldest(group: string): bigint | null {
    const links = this.byGroup.get(group);
    if (!links) return null;
    let min: bigint | null = null;
    for (const fifo of links.values()) {
      const e = fifo.first();
      if (e && (min === null || e.ts < min)) min = e.ts;
    }
    return min;
  }

  get size(): number {
    return this.count;
  }

  sizeOf(group: string): number {
    let n = 0;
    for (const fifo of this.byGroup.get(group)?.values() ?? []) n += fifo.size;
    return n;
  }
}

/**
 * DESIGN.md step 3: T = the greatest time such that every RCR of this primary
 * with ts <= T is acknowledged. With nothing pending it is a fresh stamp, so
 * every later stamp is greater than T.
 */
export function syncTime(oldestPending: bigint | null, freshStamp: () => bigint): bigint {
  return oldestPending === null ? freshStamp() : oldestPending - 1n;
}

// The NBD server's bound on bytes held for clients across all its connections:
// write payloads being received or applied and read replies not yet taken by
// the kernel. A connection takes its request's charge before it reads the
// payload or calls the export, and gives it back once the reply has drained,
// so a process serves at most bytesMax of request data whatever its clients
// do. Each charge has an owner (the peer's address) with its own cap, so one
// hostile host with many connections cannot take the whole budget from the
// others. Grants are first come, first served among owners under their cap:
// a 32 MiB request is not starved by a stream of small ones, and an owner at
// its cap does not hold up those queued behind it. No I/O, no timers.
import { assert } from "../invariant.ts";

interface Waiter {
  bytes: number;
  owner: string;
  resolve: () => void;
  reject: (err: Error) => void;
  /** Removes the waiter's abort listener once granted (one per wait would pile up on a long connection). */
  forget?: () => void;
}

export class BufferBudget {
  private used = 0;
  private readonly waiters: Waiter[] = [];
  private readonly byOwner = new Map<string, number>();

  constructor(
    readonly bytesMax: number,
    readonly ownerBytesMax: number = bytesMax,
  ) {
    assert(Number.isInteger(bytesMax) && bytesMax > 0, `nbd buffer budget: bytesMax ${bytesMax} is not a positive integer`);
    assert(Number.isInteger(ownerBytesMax) && ownerBytesMax > 0 && ownerBytesMax <= bytesMax, `nbd buffer budget: ownerBytesMax ${ownerBytesMax} outside 1..${bytesMax}`);
  }

  usedBytes(owner?: string): number {
    return owner === undefined ? this.used : (this.byOwner.get(owner) ?? 0);
  }

  waiting(): number {
    return this.waiters.length;
  }

  /**
   * Resolves once `bytes` are granted; rejects with signal.reason if the
   * signal aborts first (the connection closed while it waited). onWait runs,
   * synchronously, only when the charge must wait: the caller logs the bite.
   */
  take(bytes: number, owner: string, signal: AbortSignal, onWait?: (why: string) => void): Promise<void> {
    assert(bytes > 0 && bytes <= this.ownerBytesMax, `nbd buffer budget: charge ${bytes} outside 1..${this.ownerBytesMax}`);
    if (signal.aborted) return Promise.reject(signal.reason as Error);
    return new Promise<void>((resolve, reject) => {
      const w: Waiter = { bytes, owner, resolve, reject };
      this.waiters.push(w);
      this.grant();
      if (!this.waiters.includes(w)) return; // granted at once
      const mine = this.byOwner.get(owner) ?? 0;
      onWait?.(
        mine + bytes > this.ownerBytesMax
          ? `peer ${owner} holds ${mine} bytes (nbdLimits.bufferBytesPerPeerMax ${this.ownerBytesMax})`
          : `the server holds ${this.used} bytes (nbdLimits.bufferBytesMax ${this.bytesMax})`,
      );
      const onAbort = () => {
        const i = this.waiters.indexOf(w);
        if (i < 0) return; // already granted: the owner releases it
        this.waiters.splice(i, 1);
        reject(signal.reason as Error);
        this.grant(); // a large waiter leaving may unblock smaller ones behind it
      };
      signal.addEventListener("abort", onAbort, { once: true });
      w.forget = () => signal.removeEventListener("abort", onAbort);
    });
  }

  /**
   * Grants `bytes` at once if nobody waits and both caps have room (no
   * promise, no abort listener: the common case of every request); false
   * leaves everything as it was, and the caller waits with `take`.
   */
  tryTake(bytes: number, owner: string): boolean {
    assert(bytes > 0 && bytes <= this.ownerBytesMax, `nbd buffer budget: charge ${bytes} outside 1..${this.ownerBytesMax}`);
    if (this.waiters.length > 0 || this.used + bytes > this.bytesMax) return false;
    const mine = this.byOwner.get(owner) ?? 0;
    if (mine + bytes > this.ownerBytesMax) return false;
    this.book(bytes, owner, mine);
    return true;
  }

  /** Counts a grant: the server's total and the owner's share. */
  private book(bytes: number, owner: string, mine: number): void {
    this.used += bytes;
    this.byOwner.set(owner, mine + bytes);
  }

  release(bytes: number, owner: string): void {
    this.used -= bytes;
    const left = (this.byOwner.get(owner) ?? 0) - bytes;
    assert(this.used >= 0 && left >= 0, "nbd buffer budget: released more than was taken");
    if (left === 0) this.byOwner.delete(owner);
    else this.byOwner.set(owner, left);
    this.grant();
  }

  private grant(): void {
    for (let i = 0; i < this.waiters.length; ) {
      const w = this.waiters[i];
      const mine = this.byOwner.get(w.owner) ?? 0;
      if (mine + w.bytes > this.ownerBytesMax) {
        i++; // this owner waits for its own bytes to come back; others may pass
        continue;
      }
      if (this.used + w.bytes > this.bytesMax) return; // first come, first served
      this.waiters.splice(i, 1);
      this.book(w.bytes, w.owner, mine);
      w.forget?.();
      w.resolve();
    }
  }
}

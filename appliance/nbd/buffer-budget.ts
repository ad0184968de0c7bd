// The NBD server's bound on bytes held for clients across all its connections:
// write payloads being received or applied and read replies not yet taken by
// the kernel. A connection takes its request's charge before it reads the
// payload or calls the export, and gives it back once the reply has drained,
// so a process serves at most bytesMax of request data whatever its clients
// do. Grants are first come, first served: a 32 MiB request is not starved by
// a stream of small ones. No I/O, no timers.
import { assert } from "../invariant.ts";

interface Waiter {
  bytes: number;
  resolve: () => void;
  reject: (err: Error) => void;
}

export class BufferBudget {
  private used = 0;
  private readonly waiters: Waiter[] = [];

  constructor(readonly bytesMax: number) {
    assert(Number.isInteger(bytesMax) && bytesMax > 0, `nbd buffer budget: bytesMax ${bytesMax} is not a positive integer`);
  }

  usedBytes(): number {
    return this.used;
  }

  waiting(): number {
    return this.waiters.length;
  }

  /**
   * Resolves once `bytes` are granted; rejects with signal.reason if the
   * signal aborts first (the connection closed while it waited).
   */
  take(bytes: number, signal: AbortSignal): Promise<void> {
    assert(bytes > 0 && bytes <= this.bytesMax, `nbd buffer budget: charge ${bytes} outside 1..${this.bytesMax}`);
    if (signal.aborted) return Promise.reject(signal.reason as Error);
    if (this.waiters.length === 0 && this.used + bytes <= this.bytesMax) {
      this.used += bytes;
      return Promise.resolve();
    }
    return new Promise<void>((resolve, reject) => {
      const w: Waiter = { bytes, resolve, reject };
      this.waiters.push(w);
      signal.addEventListener(
        "abort",
        () => {
          const i = this.waiters.indexOf(w);
          if (i < 0) return; // already granted: the owner releases it
          this.waiters.splice(i, 1);
          reject(signal.reason as Error);
          this.grant(); // a large waiter leaving may unblock smaller ones behind it
        },
        { once: true },
      );
    });
  }

  release(bytes: number): void {
    this.used -= bytes;
    assert(this.used >= 0, "nbd buffer budget: released more than was taken");
    this.grant();
  }

  private grant(): void {
    while (this.waiters.length > 0 && this.used + this.waiters[0].bytes <= this.bytesMax) {
      const w = this.waiters.shift() as Waiter;
      this.used += w.bytes;
      w.resolve();
    }
  }
}

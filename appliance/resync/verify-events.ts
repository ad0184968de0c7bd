// The online verify's events (docs/verify.md, "Events"): what an event stream,
// a metrics exporter or a test may subscribe to. The primary's verifier emits
// start, progress and end per volume; the secondary's check emits one
// mismatch per block. Listeners are called synchronously and must not throw
// (one that does is dropped from the call, never from the engine).

export type VerifyEvent =
  | { kind: "start"; subsystem: number; group: string; volume: string; runTs: string; startOffset: number; endOffset: number; resumed: boolean }
  | { kind: "progress"; subsystem: number; group: string; volume: string; runTs: string; nextOffset: number; endOffset: number; bytesPerSecond: number }
  | { kind: "end"; subsystem: number; group: string; volume: string; runTs: string; lastTs: string; blocks: number; ms: number; outcome: "done" | "paused" }
  | { kind: "mismatch"; subsystem: number; group: string; volume: string; runTs: string; offset: number; ts: string; primaryHash: string; secondaryHash: string };

export type VerifyListener = (e: VerifyEvent) => void;

export class VerifyEvents {
  private readonly listeners = new Set<VerifyListener>();

  /** Subscribes; returns the unsubscribe function. */
  on(fn: VerifyListener): () => void {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }

  emit(e: VerifyEvent): void {
    for (const fn of this.listeners) {
      try {
        fn(e);
      } catch {
        // A listener's fault is its own: the verify goes on.
      }
    }
  }
}

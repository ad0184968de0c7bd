// Negative controls: rules of the product broken on purpose, each restoring
// a bug that was found and fixed. Only the seeded simulation sets them
// (docs/simulation.md, Negative controls), to show that it would catch the
// bug again; the subsystem process never does, and no config reaches them.
export interface NegativeControls {
  /** Issue 11, bug 1: the copier decides a run is a hole before it holds the range lock, and replays copies onto the primary volume. */
  copyHoleOutsideLock?: boolean;
  /** Issue 11, bug 2: a secondary's attach acknowledges what it has committed but not yet made durable. */
  ackBeforeDurable?: boolean;
}

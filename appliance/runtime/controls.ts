// Negative controls: rules of the product broken on purpose, each restoring
// a bug that was found and fixed. Only the seeded simulation sets them
// (docs/simulation.md, Negative controls), to show that it would catch the
// bug again; the subsystem process never does, and no config reaches them.
export interface NegativeControls {
  /** Issue 11, bug 1: the copier decides a run is a hole before it holds the range lock. */
  copyHoleOutsideLock?: boolean;
  /** Issue 11, bug 2: a secondary's attach acknowledges what it has committed but not yet made durable, and a primary ignores an ack lower than one it had. */
  ackBeforeDurable?: boolean;
  /** DESIGN.md step 3: a SYNC carries the clock's reading, not the time up to which every RCR is acknowledged. */
  bareClockSync?: boolean;
  /** DESIGN.md, after-failure step 1: a fenced secondary still takes frames of older generations. */
  noFence?: boolean;
  /** DESIGN.md, crash rules: after a power cut the hot activity-log regions are not put in the bitmap. */
  noActivityLog?: boolean;
  /** docs/simulation.md Finding 6: COPIED waits for the primary's last seq on every link. */
  copiedWaitsForLastSeq?: boolean;
  /** docs/simulation.md Finding 5: a secondary's restart lifts 112 to min 111. */
  restartLifts112?: boolean;
  /** Issue 17, race 1: a turn stops and rebuilds both engines of the subsystem, every other group's included, and replays the whole journal. */
  turnRebuildsSubsystem?: boolean;
  /** Issue 17, race 2: a refusal fences a frozen or copying group too, which opens a frozen primary's volumes to hosts again. */
  refusalFencesFrozen?: boolean;
  /** Issue 17, race 3: a copier outlives its resync's generation, and the next resync's copier is not started while it runs. */
  copierOutlivesGeneration?: boolean;
  /** docs/simulation.md Finding 13: a restarted secondary acknowledges the queue it loaded once the WAL is synced, its queue segments not. */
  restartAcksUnsyncedSegments?: boolean;
  /** docs/simulation.md Finding 17: an unreplicated host write goes ahead while a suspension is still removing the group's journal entries. */
  unreplicatedDuringSuspension?: boolean;
  /** docs/simulation.md Finding 18: a journal trim or a queue apply deletes the segments it freed before its commit is durable. */
  segmentsGoBeforeDurable?: boolean;
  /** docs/simulation.md Finding 19: a swap turns a group one of whose frozen primaries a suspension made writable again. */
  swapTurnsThawedPrimaries?: boolean;
  /** docs/simulation.md Finding 21: a primary a suspension thawed hides the stamp of the swap's freeze, so a swap's rerun takes the takeover for someone else's. */
  thawedFreezeHidden?: boolean;
  /** docs/simulation.md Finding 22: a restart's replay resends copies but does not write them back, so a copy of a host write a power cut took back reaches only the secondary. */
  copiesNotReplayed?: boolean;
  /** docs/simulation.md Finding 24: a suspension of a group some secondary of which is taken over suspends its primaries, and so makes a frozen one writable again beside the taken-over side. */
  suspensionThawsTakenOverGroup?: boolean;
  /** docs/simulation.md Finding 25: a swap checks that its takeover's Ts covers the freeze only after the takeover has opened the secondaries to hosts. */
  swapOpensBeforeCutCheck?: boolean;
  /** docs/simulation.md Finding 27: a swap of a paired group goes ahead although its sides differ (blocks in a bitmap, still to copy, never copied). */
  swapIgnoresDiffering?: boolean;
  /** docs/simulation.md Finding 29: a restarted secondary's first commits acknowledge before start()'s sync of the queue it loaded is done, though an ack covers those rows too. */
  commitAcksBeforeLoadedDurable?: boolean;
  /** docs/simulation.md Finding 30: a primary's status shows a suspension (a takeover) whose record failed as done, so a swap's turn, refused by its state file, leaves the group mixed for good. */
  unrecordedShownRecorded?: boolean;
}

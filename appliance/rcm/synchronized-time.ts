// The seed's step 602: the synchronized time of a consistency group from the
// first time parameters (111) collected from every secondary. Pure.
//   Ts = min over primaries k ( max over secondaries s ( 111_s[k] ) )
// Every RCR with ts <= Ts is queued on its secondary (primary k announced
// 111_s[k] to some secondary only once all its RCRs up to it were acked).
export function synchronizedTime(firstBySecondary: ReadonlyMap<number, ReadonlyMap<number, bigint>>): bigint {
  const best = new Map<number, bigint>();
  for (const first of firstBySecondary.values()) {
    for (const [k, t] of first) {
      const b = best.get(k);
      if (b === undefined || t > b) best.set(k, t);
    }
  }
  if (best.size === 0) throw new Error("synchronized time: no time parameters collected");
  let ts: bigint | null = null;
  for (const t of best.values()) if (ts === null || t < ts) ts = t;
  return ts!;
}

/** What a fenced secondary reports of a resync in progress (DESIGN.md, Resync). */
export interface ResyncReport {
  /** T_old while the secondary holds 112 for a resync, else null. */
  floor: bigint | null;
  /** C, once every primary's COPIED has reached this secondary. */
  barrier: bigint | null;
}

/**
 * The time a suspension or takeover brings the group to when a resync may be
 * running: Ts when the resync's barrier is passed (C <= Ts), else T_old.
 * Ts >= C holds as soon as one secondary lifted its hold (it saw min 111 >= C,
 * and Ts >= that min); C known on one secondary means every copy is queued on
 * every secondary. Otherwise T_old: every secondary still holds that image,
 * and everything queued above it (copies, new writes) is dropped into the
 * bitmaps for the next resync.
 */
export function resyncCut(ts: bigint, reports: readonly ResyncReport[]): bigint {
  const holding = reports.filter((r) => r.floor !== null);
  if (holding.length === 0 || holding.length < reports.length) return ts;
  const floors = new Set(holding.map((r) => r.floor!));
  if (floors.size !== 1) throw new Error(`resync cut: secondaries hold different floors (${[...floors].join(", ")})`);
  const floor = holding[0].floor!;
  let barrier: bigint | null = null;
  for (const r of holding) if (r.barrier !== null && (barrier === null || r.barrier > barrier)) barrier = r.barrier;
  return barrier !== null && ts >= barrier ? ts : floor;
}

/** What a fenced secondary reports for the cut: the synchronized time it already rests at, and its resync. */
export interface FencedReport {
  synchronizedTs: bigint | null;
  resync: ResyncReport;
}

export class CutConflict extends Error {
  constructor(readonly times: bigint[]) {
    super(`secondaries rest at different synchronized times (${times.join(", ")})`);
    this.name = "CutConflict";
  }
}

/**
 * The time a suspension or takeover brings the group to, from Ts computed
 * over 111 (step 602) and every fenced secondary's report. A secondary that
 * already rests at a synchronized time (an earlier run, cut short after it
 * applied) fixes the cut, so a rerun never mixes two; otherwise resyncCut.
 * Two different resting times cannot be reconciled: CutConflict.
 */
export function procedureCut(ts: bigint, reports: readonly FencedReport[]): bigint {
  const resting = [...new Set(reports.map((r) => r.synchronizedTs).filter((t): t is bigint => t !== null))];
  if (resting.length > 1) throw new CutConflict(resting);
  return resting.length === 1 ? resting[0] : resyncCut(ts, reports.map((r) => r.resync));
}

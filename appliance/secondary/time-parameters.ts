// The seed's time parameters for one consistency group on one secondary
// subsystem: 111 (first time parameter, per primary: the greatest T that
// primary announced) and 112 (second time parameter: min of the 111s).
// Pure: state in, state and the range of RCRs to release out. Invariant: 112
// never decreases, and an RCR is released to the disk request queue only once
// its ts <= 112.
import { assert } from "../invariant.ts";

export interface GroupTimes {
  /** 111, by primary subsystem id; one entry for every primary of the group. */
  readonly first: ReadonlyMap<number, bigint>;
  /** 112 = min over the group's primaries of 111. */
  readonly second: bigint;
}

export interface Release {
  /** RCRs with from < ts <= to move from the RCR queue to the disk request queue. */
  readonly from: bigint;
  readonly to: bigint;
}

export type SyncOutcome =
  | { kind: "raised"; times: GroupTimes; release: Release | null }
  | { kind: "stale"; times: GroupTimes }
  | { kind: "unknown-primary"; times: GroupTimes };

export function minFirst(first: ReadonlyMap<number, bigint>): bigint {
  let min: bigint | null = null;
  for (const t of first.values()) if (min === null || t < min) min = t;
  assert(min !== null, "a consistency group has at least one primary");
  return min;
}

/** A group's starting times: every primary at `start` (0 for a new group). */
export function initialTimes(primaries: readonly number[], start = 0n): GroupTimes {
  assert(primaries.length > 0, "a consistency group has at least one primary");
  const first = new Map<number, bigint>();
  for (const p of primaries) first.set(p, start);
  return { first, second: start };
}

/**
 * A primary joins (or the config adds one): its 111 starts at the current
 * 112, never at zero, so 112 does not fall back and release nothing twice.
 */
export function withPrimaries(times: GroupTimes, primaries: readonly number[]): GroupTimes {
  const first = new Map<number, bigint>();
  for (const p of primaries) first.set(p, times.first.get(p) ?? times.second);
  const second = minFirst(first);
  return { first, second: second < times.second ? times.second : second };
}

/** Step 4 of the normal procedure: SYNC(group, primary, t) arrives. */
export function onSync(times: GroupTimes, primaryId: number, t: bigint): SyncOutcome {
  const old = times.first.get(primaryId);
  if (old === undefined) return { kind: "unknown-primary", times };
  if (t <= old) return { kind: "stale", times };
  const first = new Map(times.first);
  first.set(primaryId, t);
  const second = minFirst(first);
  assert(second >= times.second, "112 never decreases");
  const next: GroupTimes = { first, second };
  const release = second > times.second ? { from: times.second, to: second } : null;
  return { kind: "raised", times: next, release };
}

/** Whether an RCR of this timestamp may be applied now (the applier's guard). */
export function mayApply(times: GroupTimes, ts: bigint): boolean {
  return ts <= times.second;
}

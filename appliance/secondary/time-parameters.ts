// The seed's time parameters for one consistency group on one secondary
// subsystem: 111 (first time parameter, per primary: the greatest T that
// primary announced) and 112 (second time parameter: min of the 111s).
// Pure: state in, state and the range of RCRs to release out. Invariant: 112
// never decreases, and an RCR is released to the disk request queue only once
// its ts <= 112.
//
// During a resync (DESIGN.md, Resync) 112 is held at the group's last
// synchronized time T_old (the hold's floor) until the barrier C is known
// (every primary has reported its copy complete, C = the greatest of their
// completion stamps) and min over primaries of 111 has reached C. Without the
// hold, 112 could rest between T_old and another primary's copy stamp: a
// block still old while a write that depends on it is applied.
import { assert } from "../invariant.ts";

export interface ResyncHold {
  /** T_old: the volumes keep this image until the barrier is passed. */
  readonly floor: bigint;
  /** Per primary: the stamp at which all its copies were acknowledged (COPIED frames). */
  readonly copied: ReadonlyMap<number, bigint>;
}

export interface GroupTimes {
  /** 111, by primary subsystem id; one entry for every primary of the group. */
  readonly first: ReadonlyMap<number, bigint>;
  /** 112 = min over the group's primaries of 111 (the hold's floor while one is set). */
  readonly second: bigint;
  /** Set while a resync of the group runs. */
  readonly hold?: ResyncHold | null;
}

export interface Release {
  /** RCRs with from < ts <= to move from the RCR queue to the disk request queue. */
  readonly from: bigint;
  readonly to: bigint;
}

export type SyncOutcome =
  | { kind: "raised"; times: GroupTimes; release: Release | null; lifted: boolean }
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
  return { first, second: start, hold: null };
}

/** C: the greatest completion stamp, once every primary of the group has reported one. */
export function barrierOf(first: ReadonlyMap<number, bigint>, hold: ResyncHold): bigint | null {
  let c: bigint | null = null;
  for (const p of first.keys()) {
    const t = hold.copied.get(p);
    if (t === undefined) return null;
    if (c === null || t > c) c = t;
  }
  return c;
}

/** 112 from 111 and the hold; `lifted` when a hold was set and the barrier is passed. */
function second(first: ReadonlyMap<number, bigint>, hold: ResyncHold | null | undefined): { second: bigint; hold: ResyncHold | null; lifted: boolean } {
  const m = minFirst(first);
  if (!hold) return { second: m, hold: null, lifted: false };
  const c = barrierOf(first, hold);
  if (c !== null && m >= c) return { second: m, hold: null, lifted: true };
  return { second: hold.floor, hold, lifted: false };
}

/**
 * A primary joins (or the config adds one): its 111 starts at the current
 * 112, never at zero, so 112 does not fall back and release nothing twice.
 */
export function withPrimaries(times: GroupTimes, primaries: readonly number[]): GroupTimes {
  const first = new Map<number, bigint>();
  for (const p of primaries) first.set(p, times.first.get(p) ?? times.second);
  return { first, second: times.second, hold: times.hold ?? null };
}

/** Step 4 of the normal procedure: SYNC(group, primary, t) arrives. */
export function onSync(times: GroupTimes, primaryId: number, t: bigint): SyncOutcome {
  const old = times.first.get(primaryId);
  if (old === undefined) return { kind: "unknown-primary", times };
  if (t <= old) return { kind: "stale", times };
  const first = new Map(times.first);
  first.set(primaryId, t);
  return raise(times, first, times.hold);
}

function raise(times: GroupTimes, first: ReadonlyMap<number, bigint>, hold: ResyncHold | null | undefined): SyncOutcome {
  const s = second(first, hold);
  assert(s.second >= times.second, "112 never decreases");
  const next: GroupTimes = { first, second: s.second, hold: s.hold };
  const release = s.second > times.second ? { from: times.second, to: s.second } : null;
  return { kind: "raised", times: next, release, lifted: s.lifted };
}

/**
 * A resync starts: 112 rests at `floor` (T_old, the group's synchronized
 * time) until the barrier is passed. 111 is kept: a primary's later stamps
 * exceed everything it announced before.
 */
export function startHold(times: GroupTimes, floor: bigint): GroupTimes {
  assert(floor >= times.second, `a resync's floor ${floor} is not below 112 ${times.second}`);
  return { first: times.first, second: floor, hold: { floor, copied: new Map() } };
}

/** COPIED(primary, c): every copy of that primary is acknowledged, all stamped <= c. */
export function onCopied(times: GroupTimes, primaryId: number, c: bigint): SyncOutcome {
  if (!times.first.has(primaryId)) return { kind: "unknown-primary", times };
  const hold = times.hold;
  if (!hold || hold.copied.get(primaryId) === c) return { kind: "stale", times };
  const copied = new Map(hold.copied);
  copied.set(primaryId, c);
  return raise(times, times.first, { floor: hold.floor, copied });
}

/** Whether an RCR of this timestamp may be applied now (the applier's guard). */
export function mayApply(times: GroupTimes, ts: bigint): boolean {
  return ts <= times.second;
}

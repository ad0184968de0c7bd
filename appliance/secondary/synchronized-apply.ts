// Steps 605-606 on one secondary, as pure arithmetic: given the RCRs still
// queued and the synchronized time Ts, which are applied (ts <= Ts, in
// (ts, primary id, seq) order) and which become bitmap blocks and are
// dropped (ts > Ts; Figs. 7C-7E).
import { blockSpan } from "../resync/blocks.ts";

export interface QueuedRcr {
  ts: bigint;
  primaryId: number;
  seq: number;
  volume: string;
  offset: number;
  length: number;
}

export interface SynchronizedApply<T extends QueuedRcr> {
  apply: T[];
  drop: T[];
  /** Per volume, the 4 KiB blocks the dropped RCRs touch. */
  bitmap: Map<string, Set<number>>;
}

export function rcrOrder(a: QueuedRcr, b: QueuedRcr): number {
  if (a.ts !== b.ts) return a.ts < b.ts ? -1 : 1;
  if (a.primaryId !== b.primaryId) return a.primaryId - b.primaryId;
  return a.seq - b.seq;
}

export function splitAtSynchronizedTime<T extends QueuedRcr>(queued: readonly T[], ts: bigint): SynchronizedApply<T> {
  const apply: T[] = [];
  const drop: T[] = [];
  const bitmap = new Map<string, Set<number>>();
  for (const r of queued) {
    if (r.ts <= ts) {
      apply.push(r);
      continue;
    }
    drop.push(r);
    let set = bitmap.get(r.volume);
    if (!set) bitmap.set(r.volume, (set = new Set()));
    const { first, last } = blockSpan(r.offset, r.length);
    for (let b = first; b <= last; b++) set.add(b);
  }
  apply.sort(rcrOrder);
  return { apply, drop, bitmap };
}

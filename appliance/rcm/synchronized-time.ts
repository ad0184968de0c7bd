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

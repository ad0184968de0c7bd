// Primaries that come back after a takeover that could not reach them
// (docs/takeover.md, "A primary back after the takeover"). The takeover meant
// every primary of the group; one that was down comes back in the state it
// died in (active, copying, frozen or suspended, at an older or the same
// generation) and is refused by the secondaries, which fences it. Every way
// back (`resync`, `resync --reverse`, `swap`) first does for it what the
// takeover would have done: `primary-takeover` at the takeover's generation.
// Invariant: a primary is taken over only when every secondary of the group is
// taken over at one generation G; a procedure never fences a primary on its own.
// Pure: the RCM (resync.ts) and `tidemark status` read the same rule.

/** One subsystem's group, as its status reports it. */
export interface GroupSide {
  state: string;
  generation: number;
  /** A primary's state is not yet in its state file (PrimaryEngine: a suspension being recorded, or one that failed). */
  unrecorded?: boolean;
}

export interface Returning {
  /** The primaries the takeover did not reach, by id, with the state they came back in. */
  primaries: { subsystem: number; state: string; generation: number; unrecorded?: true }[];
  /** The takeover's generation: every secondary is taken over at it. */
  generation: number;
}

const NONE: Returning = { primaries: [], generation: 0 };

/**
 * Pure. Returning primaries: every secondary is `takeover` at one generation G,
 * and these primaries are in any state but `taken-over` at G or below. A
 * primary at G in another state is one the group's suspension reached and its
 * takeover did not (the takeover reuses the suspension's generation). One
 * `taken-over` whose record is not durable counts as not reached: its state
 * file, which a restart and a turn read, still says what it was before.
 */
export function returningPrimaries(secondaries: readonly GroupSide[], primaries: ReadonlyMap<number, GroupSide>): Returning {
  if (secondaries.length === 0 || !secondaries.every((s) => s.state === "takeover")) return NONE;
  const gens = new Set(secondaries.map((s) => s.generation));
  if (gens.size !== 1) return NONE;
  const generation = secondaries[0].generation;
  const back = [...primaries]
    .filter(([, p]) => (p.state !== "taken-over" || p.unrecorded === true) && p.generation <= generation)
    .map(([subsystem, p]) => ({ subsystem, state: p.state, generation: p.generation, ...(p.unrecorded === true ? { unrecorded: true as const } : {}) }))
    .sort((a, b) => a.subsystem - b.subsystem);
  return back.length === 0 ? NONE : { primaries: back, generation };
}

/** One line for an admin: what happened to the returning primaries. */
export function describeReturning(group: string, r: Returning): string[] {
  return r.primaries.map((p) =>
    p.unrecorded
      ? `primary #${p.subsystem}: its takeover of ${group} at generation ${r.generation} was not recorded (its state file was not written): taken over again now`
      : `primary #${p.subsystem} was unreachable when ${group} was taken over at generation ${r.generation} and came back ${p.state} at generation ${p.generation}: ` +
        `taken over now (read-only for hosts; its unacknowledged writes are in its bitmap)`,
  );
}

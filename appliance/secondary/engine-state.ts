// What the secondary engine (secondary.ts) owns and lends to its parts (the
// receiver, the applier and the procedure steps): the volume bindings, each
// group's record, and the one function through which a group's state changes.
// Invariant: a group's state moves only as the table in group-state.ts says.
import type { Volume } from "../../disks/volume.ts";
import type { GroupTimes } from "./time-parameters.ts";
import { secondaryGroupTransition, type SecondaryGroupEvent, type SecondaryGroupState } from "./group-state.ts";

export interface SecondaryBinding {
  volume: Volume;
  group: string;
  /** The primary subsystem that feeds this volume. */
  primaryId: number;
}

/** One group this subsystem is a secondary of, as the engine holds it in memory (the grp row and its times). */
export interface GroupState {
  name: string;
  times: GroupTimes;
  generation: number;
  state: SecondaryGroupState;
  reason: string | null;
  applied: number;
  appliedBytes: number;
  /** Greatest ts applied so far, for the status invariant check. */
  lastAppliedTs: bigint;
  /** Ts of the after-failure procedure, once applied (steps 604-606). */
  synchronizedTs: bigint | null;
  suspendedBy: string | null;
  dropped: number;
  droppedBytes: number;
}

/**
 * Every change of a group's state goes through here: the next state is the
 * table's (group-state.ts), a refusal throws its code with the message
 * `refusal` gives. Null when the table ignores the event in this state.
 */
export function transition(g: GroupState, event: SecondaryGroupEvent, refusal?: (code: string) => string): SecondaryGroupState | null {
  const next = secondaryGroupTransition(g.state, event, refusal);
  if (next !== null) g.state = next;
  return next;
}

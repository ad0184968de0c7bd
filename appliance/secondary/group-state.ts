// The group state machine of a secondary, as data: SECONDARY_GROUP_TRANSITIONS
// gives for every state and every event what the event does, and
// docs/state-machines.md (Group on a secondary) prints the same table. Pure.
// Invariant: SecondaryEngine changes a group's state only through
// secondaryGroupTransition, and the strings here are those of `grp.state`.
import { ignored, never, nextState, outcome, refused, to, type Outcome, type TransitionTable } from "../transition-table.ts";

/** Group states on a secondary, as `grp.state` stores them. */
export const SECONDARY_GROUP_STATES = ["active", "resyncing", "suspended", "takeover"] as const;
export type SecondaryGroupState = (typeof SECONDARY_GROUP_STATES)[number];
/** `uninitialized`: a group this subsystem has never started (`grp.initialized = 0`); never held by the engine. */
export type SecondaryGroupTableState = SecondaryGroupState | "uninitialized";

/**
 * What raises each event: docs/state-machines.md. A fence is one of two
 * events by its generation against the group's (above it, or not); a resync
 * request one of three (above it, equal to it: the same request again, or
 * below it).
 */
export const SECONDARY_GROUP_EVENTS = [
  "first-start",
  "fence",
  "fence-stale",
  "apply-ts",
  "takeover",
  "resync-begin",
  "resync-begin-again",
  "resync-begin-stale",
  "barrier-passed",
] as const;
export type SecondaryGroupEvent = (typeof SECONDARY_GROUP_EVENTS)[number];

const NOT_FENCED = refused("TM_NOT_FENCED");
const NOT_SYNCHRONIZED = refused("TM_NOT_SYNCHRONIZED");
const GENERATION = refused("TM_GENERATION");

export const SECONDARY_GROUP_TRANSITIONS: TransitionTable<SecondaryGroupTableState, SecondaryGroupEvent, SecondaryGroupState> = {
  uninitialized: {
    "first-start": to("resyncing"),
    "fence": never,
    "fence-stale": never,
    "apply-ts": never,
    "takeover": never,
    "resync-begin": never,
    "resync-begin-again": never,
    "resync-begin-stale": never,
    "barrier-passed": never,
  },
  active: {
    "first-start": never,
    "fence": to("suspended"),
    "fence-stale": ignored,
    "apply-ts": NOT_FENCED,
    "takeover": NOT_SYNCHRONIZED,
    "resync-begin": NOT_SYNCHRONIZED,
    "resync-begin-again": NOT_SYNCHRONIZED,
    "resync-begin-stale": NOT_SYNCHRONIZED,
    // An active group holds no 112 for a barrier.
    "barrier-passed": never,
  },
  resyncing: {
    "first-start": never,
    // The hold stays until apply-ts: its floor is what the RCM's cut needs.
    "fence": to("suspended"),
    "fence-stale": ignored,
    "apply-ts": NOT_FENCED,
    "takeover": NOT_SYNCHRONIZED,
    "resync-begin": NOT_SYNCHRONIZED,
    // The same resync again: it answers the same.
    "resync-begin-again": to("resyncing"),
    "resync-begin-stale": NOT_SYNCHRONIZED,
    "barrier-passed": to("active"),
  },
  suspended: {
    "first-start": never,
    "fence": to("suspended"),
    "fence-stale": ignored,
    "apply-ts": to("suspended"),
    "takeover": to("takeover"),
    "resync-begin": to("resyncing"),
    "resync-begin-again": GENERATION,
    "resync-begin-stale": GENERATION,
    // Only with the negative control noFence (a fenced group that still takes
    // frames): a group fenced while resyncing keeps its hold, and the engine
    // lifts it whatever the state.
    "barrier-passed": to("active"),
  },
  takeover: {
    "first-start": never,
    // A takeover is undone only by a resync.
    "fence": to("takeover"),
    "fence-stale": ignored,
    "apply-ts": to("takeover"),
    "takeover": to("takeover"),
    "resync-begin": to("resyncing"),
    "resync-begin-again": GENERATION,
    "resync-begin-stale": GENERATION,
    // As in suspended: only with the negative control noFence.
    "barrier-passed": to("active"),
  },
};

/**
 * The state an event moves a group to, or null when the table ignores the
 * event there. A refusal throws its TM_* code with the message `refusal`
 * gives for it; an event the engine never raises in that state is a broken
 * invariant.
 */
export function secondaryGroupTransition(state: SecondaryGroupTableState, event: SecondaryGroupEvent, refusal?: (code: string) => string): SecondaryGroupState | null {
  return nextState("secondary group", SECONDARY_GROUP_TRANSITIONS, state, event, refusal);
}

/** The table's cell for a state and an event. */
export function secondaryGroupOutcome(state: SecondaryGroupState, event: SecondaryGroupEvent): Outcome<SecondaryGroupState> {
  return outcome("secondary group", SECONDARY_GROUP_TRANSITIONS, state, event);
}

/** A fence at `requested` to a group at `current`: which event it is. */
export function fenceEvent(requested: number, current: number): "fence" | "fence-stale" {
  return requested > current ? "fence" : "fence-stale";
}

/** A resync request at `requested` to a group at `current`: which event it is. */
export function resyncBeginEvent(requested: number, current: number): "resync-begin" | "resync-begin-again" | "resync-begin-stale" {
  return requested > current ? "resync-begin" : requested === current ? "resync-begin-again" : "resync-begin-stale";
}

/** States in which a group takes its primaries' frames. */
export function replicating(state: SecondaryGroupState): boolean {
  return state === "active" || state === "resyncing";
}

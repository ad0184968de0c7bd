// The group state machine of a primary, as data: PRIMARY_GROUP_TRANSITIONS
// gives for every state and every event what the event does, and
// docs/state-machines.md (Group on a primary) prints the same table. Pure.
// Invariant: PrimaryEngine changes a group's state only through
// primaryGroupTransition, and the strings here are those of `grp.state`.
import { ignored, never, nextState, outcome, refused, to, type Outcome, type TransitionTable } from "../transition-table.ts";

/** Group states on a primary, as `grp.state` stores them. */
export const PRIMARY_GROUP_STATES = ["active", "copying", "frozen", "suspended", "fenced", "taken-over"] as const;
export type PrimaryGroupState = (typeof PRIMARY_GROUP_STATES)[number];
/** `uninitialized`: a group this subsystem has never started (`grp.initialized = 0`); never held by the engine. */
export type PrimaryGroupTableState = PrimaryGroupState | "uninitialized";

/**
 * What raises each event: docs/state-machines.md. A resync request is one of
 * three events by its generation against the group's: above it (a new
 * resync), equal to it (the same request again), or below it.
 */
export const PRIMARY_GROUP_EVENTS = [
  "first-start",
  "primary-resync",
  "primary-resync-again",
  "primary-resync-stale",
  "copy-acknowledged",
  "primary-suspend",
  "journal-full",
  "ack-regressed",
  "refused",
  "primary-takeover",
  "primary-freeze",
] as const;
export type PrimaryGroupEvent = (typeof PRIMARY_GROUP_EVENTS)[number];

const NOT_SYNCHRONIZED = refused("TM_NOT_SYNCHRONIZED");
const GENERATION = refused("TM_GENERATION");
const NOT_PAIRED = refused("TM_NOT_PAIRED");

/** Suspended, fenced and taken over: host writes go to the bitmap (or are refused), nothing streams. */
function resting(onSuspend: PrimaryGroupState): Record<PrimaryGroupEvent, Outcome<PrimaryGroupState>> {
  return {
    "first-start": never,
    "primary-resync": to("copying"),
    "primary-resync-again": GENERATION,
    "primary-resync-stale": GENERATION,
    "copy-acknowledged": ignored,
    // A takeover is undone only by a resync: a suspension leaves it taken over.
    "primary-suspend": to(onSuspend),
    "journal-full": ignored,
    "ack-regressed": ignored,
    "refused": ignored,
    "primary-takeover": to("taken-over"),
    "primary-freeze": NOT_PAIRED,
  };
}

export const PRIMARY_GROUP_TRANSITIONS: TransitionTable<PrimaryGroupTableState, PrimaryGroupEvent, PrimaryGroupState> = {
  uninitialized: {
    "first-start": to("copying"),
    "primary-resync": never,
    "primary-resync-again": never,
    "primary-resync-stale": never,
    "copy-acknowledged": never,
    "primary-suspend": never,
    "journal-full": never,
    "ack-regressed": never,
    "refused": never,
    "primary-takeover": never,
    "primary-freeze": never,
  },
  active: {
    "first-start": never,
    "primary-resync": NOT_SYNCHRONIZED,
    "primary-resync-again": NOT_SYNCHRONIZED,
    "primary-resync-stale": NOT_SYNCHRONIZED,
    "copy-acknowledged": ignored,
    "primary-suspend": to("suspended"),
    "journal-full": to("suspended"),
    "ack-regressed": to("suspended"),
    "refused": to("fenced"),
    "primary-takeover": to("taken-over"),
    "primary-freeze": to("frozen"),
  },
  copying: {
    "first-start": never,
    "primary-resync": NOT_SYNCHRONIZED,
    // The same resync again: its blocks are merged again.
    "primary-resync-again": to("copying"),
    "primary-resync-stale": NOT_SYNCHRONIZED,
    "copy-acknowledged": to("active"),
    "primary-suspend": to("suspended"),
    "journal-full": to("suspended"),
    "ack-regressed": to("suspended"),
    // Refused at its own generation: the secondary was suspended or taken over
    // (a resync's own steps never refuse it: the group rests first, docs/resync.md).
    "refused": to("fenced"),
    "primary-takeover": to("taken-over"),
    "primary-freeze": NOT_PAIRED,
  },
  frozen: {
    "first-start": never,
    "primary-resync": NOT_SYNCHRONIZED,
    "primary-resync-again": NOT_SYNCHRONIZED,
    "primary-resync-stale": NOT_SYNCHRONIZED,
    "copy-acknowledged": ignored,
    "primary-suspend": to("suspended"),
    // Only the RCM thaws a frozen group (primary-suspend, or primary-takeover
    // once a secondary is open to hosts): a swap may have opened the
    // secondaries already, so a primary that made itself writable would be a
    // second writable side. A full journal or state disk (a host write in
    // flight at the freeze, another group's journal, a restart on a full
    // disk) therefore leaves it frozen: hosts are refused anyway, and the
    // journal drains as the secondaries acknowledge (finding 26).
    "journal-full": ignored,
    // Only a secondary that still takes the link can acknowledge less than it
    // had, and a swap takes over no secondary while a primary is thawed
    // (failback.ts swapNoneThawed), so this exit cannot meet an open side
    // unless a takeover reached some secondaries and another lost durable RCRs.
    "ack-regressed": to("suspended"),
    // A swap is fencing the secondaries: the group stays frozen, read-only (issue 17).
    "refused": ignored,
    "primary-takeover": to("taken-over"),
    "primary-freeze": to("frozen"),
  },
  suspended: resting("suspended"),
  fenced: resting("suspended"),
  "taken-over": resting("taken-over"),
};

/**
 * The state an event moves a group to, or null when the table ignores the
 * event there. A refusal throws its TM_* code with the message `refusal`
 * gives for it; an event the engine never raises in that state is a broken
 * invariant.
 */
export function primaryGroupTransition(state: PrimaryGroupTableState, event: PrimaryGroupEvent, refusal?: (code: string) => string): PrimaryGroupState | null {
  return nextState("primary group", PRIMARY_GROUP_TRANSITIONS, state, event, refusal);
}

/** Whether the table ignores the event in this state: the engine then does nothing for it. */
export function primaryGroupIgnores(state: PrimaryGroupState, event: PrimaryGroupEvent): boolean {
  return outcome("primary group", PRIMARY_GROUP_TRANSITIONS, state, event).kind === "ignored";
}

/** A resync request at `requested` to a group at `current`: which event it is. */
export function primaryResyncEvent(requested: number, current: number): "primary-resync" | "primary-resync-again" | "primary-resync-stale" {
  return requested > current ? "primary-resync" : requested === current ? "primary-resync-again" : "primary-resync-stale";
}

/** Taken over (the secondaries serve hosts) or frozen (a swap): the primary volumes are read-only. */
export function hostsMayWrite(state: PrimaryGroupState): boolean {
  return state !== "taken-over" && state !== "frozen";
}

/** States in which the group streams RCRs and SYNCs (frozen: for a swap, hosts may no longer write). */
export function replicating(state: PrimaryGroupState): boolean {
  return state === "active" || state === "copying" || state === "frozen";
}

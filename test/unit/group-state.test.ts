// The group state machines of a primary and a secondary (group-state.ts), cell
// by cell: every state by every event, against a matrix written out here by
// hand from what the engines did before the tables existed. A changed cell
// must be changed in both places (and in docs/state-machines.md, which
// state-machine-docs.test.ts compares with the code).
import { describe, expect, it } from "vitest";
import { InvariantError } from "../../appliance/invariant.ts";
import {
  PRIMARY_GROUP_EVENTS,
  PRIMARY_GROUP_STATES,
  PRIMARY_GROUP_TRANSITIONS,
  hostsMayWrite,
  primaryGroupIgnores,
  primaryGroupTransition,
  primaryResyncEvent,
  replicating as primaryReplicating,
  type PrimaryGroupEvent,
  type PrimaryGroupTableState,
} from "../../appliance/primary/group-state.ts";
import {
  SECONDARY_GROUP_EVENTS,
  SECONDARY_GROUP_STATES,
  SECONDARY_GROUP_TRANSITIONS,
  fenceEvent,
  replicating as secondaryReplicating,
  resyncBeginEvent,
  secondaryGroupOutcome,
  secondaryGroupTransition,
  type SecondaryGroupEvent,
  type SecondaryGroupTableState,
} from "../../appliance/secondary/group-state.ts";

/** A cell: a next state, `TM_*` (refused with that code), `-` (ignored) or `x` (never raised: a broken invariant). */
type Cell = string;

/** Columns in the order of PRIMARY_GROUP_EVENTS. */
const PRIMARY: Record<PrimaryGroupTableState, Cell[]> = {
  //              first-start   resync                 resync-again           resync-stale           copy-ack   suspend       journal-full   ack-regressed   refused   takeover      freeze
  uninitialized: ["copying",    "x",                   "x",                   "x",                   "x",       "x",          "x",           "x",            "x",      "x",          "x"],
  active:        ["x",          "TM_NOT_SYNCHRONIZED", "TM_NOT_SYNCHRONIZED", "TM_NOT_SYNCHRONIZED", "-",       "suspended",  "suspended",   "suspended",    "fenced", "taken-over", "frozen"],
  copying:       ["x",          "TM_NOT_SYNCHRONIZED", "copying",             "TM_NOT_SYNCHRONIZED", "active",  "suspended",  "suspended",   "suspended",    "fenced", "taken-over", "TM_NOT_PAIRED"],
  frozen:        ["x",          "TM_NOT_SYNCHRONIZED", "TM_NOT_SYNCHRONIZED", "TM_NOT_SYNCHRONIZED", "-",       "suspended",  "-",           "suspended",    "-",      "taken-over", "frozen"],
  suspended:     ["x",          "copying",             "TM_GENERATION",       "TM_GENERATION",       "-",       "suspended",  "-",           "-",            "-",      "taken-over", "TM_NOT_PAIRED"],
  fenced:        ["x",          "copying",             "TM_GENERATION",       "TM_GENERATION",       "-",       "suspended",  "-",           "-",            "-",      "taken-over", "TM_NOT_PAIRED"],
  "taken-over":  ["x",          "copying",             "TM_GENERATION",       "TM_GENERATION",       "-",       "taken-over", "-",           "-",            "-",      "taken-over", "TM_NOT_PAIRED"],
};

/** Columns in the order of SECONDARY_GROUP_EVENTS. */
const SECONDARY: Record<SecondaryGroupTableState, Cell[]> = {
  //              first-start   fence        fence-stale   apply-ts         takeover               resync-begin           resync-again           resync-stale           barrier-passed
  uninitialized: ["resyncing",  "x",         "x",          "x",             "x",                   "x",                   "x",                   "x",                   "x"],
  active:        ["x",          "suspended", "-",          "TM_NOT_FENCED", "TM_NOT_SYNCHRONIZED", "TM_NOT_SYNCHRONIZED", "TM_NOT_SYNCHRONIZED", "TM_NOT_SYNCHRONIZED", "x"],
  resyncing:     ["x",          "suspended", "-",          "TM_NOT_FENCED", "TM_NOT_SYNCHRONIZED", "TM_NOT_SYNCHRONIZED", "resyncing",           "TM_NOT_SYNCHRONIZED", "active"],
  suspended:     ["x",          "suspended", "-",          "suspended",     "takeover",            "resyncing",           "TM_GENERATION",       "TM_GENERATION",       "active"],
  takeover:      ["x",          "takeover",  "-",          "takeover",      "takeover",            "resyncing",           "TM_GENERATION",       "TM_GENERATION",       "active"],
};

/** Runs one cell through the transition function and says what happened, in the matrix's notation. */
function observe(run: (refusal: (code: string) => string) => string | null): Cell {
  try {
    const next = run((code) => `refused with ${code}`);
    return next === null ? "-" : next;
  } catch (err) {
    if (err instanceof InvariantError) return "x";
    const e = err as Error & { code?: string };
    expect(e.message).toBe(`refused with ${e.code}`);
    return e.code!;
  }
}

describe("group state machine of a primary", () => {
  it("primary group: the table has every state (and uninitialized) and every event", () => {
    expect(Object.keys(PRIMARY_GROUP_TRANSITIONS).sort()).toEqual([...PRIMARY_GROUP_STATES, "uninitialized"].sort());
    for (const row of Object.values(PRIMARY_GROUP_TRANSITIONS)) expect(Object.keys(row)).toEqual([...PRIMARY_GROUP_EVENTS]);
    expect(Object.keys(PRIMARY).sort()).toEqual(Object.keys(PRIMARY_GROUP_TRANSITIONS).sort());
  });

  for (const state of Object.keys(PRIMARY) as PrimaryGroupTableState[]) {
    it(`primary group: every event in '${state}' (${PRIMARY_GROUP_EVENTS.length} events)`, () => {
      const got = PRIMARY_GROUP_EVENTS.map((event) => observe((refusal) => primaryGroupTransition(state, event, refusal)));
      expect(Object.fromEntries(PRIMARY_GROUP_EVENTS.map((e, i) => [e, got[i]]))).toEqual(Object.fromEntries(PRIMARY_GROUP_EVENTS.map((e, i) => [e, PRIMARY[state][i]])));
    });
  }

  it("primary group: a next state is always a state the engine holds, never uninitialized", () => {
    for (const row of Object.values(PRIMARY_GROUP_TRANSITIONS))
      for (const out of Object.values(row)) if (out.kind === "to") expect(PRIMARY_GROUP_STATES).toContain(out.to);
  });

  it("primary group: primaryGroupIgnores is true exactly on the ignored cells", () => {
    for (const state of PRIMARY_GROUP_STATES)
      for (const [i, event] of PRIMARY_GROUP_EVENTS.entries()) expect(primaryGroupIgnores(state, event), `${state} × ${event}`).toBe(PRIMARY[state][i] === "-");
  });

  it("primary group: a refusal without a message names the machine, the event and the state", () => {
    expect(() => primaryGroupTransition("active", "primary-resync")).toThrow("primary group: 'primary-resync' is refused in state 'active'");
  });

  it("primary group: a state the table does not know (another role's, from grp.state) is a broken invariant", () => {
    expect(() => primaryGroupTransition("resyncing" as PrimaryGroupTableState, "primary-suspend")).toThrow(InvariantError);
    expect(() => primaryGroupTransition("active", "fence" as PrimaryGroupEvent)).toThrow(InvariantError);
    expect(() => primaryGroupTransition("toString" as PrimaryGroupTableState, "primary-suspend")).toThrow(InvariantError);
  });

  it("primary group: a resync request is above, equal to or below the group's generation", () => {
    expect(primaryResyncEvent(5, 4)).toBe("primary-resync");
    expect(primaryResyncEvent(4, 4)).toBe("primary-resync-again");
    expect(primaryResyncEvent(3, 4)).toBe("primary-resync-stale");
  });

  // Finding 26 (a directed review of swaps cut short): a swap may have opened the
  // secondaries to hosts while a primary stays frozen; a primary that made itself
  // writable on a full state disk would be a second writable side.
  it("primary group: a frozen group is thawed only by the RCM: a full journal or state disk, a refusal, a late copy acknowledgement leave it frozen and read-only", () => {
    for (const e of ["journal-full", "refused", "copy-acknowledged", "primary-freeze"] as const) {
      const next = primaryGroupIgnores("frozen", e) ? "frozen" : primaryGroupTransition("frozen", e)!;
      expect(next, e).toBe("frozen");
      expect(hostsMayWrite(next), e).toBe(false);
    }
    expect(primaryGroupTransition("frozen", "primary-suspend")).toBe("suspended");
    expect(primaryGroupTransition("frozen", "primary-takeover")).toBe("taken-over");
  });

  it("primary group: hosts write in every state but frozen and taken-over; the group streams in active, copying and frozen", () => {
    expect(PRIMARY_GROUP_STATES.filter(hostsMayWrite)).toEqual(["active", "copying", "suspended", "fenced"]);
    expect(PRIMARY_GROUP_STATES.filter(primaryReplicating)).toEqual(["active", "copying", "frozen"]);
  });
});

describe("group state machine of a secondary", () => {
  it("secondary group: the table has every state (and uninitialized) and every event", () => {
    expect(Object.keys(SECONDARY_GROUP_TRANSITIONS).sort()).toEqual([...SECONDARY_GROUP_STATES, "uninitialized"].sort());
    for (const row of Object.values(SECONDARY_GROUP_TRANSITIONS)) expect(Object.keys(row)).toEqual([...SECONDARY_GROUP_EVENTS]);
    expect(Object.keys(SECONDARY).sort()).toEqual(Object.keys(SECONDARY_GROUP_TRANSITIONS).sort());
  });

  for (const state of Object.keys(SECONDARY) as SecondaryGroupTableState[]) {
    it(`secondary group: every event in '${state}' (${SECONDARY_GROUP_EVENTS.length} events)`, () => {
      const got = SECONDARY_GROUP_EVENTS.map((event) => observe((refusal) => secondaryGroupTransition(state, event, refusal)));
      expect(Object.fromEntries(SECONDARY_GROUP_EVENTS.map((e, i) => [e, got[i]]))).toEqual(Object.fromEntries(SECONDARY_GROUP_EVENTS.map((e, i) => [e, SECONDARY[state][i]])));
    });
  }

  it("secondary group: a next state is always a state the engine holds, never uninitialized", () => {
    for (const row of Object.values(SECONDARY_GROUP_TRANSITIONS))
      for (const out of Object.values(row)) if (out.kind === "to") expect(SECONDARY_GROUP_STATES).toContain(out.to);
  });

  it("secondary group: secondaryGroupOutcome is the table's cell", () => {
    for (const state of SECONDARY_GROUP_STATES)
      for (const event of SECONDARY_GROUP_EVENTS) expect(secondaryGroupOutcome(state, event)).toBe(SECONDARY_GROUP_TRANSITIONS[state][event]);
  });

  it("secondary group: a state the table does not know (another role's, from grp.state) is a broken invariant", () => {
    expect(() => secondaryGroupTransition("taken-over" as SecondaryGroupTableState, "fence")).toThrow(InvariantError);
    expect(() => secondaryGroupTransition("active", "primary-suspend" as SecondaryGroupEvent)).toThrow(InvariantError);
  });

  it("secondary group: a fence is above the group's generation or not; a resync request above, equal to or below it", () => {
    expect(fenceEvent(5, 4)).toBe("fence");
    expect(fenceEvent(4, 4)).toBe("fence-stale");
    expect(fenceEvent(3, 4)).toBe("fence-stale");
    // A control request without a generation: Number(undefined) is NaN, which was never above.
    expect(fenceEvent(Number(undefined), 4)).toBe("fence-stale");
    expect(resyncBeginEvent(5, 4)).toBe("resync-begin");
    expect(resyncBeginEvent(4, 4)).toBe("resync-begin-again");
    expect(resyncBeginEvent(3, 4)).toBe("resync-begin-stale");
  });

  it("secondary group: the group takes its primaries' frames in active and resyncing", () => {
    expect(SECONDARY_GROUP_STATES.filter(secondaryReplicating)).toEqual(["active", "resyncing"]);
  });
});

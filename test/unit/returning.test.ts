// The rule for primaries back after a takeover that could not reach them
// (appliance/rcm/returning.ts): taken over on their return only when every
// secondary of the group is taken over at one generation; never otherwise.
import { describe, expect, it } from "vitest";
import { returningPrimaries, type GroupSide } from "../../appliance/rcm/returning.ts";

const taken = (generation: number): GroupSide => ({ state: "takeover", generation });
const prims = (xs: [number, string, number][]) => new Map(xs.map(([id, state, generation]) => [id, { state, generation }]));

describe("returning primaries", () => {
  it("returning primaries: a primary down at the takeover and back (active, fenced, copying, frozen) at an older generation is taken over at the takeover's", () => {
    for (const state of ["active", "fenced", "copying", "frozen", "suspended"]) {
      const r = returningPrimaries([taken(3), taken(3), taken(3)], prims([[1, state, 2], [2, "taken-over", 3]]));
      expect(r, state).toEqual({ primaries: [{ subsystem: 1, state, generation: 2 }], generation: 3 });
    }
  });

  it("returning primaries: one the suspension reached and the takeover did not (suspended at the same generation) is taken over too", () => {
    const r = returningPrimaries([taken(3), taken(3)], prims([[1, "suspended", 3], [2, "taken-over", 3]]));
    expect(r.primaries.map((p) => p.subsystem)).toEqual([1]);
  });

  it("returning primaries: none when the group is not taken over on every secondary, or at different generations, or every primary is taken over", () => {
    const p = prims([[1, "fenced", 2], [2, "taken-over", 3]]);
    expect(returningPrimaries([taken(3), { state: "suspended", generation: 3 }], p).primaries).toEqual([]);
    expect(returningPrimaries([{ state: "active", generation: 3 }], prims([[1, "active", 3]])).primaries).toEqual([]);
    expect(returningPrimaries([taken(3), taken(4)], p).primaries).toEqual([]);
    expect(returningPrimaries([], p).primaries).toEqual([]);
    expect(returningPrimaries([taken(3)], prims([[1, "taken-over", 3], [2, "taken-over", 3]])).primaries).toEqual([]);
    // A primary at a newer generation than the takeover's is not the takeover's to fence.
    expect(returningPrimaries([taken(3)], prims([[1, "copying", 4]])).primaries).toEqual([]);
  });

  it("returning primaries: one that shows taken-over but whose record is not durable (finding 30) is taken over again; a recorded one is not", () => {
    const p = new Map([
      [1, { state: "taken-over", generation: 3, unrecorded: true }],
      [2, { state: "taken-over", generation: 3, unrecorded: false }],
    ]);
    expect(returningPrimaries([taken(3)], p)).toEqual({ primaries: [{ subsystem: 1, state: "taken-over", generation: 3, unrecorded: true }], generation: 3 });
  });
});

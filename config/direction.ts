// The direction a group replicates in (docs/resync.md, Failback): forward,
// the config's primaries are primary; reverse, after a failback, the config's
// secondaries are. Pure: the config stays as the admin wrote it, and every
// process derives the roles of the moment from it and the directions the
// subsystems hold.
import type { ResolvedPair, Topology } from "./schema.ts";

export type Direction = "forward" | "reverse";

export function isDirection(v: unknown): v is Direction {
  return v === "forward" || v === "reverse";
}

function turn(p: ResolvedPair): ResolvedPair {
  return { ...p, primary: p.secondary, secondary: p.primary };
}

/** The topology with each group's roles as its direction says (groups not named stay forward). */
export function directed<T extends Topology>(topo: T, directions: ReadonlyMap<string, Direction>): T {
  if (![...directions.values()].includes("reverse")) return topo;
  const reversed = (group: string) => directions.get(group) === "reverse";
  const pairs = topo.pairs.map((p) => (reversed(p.group) ? turn(p) : p));
  const groups = new Map(
    [...topo.groups].map(([name, g]) => [
      name,
      reversed(name) ? { name, primaries: g.secondaries, secondaries: g.primaries, pairs: pairs.filter((p) => p.group === name) } : g,
    ]),
  );
  return { ...topo, pairs, groups };
}

/**
 * Per group, the direction the subsystems that answered report; "mixed" when
 * they disagree (a turn cut short: `tidemark resync --reverse` or `swap`
 * again finishes it). A group no one reported on is forward.
 */
export function directionsFrom(reports: Iterable<Readonly<Record<string, string>> | undefined>): Map<string, Direction | "mixed"> {
  const out = new Map<string, Direction | "mixed">();
  for (const r of reports) {
    for (const [g, d] of Object.entries(r ?? {})) {
      if (!isDirection(d)) continue;
      const seen = out.get(g);
      out.set(g, seen === undefined || seen === d ? d : "mixed");
    }
  }
  return out;
}

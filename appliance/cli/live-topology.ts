// The topology as the subsystems run it now: the config's pairs, turned for
// every group whose direction a failback turned (config/direction.ts).
import type { LoadedTopology } from "../../config/load.ts";
import { directed, directionsFrom, type Direction } from "../../config/direction.ts";
import { askAll } from "./control-client.ts";
import type { SubsystemStatus } from "./status-view.ts";
import type { ErrorCode } from "../errors/codes.ts";

export class DirectionError extends Error {
  readonly code = "TM_DIRECTION_MIXED" satisfies ErrorCode;
}

/** Directions from status answers; a group in the middle of a turn is refused unless `allowMixed`. */
export function liveTopologyFrom(topo: LoadedTopology, answers: Iterable<{ ok: boolean; value?: SubsystemStatus }>, allowMixed = false): LoadedTopology {
  const dirs = directionsFrom([...answers].filter((a) => a.ok).map((a) => a.value!.directions));
  const clean = new Map<string, Direction>();
  for (const [g, d] of dirs) {
    if (d === "mixed") {
      if (!allowMixed) throw new DirectionError(`group '${g}': its subsystems disagree on its direction (a failback or swap was cut short); run 'tidemark resync --reverse' or 'tidemark swap' again`);
      continue;
    }
    clean.set(g, d);
  }
  return directed(topo, clean);
}

export async function liveTopology(topo: LoadedTopology, allowMixed = false): Promise<LoadedTopology> {
  const answers = await askAll<SubsystemStatus>(topo, topo.config.subsystems.map((s) => s.id), { op: "status" });
  return liveTopologyFrom(topo, answers.values() as Iterable<{ ok: boolean; value?: SubsystemStatus }>, allowMixed);
}

// Shared by the two files of CI's seeds for the simulation of the engines.
import { simulateEngines, replayCommand, type EngineSimOptions, type EngineSimResult } from "./simulation.ts";

/** The seeds run one after another on one core: minutes, not the default two. */
export const TIMEOUT_MS = 900_000;

export async function sweep(o: Omit<EngineSimOptions, "seed">, count: number) {
  const failed: string[] = [];
  /** Liveness: histories that did not finish in time (open: issue 17's reruns, a copier starved by host writes). */
  const stuck: string[] = [];
  const stories = new Map<string, number>();
  let writes = 0;
  let kills = 0;
  let cuts = 0;
  /** Wide scope: where the RCM was killed ("procedure:op"), and the second RCM's outcomes. */
  const killedAt = new Set<string>();
  const overlaps: string[] = [];
  let twoGroups = 0;
  for (let seed = 1; seed <= count; seed++) {
    const r = await simulateEngines({ ...o, seed });
    for (const k of r.rcmKilledAt) killedAt.add(k);
    overlaps.push(...r.overlaps);
    if (r.groups > 1) twoGroups++;
    stories.set(r.story, (stories.get(r.story) ?? 0) + 1);
    writes += r.writes;
    kills += r.kills;
    cuts += r.powerCuts;
    if (!r.ok) (r.failure!.startsWith("stuck:") ? stuck : failed).push(`seed ${seed}: ${r.failure}\n  replay: ${replayCommand({ ...o, seed })}`);
  }
  if (stuck.length > 0) console.log(`sim: ${stuck.length} of ${count} histories did not finish in time (liveness, open in issue 17):\n${stuck.join("\n")}`);
  return { failed, stuck, stories, writes, kills, cuts, killedAt, overlaps, twoGroups };
}

/** The first failing seed among `count` from 1, or null. */
export async function firstFailure(o: Omit<EngineSimOptions, "seed">, count: number): Promise<EngineSimResult | null> {
  for (let seed = 1; seed <= count; seed++) {
    const r = await simulateEngines({ ...o, seed });
    if (!r.ok) return r;
  }
  return null;
}


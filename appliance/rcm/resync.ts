// The resync procedure (docs/resync.md), driven by the remote copy manager:
// bring the group to rest at one synchronized time if it does not already,
// raise the generation, have every secondary hold 112 and hand over its
// bitmap, and every primary start copying the union. The rest (copies,
// COPIED, the barrier) runs between the subsystems; `watchResync` follows it
// from the subsystems' status until every secondary replicates again.
import type { Logger } from "pino";
import type { LoadedTopology } from "../../config/load.ts";
import { askAll, controlPlaneOf } from "../cli/control-client.ts";
import type { CopyStatus, SubsystemStatus } from "../cli/status-view.ts";
import { ProcedureError, call, runProcedure } from "./procedure.ts";
import type { BlockRuns } from "../secondary/secondary.ts";
import { returningPrimaries, type Returning } from "./returning.ts";

export interface ResyncStart {
  group: string;
  generation: number;
  /** True when a resync of this generation was already running (nothing was changed). */
  alreadyRunning: boolean;
  /** True when the group replicated with nothing to copy (nothing was changed). */
  nothingToDo: boolean;
  /** The synchronized time the secondaries hold until the barrier. */
  floor: string | null;
  /** A suspension had to run first (the group was not resting). */
  suspendedFirst: boolean;
  /** Blocks the secondaries reported dirty, and blocks the primaries hold in all. */
  secondaryBlocks: number;
  /** Primaries the group's takeover could not reach, taken over on their return before the resync began. */
  returning?: Returning;
  primaries: { subsystem: number; remainingBlocks: number }[];
}

type GroupOnSecondary = NonNullable<SubsystemStatus["secondary"]>[number];
type GroupOnPrimary = NonNullable<SubsystemStatus["primary"]>["groups"][number];

async function groupStatus(topo: LoadedTopology, group: string) {
  const g = topo.groups.get(group)!;
  const ids = [...new Set([...g.primaries, ...g.secondaries])];
  const answers = await askAll<SubsystemStatus>(topo, ids, { op: "status" });
  const down = [...answers].filter(([, a]) => !a.ok).map(([id, a]) => `#${id} (${(a as { error: string }).error})`);
  // A call refused because the caller's procedure lease went to another holder: unlike a
  // subsystem that is down, that never comes back for this caller.
  const leaseLost = [...answers.values()].find((a) => !a.ok && a.code === "TM_LEASE_LOST") as { error: string } | undefined;
  const sec = new Map<number, GroupOnSecondary>();
  const prim = new Map<number, GroupOnPrimary>();
  for (const [id, a] of answers) {
    if (!a.ok) continue;
    const s = a.value.secondary?.find((x) => x.name === group);
    if (s && g.secondaries.includes(id)) sec.set(id, s);
    const p = a.value.primary?.groups.find((x) => x.name === group);
    if (p && g.primaries.includes(id)) prim.set(id, p);
  }
  return { down, sec, prim, leaseLost: leaseLost?.error ?? null };
}

export interface ResyncOptions {
  logger: Logger;
  by: string;
}

/**
 * Takes the returning primaries over at the takeover's generation, as the
 * takeover would have: fenced at G, read-only for hosts, their unacknowledged
 * journal turned into bitmap blocks (`primary-takeover`, docs/takeover.md).
 * Idempotent: a primary taken over by an earlier run is no longer returning,
 * and one that dies before the step is durable comes back as it was and is
 * taken over by the next run.
 */
export async function takeOverReturning(topo: LoadedTopology, group: string, r: Returning, o: { logger: Logger; by: string }): Promise<void> {
  if (r.primaries.length === 0) return;
  o.logger.warn(
    { group, generation: r.generation, primaries: r.primaries },
    "primaries the takeover could not reach are back: taking them over now, as the takeover would have",
  );
  await Promise.all(
    r.primaries.map((p) =>
      call(topo, p.subsystem, {
        op: "primary-takeover",
        group,
        generation: r.generation,
        reason: `takeover at generation ${r.generation}: unreachable then, taken over on its return`,
        by: o.by,
      }),
    ),
  );
}


/** The group's returning primaries (returning.ts) from the subsystems' status. */
export function returningOf(st: { sec: ReadonlyMap<number, GroupOnSecondary>; prim: ReadonlyMap<number, GroupOnPrimary> }): Returning {
  return returningPrimaries([...st.sec.values()], st.prim);
}

export async function startResync(topo: LoadedTopology, group: string, o: ResyncOptions): Promise<ResyncStart> {
  const g = topo.groups.get(group);
  if (!g) throw new ProcedureError("TM_NO_GROUP", `group '${group}' is not defined in ${topo.file}`);
  let st = await groupStatus(topo, group);
  if (st.down.length > 0) {
    throw new ProcedureError("TM_UNREACHABLE", `resync ${group}: ${st.down.join(", ")} cannot be reached; a resync needs every subsystem of the group; nothing was changed`);
  }
  // A group taken over while some primaries were down: those back now are
  // taken over first, as the takeover would have done; the resync then starts
  // from a group taken over on every subsystem.
  const returning = returningOf(st);
  if (returning.primaries.length > 0) {
    await takeOverReturning(topo, group, returning, o);
    st = await groupStatus(topo, group);
    if (st.down.length > 0) throw new ProcedureError("TM_UNREACHABLE", `resync ${group}: ${st.down.join(", ")} cannot be reached; run it again`);
  }
  const secs = () => [...st.sec.values()];
  const prims = () => [...st.prim.values()];
  const gens = new Set(secs().map((s) => s.generation));

  // Already under way at one generation: nothing to start.
  const running = secs().every((s) => s.state === "resyncing") && gens.size === 1 && prims().every((p) => p.generation === secs()[0].generation && (p.state === "copying" || p.state === "active"));
  if (running) {
    const generation = secs()[0].generation;
    return { group, generation, alreadyRunning: true, nothingToDo: false, floor: secs()[0].resync?.floor ?? null, suspendedFirst: false, secondaryBlocks: 0, primaries: prims().map((p, i) => ({ subsystem: [...st.prim.keys()][i], remainingBlocks: p.remainingBlocks ?? 0 })) };
  }
  const allActive = secs().every((s) => s.state === "active") && prims().every((p) => p.state === "active");
  // A paired group's secondary bitmap holds blocks too when an online verify
  // found them different (docs/verify.md): they are to copy like the primaries'.
  const pending = prims().reduce((n, p) => n + (p.remainingBlocks ?? 0), 0) + secs().reduce((n, s) => n + (s.bitmapBlocks ?? 0), 0);
  if (allActive && pending === 0) {
    return { group, generation: secs()[0].generation, alreadyRunning: false, nothingToDo: true, floor: null, suspendedFirst: false, secondaryBlocks: 0, primaries: [] };
  }

  // Step 1: the group rests at one synchronized time, or a suspension brings it there.
  const resting = () => secs().every((s) => (s.state === "suspended" || s.state === "takeover") && s.synchronizedTs !== null) && new Set(secs().map((s) => s.generation)).size === 1 && new Set(secs().map((s) => s.synchronizedTs)).size === 1;
  let suspendedFirst = false;
  if (!resting()) {
    o.logger.warn({ group }, "resync: the group does not rest at one synchronized time; suspending it first");
    await runProcedure(topo, group, { mode: "suspend", reason: "resync", by: o.by, logger: o.logger });
    suspendedFirst = true;
    st = await groupStatus(topo, group);
    if (st.down.length > 0) throw new ProcedureError("TM_UNREACHABLE", `resync ${group}: ${st.down.join(", ")} cannot be reached after the suspension; run it again`);
    if (!resting()) throw new ProcedureError("TM_RESYNC", `resync ${group}: the group does not rest at one synchronized time even after a suspension; see tidemark status`);
  }
  const generation = Math.max(...secs().map((s) => s.generation), ...prims().map((p) => p.generation)) + 1;
  const floor = secs()[0].synchronizedTs;
  o.logger.warn({ group, generation, floor }, "resync: secondaries hold their image and hand over their bitmaps");

  // Step 2: every secondary holds 112 and reports its bitmap.
  const begun = await Promise.all(
    g.secondaries.map(async (id) => [id, await call<{ bitmap: Record<string, BlockRuns> }>(topo, id, { op: "resync-begin", group, generation })] as const),
  );
  // Per primary volume, the blocks its secondary volume reported.
  const blocks = new Map<number, Record<string, BlockRuns>>();
  let secondaryBlocks = 0;
  for (const [, r] of begun) {
    for (const [secVolume, runs] of Object.entries(r.bitmap)) {
      const pair = g.pairs.find((p) => p.secondary.name === secVolume);
      if (!pair) throw new ProcedureError("TM_RESYNC", `resync ${group}: secondary volume '${secVolume}' is in no pair of the group`);
      const per = blocks.get(pair.primary.subsystemId) ?? {};
      per[pair.primary.name] = runs;
      blocks.set(pair.primary.subsystemId, per);
      for (const [, n] of runs) secondaryBlocks += n;
    }
  }
  // Step 3: every primary merges them and copies.
  const started = await Promise.all(
    g.primaries.map(async (id) => [id, await call<{ remainingBlocks: number }>(topo, id, { op: "primary-resync", group, generation, blocks: blocks.get(id) ?? {} })] as const),
  );
  o.logger.warn({ group, generation, secondaryBlocks }, "resync: primaries copying");
  return {
    group,
    generation,
    alreadyRunning: false,
    nothingToDo: false,
    floor,
    suspendedFirst,
    secondaryBlocks,
    ...(returning.primaries.length > 0 ? { returning } : {}),
    primaries: started.map(([id, r]) => ({ subsystem: id, remainingBlocks: r.remainingBlocks })),
  };
}

export interface ResyncProgress {
  group: string;
  generation: number;
  /** Over every primary of the group. */
  totalBlocks: number;
  doneBlocks: number;
  bytesPerSecond: number;
  etaMs: number | null;
  /** Primaries still copying or waiting for acknowledgements, secondaries still holding. */
  copying: number[];
  holding: number[];
  unreachable: number[];
  done: boolean;
}

/** Sums the primaries' copy counters and the secondaries' holds into one progress figure. */
export function resyncProgress(group: string, generation: number, prim: ReadonlyMap<number, GroupOnPrimary>, sec: ReadonlyMap<number, GroupOnSecondary>, unreachable: number[]): ResyncProgress {
  let total = 0;
  let done = 0;
  let rate = 0;
  const copying: number[] = [];
  for (const [id, p] of prim) {
    const c: CopyStatus | null | undefined = p.copy;
    if (p.state === "copying") copying.push(id);
    if (c) {
      total += c.totalBlocks;
      done += c.doneBlocks;
      rate += c.bytesPerSecond;
    }
  }
  const holding = [...sec].filter(([, s]) => s.state === "resyncing").map(([id]) => id);
  const left = (total - done) * 4096;
  return {
    group,
    generation,
    totalBlocks: total,
    doneBlocks: done,
    bytesPerSecond: rate,
    etaMs: rate > 0 ? Math.round((left / rate) * 1000) : null,
    copying,
    holding,
    unreachable,
    done: unreachable.length === 0 && copying.length === 0 && holding.length === 0 && [...sec.values()].every((s) => s.state === "active" && s.generation === generation),
  };
}

/**
 * Follows a resync until every secondary of the group replicates again at
 * `generation`. Fails when the group is suspended or taken over meanwhile
 * (a newer generation on a secondary).
 */
export async function watchResync(topo: LoadedTopology, group: string, generation: number, onProgress: (p: ResyncProgress) => void, intervalMs = 500): Promise<ResyncProgress> {
  // A primary drops its counters when its copy ends: its last ones, completed, stand for it.
  const last = new Map<number, CopyStatus>();
  for (;;) {
    const st = await groupStatus(topo, group);
    // Watched under a procedure lease that another holder took (finding 28): every call is refused
    // from now on, and polling on would wait for ever for subsystems that are not down.
    if (st.leaseLost !== null) throw new ProcedureError("TM_LEASE_LOST", st.leaseLost, { group });
    for (const [id, p] of st.prim) {
      if (p.copy) last.set(id, p.copy);
      else if (p.state === "active" && last.has(id)) {
        const c = last.get(id)!;
        st.prim.set(id, { ...p, copy: { ...c, doneBlocks: c.totalBlocks, etaMs: 0 } });
      }
    }
    const unreachable = st.down.map((d) => Number(/^#(\d+)/.exec(d)?.[1] ?? 0));
    for (const [id, s] of st.sec) {
      if (s.generation > generation || (s.generation === generation && (s.state === "suspended" || s.state === "takeover"))) {
        throw new ProcedureError(
          "TM_RESYNC_INTERRUPTED",
          `resync ${group}: secondary #${id} is ${s.state} at generation ${s.generation} (the resync ran at ${generation}): the group was suspended or taken over during the resync${s.reason ? ` (${s.reason})` : ""}; run the resync again`,
        );
      }
    }
    const p = resyncProgress(group, generation, st.prim, st.sec, unreachable);
    onProgress(p);
    if (p.done) return p;
    await controlPlaneOf(topo).runtime.sleep(intervalMs);
  }
}

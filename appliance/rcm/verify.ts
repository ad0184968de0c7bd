// An online verify of a group, from the outside (docs/verify.md): start it on
// the group's primaries (`verify-start`), then follow it from the
// subsystems' status until every pair's secondary has compared the run's last
// record. Used by `tidemark verify` and by the RCM's schedules. The verify
// itself runs between the subsystems: this only starts and watches it, so a
// watcher that dies changes nothing.
import type { LoadedTopology } from "../../config/load.ts";
import type { ResolvedPair } from "../../config/schema.ts";
import { askAll, controlPlaneOf } from "../cli/control-client.ts";
import type { SubsystemStatus } from "../cli/status-view.ts";
import type { VerifyRunStatus } from "../resync/verifier.ts";
import type { VerifiedVolume } from "../secondary/verify-check.ts";
import { tmError } from "../errors/codes.ts";
import { call } from "./procedure.ts";

export interface VerifyOptions {
  volume?: string;
  offset?: number;
  length?: number;
  rateMiBps: number;
}

/** One pair's run, as `verify-start` answered it. */
export interface VerifyRunRef {
  primary: number;
  volume: string;
  secondary: number;
  target: string;
  runTs: string;
  startOffset: number;
  endOffset: number;
}

export interface VerifyStart {
  group: string;
  rateMiBps: number;
  runs: VerifyRunRef[];
}

export interface VerifyPairProgress extends VerifyRunRef {
  /** The primary's run: running, paused (group not paired) or done (hashed and journaled). */
  state: string;
  hashedThrough: number;
  /** How far the secondary has compared this run. */
  comparedThrough: number;
  verifiedBlocks: number;
  mismatchedBlocks: number;
  mismatches: { offset: number; primaryHash: string; secondaryHash: string }[];
  done: boolean;
}

export interface VerifyProgress {
  group: string;
  totalBlocks: number;
  /** Blocks the secondaries have compared. */
  doneBlocks: number;
  bytesPerSecond: number;
  etaMs: number | null;
  mismatchedBlocks: number;
  pairs: VerifyPairProgress[];
  unreachable: number[];
  done: boolean;
}

type Extended = SubsystemStatus & { verify?: { primary: Record<string, VerifyRunStatus[]>; secondary: VerifiedVolume[] } };

function pairsOf(topo: LoadedTopology, group: string, volume: string | undefined): ResolvedPair[] {
  const g = topo.groups.get(group);
  if (!g) throw tmError("TM_NO_GROUP", `group '${group}' is not in ${topo.file}`, { group });
  const pairs = volume === undefined ? g.pairs : g.pairs.filter((p) => p.primary.name === volume || p.secondary.name === volume);
  if (pairs.length === 0) throw tmError("TM_NO_VOLUME", `verify of '${group}': volume '${volume}' is in no pair of the group`, { group, volume });
  return pairs;
}

/**
 * Starts a verify on every primary of the group that holds a volume to
 * verify. Every primary is checked first: if one is not paired, or is down,
 * nothing is started anywhere.
 */
export async function startVerify(topo: LoadedTopology, group: string, o: VerifyOptions): Promise<VerifyStart> {
  const pairs = pairsOf(topo, group, o.volume);
  const primaries = [...new Set(pairs.map((p) => p.primary.subsystemId))].sort((a, b) => a - b);
  const answers = await askAll<SubsystemStatus>(topo, primaries, { op: "status" });
  for (const [id, a] of answers) {
    if (!a.ok) throw tmError("TM_VERIFY_STATE", `verify of '${group}': primary #${id} does not answer (${a.error}); nothing was started`, { group, subsystem: id });
    const g = a.value.primary?.groups.find((x) => x.name === group);
    if (!g || g.state !== "active") {
      throw tmError("TM_VERIFY_STATE", `verify of '${group}': the group is ${g?.state ?? "unknown"} on primary #${id}; only a paired group is verified (resync it first); nothing was started`, { group, subsystem: id });
    }
  }
  const runs: VerifyRunRef[] = [];
  for (const id of primaries) {
    const mine = pairs.filter((p) => p.primary.subsystemId === id);
    const body = {
      op: "verify-start",
      group,
      rateMiBps: o.rateMiBps,
      ...(o.volume !== undefined ? { volume: mine[0].primary.name } : {}),
      ...(o.offset !== undefined ? { offset: o.offset } : {}),
      ...(o.length !== undefined ? { length: o.length } : {}),
    };
    const started = await call<VerifyRunStatus[]>(topo, id, body);
    for (const r of started) {
      const p = mine.find((x) => x.primary.name === r.volume);
      if (!p) continue;
      runs.push({ primary: id, volume: r.volume, secondary: p.secondary.subsystemId, target: p.secondary.name, runTs: r.runTs, startOffset: r.startOffset, endOffset: r.endOffset });
    }
  }
  return { group, rateMiBps: o.rateMiBps, runs };
}

/** Where each run stands, from the primaries' runs and the secondaries' comparisons. Pure. */
export function verifyProgress(start: VerifyStart, answers: ReadonlyMap<number, { ok: true; value: Extended } | { ok: false; error: string }>): VerifyProgress {
  const pairs: VerifyPairProgress[] = [];
  let total = 0;
  let done = 0;
  let rate = 0;
  let mismatched = 0;
  const unreachable = [...answers].filter(([, a]) => !a.ok).map(([id]) => id);
  for (const r of start.runs) {
    const pa = answers.get(r.primary);
    const sa = answers.get(r.secondary);
    const run = pa?.ok ? pa.value.verify?.primary[start.group]?.find((x) => x.volume === r.volume && x.runTs === r.runTs) : undefined;
    const seen = sa?.ok ? sa.value.verify?.secondary.find((x) => x.volume === r.target && x.runTs === r.runTs) : undefined;
    const compared = seen ? Math.min(seen.throughOffset, r.endOffset) : r.startOffset;
    const blocks = (r.endOffset - r.startOffset) / 4096;
    total += blocks;
    done += Math.max(0, compared - r.startOffset) / 4096;
    if (run && run.state !== "done") rate += run.bytesPerSecond;
    mismatched += seen?.mismatchedBlocks ?? 0;
    pairs.push({
      ...r,
      state: run?.state ?? (pa?.ok ? "replaced" : "unknown"),
      hashedThrough: run?.nextOffset ?? r.startOffset,
      comparedThrough: compared,
      verifiedBlocks: seen?.verifiedBlocks ?? 0,
      mismatchedBlocks: seen?.mismatchedBlocks ?? 0,
      mismatches: seen?.mismatches ?? [],
      done: run?.state === "done" && compared >= r.endOffset,
    });
  }
  return {
    group: start.group,
    totalBlocks: total,
    doneBlocks: done,
    bytesPerSecond: rate,
    etaMs: rate > 0 ? Math.round((((total - done) * 4096) / rate) * 1000) : null,
    mismatchedBlocks: mismatched,
    pairs,
    unreachable,
    done: pairs.every((p) => p.done),
  };
}

/**
 * Follows a verify until every pair's secondary compared the whole run.
 * Fails if a run is replaced by a newer one (another verify of the volume
 * started meanwhile); a subsystem down or a group suspended only waits.
 */
export async function watchVerify(topo: LoadedTopology, start: VerifyStart, onProgress: (p: VerifyProgress) => void, intervalMs = 500): Promise<VerifyProgress> {
  const ids = [...new Set(start.runs.flatMap((r) => [r.primary, r.secondary]))];
  for (;;) {
    const answers = await askAll<Extended>(topo, ids, { op: "status" });
    const p = verifyProgress(start, answers);
    onProgress(p);
    if (p.done) return p;
    const replaced = p.pairs.find((x) => x.state === "replaced");
    if (replaced) {
      throw tmError("TM_VERIFY_STATE", `verify of '${start.group}': the run on ${replaced.volume} (primary #${replaced.primary}) was replaced by a newer verify of that volume`, { group: start.group, volume: replaced.volume });
    }
    await controlPlaneOf(topo).runtime.sleep(intervalMs);
  }
}

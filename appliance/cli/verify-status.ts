// What `tidemark status` shows of online verifies (docs/verify.md, docs/status.md):
// per pair the last verify run (the primary's cursor and the secondary's
// comparison of the same run), and the RCM's schedules. Pure.
import type { VerifyRunStatus } from "../resync/verifier.ts";
import type { VerifiedVolume } from "../secondary/verify-check.ts";
import type { ScheduleStatus } from "../rcm/verify-schedule.ts";
import { formatEta } from "./eta.ts";

/** The `verify` part of a subsystem's status (absent from older subsystems). */
export interface SubsystemVerify {
  primary: Record<string, VerifyRunStatus[]>;
  secondary: VerifiedVolume[];
  counters: { hashedBytes: number; records: number };
}

export interface PairVerify {
  runTs: string;
  /** running | paused | done (the primary's run) | compared (the secondary compared all of it) */
  state: string;
  startOffset: number;
  endOffset: number;
  hashedThrough: number;
  comparedThrough: number;
  verifiedBlocks: number;
  mismatchedBlocks: number;
  bytesPerSecond: number;
  etaMs: number | null;
  rateMiBps: number;
}

/** One pair's verify, from its primary's and its secondary's status; null when it never ran. */
export function pairVerify(primary: SubsystemVerify | undefined, secondary: SubsystemVerify | undefined, group: string, volume: string, target: string): PairVerify | null {
  const run = primary?.primary[group]?.find((r) => r.volume === volume);
  if (!run) return null;
  const seen = secondary?.secondary.find((s) => s.volume === target && s.runTs === run.runTs);
  const compared = seen ? Math.min(seen.throughOffset, run.endOffset) : run.startOffset;
  const left = run.endOffset - run.nextOffset;
  return {
    runTs: run.runTs,
    state: run.state === "done" && compared >= run.endOffset ? "compared" : run.state,
    startOffset: run.startOffset,
    endOffset: run.endOffset,
    hashedThrough: run.nextOffset,
    comparedThrough: compared,
    verifiedBlocks: seen?.verifiedBlocks ?? 0,
    mismatchedBlocks: seen?.mismatchedBlocks ?? 0,
    bytesPerSecond: run.bytesPerSecond,
    etaMs: run.state === "running" && run.bytesPerSecond > 0 ? Math.round((left / run.bytesPerSecond) * 1000) : null,
    rateMiBps: run.rateMiBps,
  };
}

/** The line under the PAIRS table for a pair's verify. */
export function pairVerifyLine(group: string, primary: string, secondary: string, v: PairVerify): string {
  const span = Math.max(1, v.endOffset - v.startOffset);
  const pct = ((100 * (v.comparedThrough - v.startOffset)) / span).toFixed(1);
  const rate = v.state === "running" ? `, ${(v.bytesPerSecond / 1048576).toFixed(1)} MiB/s (limit ${v.rateMiBps}), ETA ${formatEta(v.etaMs)}` : "";
  return `  verify ${group} ${primary} -> ${secondary}: ${v.state}, ${pct}% compared (${v.verifiedBlocks} blocks)${rate}, ${v.mismatchedBlocks} mismatched`;
}

/** The SCHEDULES section: each schedule's last run, result and next run. */
export function renderSchedules(schedules: ScheduleStatus[] | null): string[] {
  if (schedules === null) return ["SCHEDULES", "  the RCM did not answer: schedules unknown"];
  if (schedules.length === 0) return [];
  return [
    "SCHEDULES",
    ...schedules.map((s) => {
      const last = s.lastRun
        ? `last ${s.lastRun.startedAt} ${s.lastRun.result}${s.lastRun.result === "mismatch" ? ` (${s.lastRun.mismatchedBlocks} blocks)` : ""}${s.lastRun.error ? `: ${s.lastRun.error}` : ""}`
        : "never run";
      const now = s.running ? `; running since ${s.running.startedAt}` : "";
      return `  ${s.kind} ${s.group} '${s.cron}' at ${s.rateMiBps} MiB/s: ${last}${now}; next ${s.nextRun ?? "-"}`;
    }),
  ];
}

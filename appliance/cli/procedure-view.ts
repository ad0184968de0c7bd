// Renders an after-failure procedure report (suspend, takeover, dry run) for
// an admin at a terminal. Pure.
import type { ResyncStart } from "../rcm/resync.ts";
import type { ProcedureReport } from "../rcm/procedure.ts";
import { describeReturning } from "../rcm/returning.ts";

const mib = (b: number | undefined) => ((b ?? 0) / 1048576).toFixed(2);

/** The arrays' COPY state: a pair whose initial copy is running is not a consistent copy. */
const NOT_USABLE = "NOT USABLE: its initial copy never finished, it holds no image of the primary";

export function renderProcedure(r: ProcedureReport): string {
  const out: string[] = [];
  const what = r.mode === "dry-run" ? "takeover plan (dry run: nothing was changed)" : r.mode === "takeover" ? "takeover complete" : r.complete ? "group suspended" : "group partly suspended";
  out.push(`${r.group}: ${what}`);
  if (!r.complete) {
    out.push(`  fenced what answered at generation ${r.generation}; waiting for ${r.waitingFor.map((i) => `#${i}`).join(", ")}`);
    return out.join("\n");
  }
  if (r.takenOver) out.push(`  ${r.group} is taken over already at generation ${r.generation}: the secondaries serve hosts`);
  out.push(`  synchronized time Ts = ${r.ts} (${r.lossWindowMs.toFixed(1)} ms ago: writes acknowledged after Ts are not on the secondaries)`);
  out.push(`  generation ${r.generation}; took ${r.elapsedMs} ms`);
  for (const s of r.secondaries) {
    const first = Object.entries(s.first)
      .map(([p, t]) => `111[#${p}]=${t}`)
      .join(" ");
    if (r.mode === "dry-run") {
      out.push(`  secondary #${s.subsystem}: ${first}; would apply ${s.wouldApply} queued RCRs`);
      for (const v of s.volumes) out.push(`    ${v.volume}: would drop ${v.droppedWrites} writes (${mib(v.droppedBytes)} MiB) into the bitmap${v.notUsable ? `; ${NOT_USABLE}` : ""}`);
    } else {
      out.push(
        `  secondary #${s.subsystem}: applied ${s.appliedNow} RCRs in this procedure, ${s.dropped} RCRs (${mib(s.droppedBytes)} MiB) turned into ${s.bitmapBlocks} bitmap blocks`,
      );
      for (const v of s.volumes) {
        out.push(`    ${v.volume}: ${v.nbdUrl}${r.mode === "takeover" ? " (read-write: reconnect hosts)" : " (read-only)"}${v.notUsable ? `; ${NOT_USABLE}` : ""}`);
      }
    }
  }
  const unusable = r.secondaries.flatMap((s) => s.volumes.filter((v) => v.notUsable).map((v) => v.volume));
  if (unusable.length > 0) {
    out.push(`  WARNING: ${unusable.join(", ")}: the pair's initial copy never finished; ${r.mode === "dry-run" ? "a takeover would present" : "the takeover presents"} ${unusable.length > 1 ? "these volumes" : "this volume"} incomplete (do not use ${unusable.length > 1 ? "them" : "it"} as part of the image)`);
  }
  const failback = `'tidemark resync --group ${r.group} --reverse'`;
  for (const p of r.primaries) {
    if (!p.reached) {
      const then = r.mode === "suspend" ? "" : `; once it is back, ${failback} takes it over and fails back`;
      out.push(`  primary #${p.subsystem}: unreachable (${p.error}); it is fenced by generation when it comes back${then}`);
    } else if (p.returning) {
      out.push(
        `  primary #${p.subsystem}: back after the takeover, which could not reach it: ${p.state} at generation ${p.generation}; ` +
          `next: ${failback} takes it over and fails back (the hosts' writes on the secondaries are kept)`,
      );
    } else if (r.mode === "dry-run") {
      for (const v of p.volumes ?? []) out.push(`  primary #${p.subsystem} ${v.volume}: ${v.unacknowledgedWrites} writes (${mib(v.unacknowledgedBytes)} MiB) not yet acknowledged by the secondary`);
    } else out.push(`  primary #${p.subsystem}: ${p.state}${p.state === "taken-over" ? " (read-only for hosts)" : " (writes are recorded in its bitmap)"}`);
  }
  return out.join("\n");
}

/** What `tidemark resync` says when the copy starts. */
export function renderResyncStart(r: ResyncStart): string {
  const lines: string[] = r.returning ? describeReturning(r.group, r.returning) : [];
  if (r.alreadyRunning) lines.push(`resync of ${r.group} is already running at generation ${r.generation}; following it`);
  else {
    if (r.suspendedFirst) lines.push(`group ${r.group} did not rest at one synchronized time: it was suspended first`);
    lines.push(
      `resync of ${r.group} started at generation ${r.generation}: the secondaries hold their image (T_old ${r.floor ?? "?"}) until every dirty block has arrived; ${r.secondaryBlocks} blocks came from the secondaries' bitmaps`,
    );
  }
  for (const p of r.primaries) lines.push(`  primary #${p.subsystem}: ${p.remainingBlocks} blocks to copy`);
  return lines.join("\n");
}

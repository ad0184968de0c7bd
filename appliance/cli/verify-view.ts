// Progress and result of an online verify for a person (docs/verify.md): the
// same bar and plain-line fallback as a resync's (progress-view.ts): blocks
// compared, MiB/s and ETA on a terminal, one plain line every few seconds
// otherwise; then one line per pair with its mismatches.
import { blockProgressView, type ProgressView } from "./progress-view.ts";
import { formatEta } from "./eta.ts";
import type { VerifyProgress } from "../rcm/verify.ts";

const MIB = 1024 * 1024;
/** Mismatched blocks printed per pair; the rest are in status --json and the secondary's log. */
const MISMATCHES_SHOWN = 8;

/** One line: what a log or a pipe gets. Pure. */
export function verifyLine(p: VerifyProgress): string {
  const pct = p.totalBlocks > 0 ? ((100 * p.doneBlocks) / p.totalBlocks).toFixed(1) : "100.0";
  const paused = p.pairs.filter((x) => x.state === "paused").map((x) => x.volume);
  const notes = [
    paused.length > 0 ? `paused (group not paired) on ${paused.join(", ")}` : null,
    p.unreachable.length > 0 ? `#${p.unreachable.join(", #")} unreachable` : null,
  ].filter(Boolean);
  return `verify ${p.group}: ${p.doneBlocks}/${p.totalBlocks} blocks compared (${pct}%), ${(p.bytesPerSecond / MIB).toFixed(1)} MiB/s, ETA ${formatEta(p.etaMs)}, ${p.mismatchedBlocks} mismatched${notes.length > 0 ? `; ${notes.join("; ")}` : ""}`;
}

export type VerifyView = ProgressView<VerifyProgress>;

export function verifyView(out: NodeJS.WriteStream): VerifyView {
  return blockProgressView<VerifyProgress>(
    out,
    "verify {group} [{bar}] {percentage}% | {value}/{total} blocks | {mibs} MiB/s | ETA {eta_h} | {mismatched} mismatched",
    (p) => ({ group: p.group, mibs: (p.bytesPerSecond / MIB).toFixed(1), eta_h: formatEta(p.etaMs), mismatched: p.mismatchedBlocks }),
    verifyLine,
  );
}

/** The result: one line per pair, and its first mismatched blocks. Pure. */
export function renderVerifyResult(p: VerifyProgress, elapsedMs: number): string {
  const out = [`verify ${p.group}: ${p.doneBlocks} blocks compared in ${(elapsedMs / 1000).toFixed(1)} s, ${p.mismatchedBlocks} mismatched`];
  for (const x of p.pairs) {
    out.push(`  #${x.primary} ${x.volume} -> #${x.secondary} ${x.target}: ${x.verifiedBlocks} blocks, ${x.mismatchedBlocks} mismatched`);
    for (const m of x.mismatches.slice(0, MISMATCHES_SHOWN)) out.push(`    offset ${m.offset}: primary ${m.primaryHash}, secondary ${m.secondaryHash}`);
    if (x.mismatchedBlocks > MISMATCHES_SHOWN) out.push(`    ... ${x.mismatchedBlocks - MISMATCHES_SHOWN} more (status --json, and the secondary's log)`);
  }
  return out.join("\n");
}

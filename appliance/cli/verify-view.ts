// Progress and result of an online verify for a person (docs/verify.md): the
// same bar and plain-line fallback as a resync's (progress-view.ts): blocks
// compared, MiB/s and ETA on a terminal, one plain line every few seconds
// otherwise; then one line per pair with its mismatches.
import cliProgress from "cli-progress";
import { formatEta } from "./progress-view.ts";
import type { VerifyProgress } from "../rcm/verify.ts";

const MIB = 1024 * 1024;
const PLAIN_EVERY_MS = 2000;
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

export interface VerifyView {
  update(p: VerifyProgress): void;
  stop(): void;
}

export function verifyView(out: NodeJS.WriteStream): VerifyView {
  if (out.isTTY) {
    const bar = new cliProgress.SingleBar(
      {
        stream: out,
        format: "verify {group} [{bar}] {percentage}% | {value}/{total} blocks | {mibs} MiB/s | ETA {eta_h} | {mismatched} mismatched",
        hideCursor: true,
        clearOnComplete: false,
      },
      cliProgress.Presets.shades_classic,
    );
    let started = false;
    return {
      update(p) {
        const payload = { group: p.group, mibs: (p.bytesPerSecond / MIB).toFixed(1), eta_h: formatEta(p.etaMs), mismatched: p.mismatchedBlocks };
        if (!started) {
          bar.start(Math.max(1, p.totalBlocks), p.doneBlocks, payload);
          started = true;
        }
        bar.setTotal(Math.max(1, p.totalBlocks));
        bar.update(p.doneBlocks, payload);
      },
      stop() {
        if (started) bar.stop();
      },
    };
  }
  let last = 0;
  return {
    update(p) {
      const now = Date.now();
      if (now - last < PLAIN_EVERY_MS && !p.done) return;
      last = now;
      out.write(verifyLine(p) + "\n");
    },
    stop() {},
  };
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

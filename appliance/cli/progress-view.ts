// Progress of a copy (resync, initial copy) for a person: a bar with blocks
// done, MiB/s and ETA when stdout is a terminal, and one plain line every few
// seconds otherwise (logs, CI, pipes), so neither gets the other's noise.
import cliProgress from "cli-progress";
import type { ResyncProgress } from "../rcm/resync.ts";

const MIB = 1024 * 1024;
const PLAIN_EVERY_MS = 2000;

export function formatEta(ms: number | null): string {
  if (ms === null) return "--";
  const s = Math.round(ms / 1000);
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, "0")}s`;
  return `${Math.floor(s / 3600)}h${String(Math.floor((s % 3600) / 60)).padStart(2, "0")}m`;
}

/** One line: what a log or a pipe gets. Pure. */
export function progressLine(p: ResyncProgress): string {
  const pct = p.totalBlocks > 0 ? ((100 * p.doneBlocks) / p.totalBlocks).toFixed(1) : "100.0";
  const waiting = [
    p.copying.length > 0 ? `copying on #${p.copying.join(", #")}` : null,
    p.holding.length > 0 ? `secondaries #${p.holding.join(", #")} hold until the barrier` : null,
    p.unreachable.length > 0 ? `#${p.unreachable.join(", #")} unreachable` : null,
  ].filter(Boolean);
  return `resync ${p.group} (generation ${p.generation}): ${p.doneBlocks}/${p.totalBlocks} blocks (${pct}%), ${(p.bytesPerSecond / MIB).toFixed(1)} MiB/s, ETA ${formatEta(p.etaMs)}${waiting.length > 0 ? `; ${waiting.join("; ")}` : ""}`;
}

export interface ProgressView {
  update(p: ResyncProgress): void;
  stop(): void;
}

export function progressView(out: NodeJS.WriteStream): ProgressView {
  if (out.isTTY) {
    const bar = new cliProgress.SingleBar(
      {
        stream: out,
        format: "resync {group} [{bar}] {percentage}% | {value}/{total} blocks | {mibs} MiB/s | ETA {eta_h} | {waiting}",
        hideCursor: true,
        clearOnComplete: false,
      },
      cliProgress.Presets.shades_classic,
    );
    let started = false;
    return {
      update(p) {
        const payload = {
          group: p.group,
          mibs: (p.bytesPerSecond / MIB).toFixed(1),
          eta_h: formatEta(p.etaMs),
          waiting: p.copying.length > 0 ? "copying" : p.holding.length > 0 ? "barrier" : p.done ? "paired" : "",
        };
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
      out.write(progressLine(p) + "\n");
    },
    stop() {},
  };
}

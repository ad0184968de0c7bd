// Progress of a copy (resync, initial copy) for a person: a bar with blocks
// done, MiB/s and ETA when stdout is a terminal, and one plain line every few
// seconds otherwise (logs, CI, pipes), so neither gets the other's noise.
import cliProgress from "cli-progress";
import type { ResyncProgress } from "../rcm/resync.ts";
import { formatEta } from "./eta.ts";

const MIB = 1024 * 1024;
const PLAIN_EVERY_MS = 2000;

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

/** What a bar or a plain line is drawn from: blocks done of a total, and whether the work is over. */
interface BlockProgress {
  doneBlocks: number;
  totalBlocks: number;
  done: boolean;
}

export interface ProgressView<P extends BlockProgress = ResyncProgress> {
  update(p: P): void;
  stop(): void;
}

/**
 * A bar (`format`, with `payload`'s fields) on a terminal, else `line(p)`
 * every PLAIN_EVERY_MS and at the end: the resync's view and the verify's.
 */
export function blockProgressView<P extends BlockProgress>(out: NodeJS.WriteStream, format: string, payload: (p: P) => Record<string, unknown>, line: (p: P) => string): ProgressView<P> {
  if (out.isTTY) {
    const bar = new cliProgress.SingleBar({ stream: out, format, hideCursor: true, clearOnComplete: false }, cliProgress.Presets.shades_classic);
    let started = false;
    return {
      update(p) {
        if (!started) {
          bar.start(Math.max(1, p.totalBlocks), p.doneBlocks, payload(p));
          started = true;
        }
        bar.setTotal(Math.max(1, p.totalBlocks));
        bar.update(p.doneBlocks, payload(p));
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
      out.write(line(p) + "\n");
    },
    stop() {},
  };
}

export function progressView(out: NodeJS.WriteStream): ProgressView {
  return blockProgressView<ResyncProgress>(
    out,
    "resync {group} [{bar}] {percentage}% | {value}/{total} blocks | {mibs} MiB/s | ETA {eta_h} | {waiting}",
    (p) => ({
      group: p.group,
      mibs: (p.bytesPerSecond / MIB).toFixed(1),
      eta_h: formatEta(p.etaMs),
      waiting: p.copying.length > 0 ? "copying" : p.holding.length > 0 ? "barrier" : p.done ? "paired" : "",
    }),
    progressLine,
  );
}

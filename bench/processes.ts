// The child processes of the small benchmarks (bench:resync, bench:verify):
// tidemark processes started until they print ready, commands timed, and
// everything killed and the work folder removed however the bench ends.
import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { rmSync } from "node:fs";
import { createInterface } from "node:readline";
import path from "node:path";
import { fileURLToPath } from "node:url";

export const BIN = path.join(path.dirname(fileURLToPath(import.meta.url)), "../bin/tidemark");

const children = new Set<ChildProcess>();
const cleanup = { dir: null as string | null, keep: false };

process.on("exit", () => {
  for (const p of children) if (p.exitCode === null && p.signalCode === null) p.kill("SIGKILL");
  if (cleanup.dir && !cleanup.keep) rmSync(cleanup.dir, { recursive: true, force: true });
});
for (const sig of ["SIGINT", "SIGTERM"] as const) process.on(sig, () => process.exit(130));

/** The bench's work folder: removed at exit unless keep. */
export function removeAtExit(dir: string, keep: boolean): void {
  cleanup.dir = dir;
  cleanup.keep = keep;
}

/** Registers a child so that it is killed at exit. */
export function track(p: ChildProcess): ChildProcess {
  children.add(p);
  p.once("exit", () => children.delete(p));
  return p;
}

/** Starts `tidemark ARGS --log LOG` and resolves once it prints its ready line. */
export function startReady(args: string[], log: string): Promise<ChildProcess> {
  return new Promise((resolve, reject) => {
    const p = track(spawn(process.execPath, [BIN, ...args, "--log", log], { stdio: ["ignore", "pipe", "pipe"] }));
    let err = "";
    p.stderr!.on("data", (d) => (err += d));
    createInterface({ input: p.stdout! }).on("line", (l) => l.includes('"ready":true') && resolve(p));
    p.once("exit", (code, sig) => reject(new Error(`${args.join(" ")} exited (${sig ?? code}) before ready: ${err.trim()} (log ${log})`)));
  });
}

/** Runs a command to its end; throws, naming `what`, unless it exits 0. */
export function runTimed(cmd: string, args: string[], what: string): { ms: number; stdout: string } {
  const t0 = process.hrtime.bigint();
  const r = spawnSync(cmd, args, { encoding: "utf8", maxBuffer: 64 << 20 });
  const ms = Number(process.hrtime.bigint() - t0) / 1e6;
  if (r.status !== 0) throw new Error(`${what} failed (${r.status ?? r.signal}): ${r.stderr.trim()}`);
  return { ms, stdout: r.stdout };
}

export function tidemarkTimed(args: string[], what: string): { ms: number; stdout: string } {
  return runTimed(process.execPath, [BIN, ...args], what);
}

/** Stops every child with SIGTERM (the bench's normal end). */
export function stopAll(): void {
  for (const p of children) p.kill("SIGTERM");
}

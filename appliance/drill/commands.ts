// The tidemark commands a drill round runs as a user would (`tidemark resync`), each bounded by a
// timeout, and every one still running killable at once when the drill is interrupted.
import { spawn, type ChildProcess } from "node:child_process";
import { TIDEMARK_BIN as BIN } from "../cli/bin-path.ts";

export interface CliResult {
  code: number | null;
  stdout: string;
  stderr: string;
  timedOut: boolean;
}

/** Commands running now, so that Ctrl-C can end them with the rest. */
const running = new Set<ChildProcess>();

export function killRunningCommands(): void {
  for (const c of running) c.kill("SIGKILL");
}

/** Runs `tidemark ARGS` as a user would, bounded by timeoutMs (then kill -9). */
export function tidemarkCli(args: string[], timeoutMs: number): Promise<CliResult> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [BIN, ...args], { stdio: ["ignore", "pipe", "pipe"] });
    running.add(child);
    let stdout = "";
    let stderr = "";
    let timedOut = false;
    child.stdout.on("data", (d: Buffer) => (stdout += d.toString()));
    child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
    const timer = setTimeout(() => {
      timedOut = true;
      child.kill("SIGKILL");
    }, timeoutMs);
    child.once("close", (code) => {
      running.delete(child);
      clearTimeout(timer);
      resolve({ code, stdout, stderr, timedOut });
    });
  });
}

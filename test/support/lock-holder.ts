// A second process holding an exclusive flock on a file or device, for the
// volume-locking tests.
import { spawn, type ChildProcess } from "node:child_process";
import { ROOT } from "./cluster.ts";

/** Starts a child that holds an exclusive flock on `file` until its stdin closes. */
export async function holdLockInChild(file: string): Promise<ChildProcess> {
  const script = `
    const fs = require("node:fs"); const fsExt = require("fs-ext");
    const fd = fs.openSync(process.env.TM_LOCK_PATH, "r+");
    fsExt.flockSync(fd, "exnb");
    process.stdout.write("locked\\n");
    process.stdin.resume();
    process.stdin.on("end", () => process.exit(0));`;
  const child = spawn(process.execPath, ["-e", script], {
    cwd: ROOT,
    env: { ...process.env, TM_LOCK_PATH: file },
    stdio: ["pipe", "pipe", "pipe"],
  });
  let stderr = "";
  child.stderr?.on("data", (d: Buffer) => (stderr += d.toString()));
  await new Promise<void>((resolve, reject) => {
    child.stdout?.on("data", (d: Buffer) => {
      if (d.toString().includes("locked")) resolve();
    });
    child.on("exit", (code) => reject(new Error(`lock holder exited ${code}: ${stderr}`)));
  });
  return child;
}

export async function stopChild(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null) return;
  const exited = new Promise<void>((resolve) => child.on("exit", () => resolve()));
  child.stdin?.end();
  await exited;
}

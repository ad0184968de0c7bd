// Loop devices: a regular file presented as a Linux block device (/dev/loopN)
// through util-linux losetup, so tests and drills exercise the block-device
// path on any machine with root and /dev/loop-control. Nothing here is on the
// write path; every losetup call is bounded by LOSETUP_TIMEOUT_MS.
import { execFile, spawnSync } from "node:child_process";
import { existsSync } from "node:fs";
import { LoopDeviceError, type LoopErrorCode } from "./errors.ts";

export { LoopDeviceError, LOOP_ERROR_CODES, type LoopErrorCode } from "./errors.ts";

/** A losetup that has not answered in this long is stuck on the kernel; give up rather than hang. */
export const LOSETUP_TIMEOUT_MS = 30_000;
const LOOP_CONTROL = "/dev/loop-control";

export type LoopSupport = { ok: true } | { ok: false; why: string };

/** Whether attachLoop can work here; `why` is a sentence for a skipped test's warning. */
export function loopSupported(): LoopSupport {
  if (process.platform !== "linux") return { ok: false, why: `loop devices need Linux (this is ${process.platform})` };
  if (process.getuid?.() !== 0) return { ok: false, why: "loop devices need root (losetup attaches through /dev/loop-control)" };
  if (!existsSync(LOOP_CONTROL)) return { ok: false, why: `${LOOP_CONTROL} is missing (no loop module, or a container without it)` };
  // `losetup -f` asks the kernel for a free device without attaching anything.
  const r = spawnSync("losetup", ["--find"], { encoding: "utf8", timeout: LOSETUP_TIMEOUT_MS });
  if (r.error !== undefined) {
    const sys = (r.error as NodeJS.ErrnoException).code;
    return { ok: false, why: sys === "ENOENT" ? "losetup is not installed (Debian package: mount)" : `losetup --find failed: ${r.error.message}` };
  }
  if (r.status !== 0) return { ok: false, why: `losetup --find exited ${r.status}: ${r.stderr.trim()}` };
  return { ok: true };
}

/** Attaches `file` to a free loop device and returns its path, e.g. /dev/loop3. */
export async function attachLoop(file: string): Promise<string> {
  const { stdout } = await runLosetup(["--find", "--show", file], "TM_LOOP_ATTACH", file);
  const dev = stdout.trim();
  if (!dev.startsWith("/dev/loop")) {
    throw new LoopDeviceError("TM_LOOP_ATTACH", `losetup --find --show ${file} printed "${dev}", not a loop device`, file);
  }
  return dev;
}

/**
 * Detaches a loop device. While some process still has it open the kernel
 * defers the detach (autoclear) until the last close, so close volumes first.
 */
export async function detachLoop(dev: string): Promise<void> {
  await runLosetup(["--detach", dev], "TM_LOOP_DETACH", dev);
}

function runLosetup(args: string[], code: LoopErrorCode, path: string): Promise<{ stdout: string }> {
  return new Promise((resolve, reject) => {
    execFile("losetup", args, { encoding: "utf8", timeout: LOSETUP_TIMEOUT_MS }, (err, stdout, stderr) => {
      if (err === null) {
        resolve({ stdout });
        return;
      }
      const sys = (err as NodeJS.ErrnoException).code;
      const why = sys === "ENOENT" ? "losetup is not installed" : stderr.trim() || err.message;
      reject(new LoopDeviceError(code, `losetup ${args.join(" ")}: ${why}`, path, stderr.trim() || undefined, err));
    });
  });
}

// Which real NBD clients this machine has. A test that needs a missing one is
// skipped, and this says why (npm test installs them as root; see README).
import { spawnSync } from "node:child_process";

function have(area: string, tool: string, probe = ["--version"]): boolean {
  const ok = spawnSync(tool, probe, { stdio: "ignore" }).status === 0;
  if (!ok) console.warn(`${area}: ${tool} is not installed; its tests are skipped (apt-get install libnbd-bin qemu-utils fio)`);
  return ok;
}

export function nbdTools(area: string) {
  const fio = have(area, "fio");
  const fioNbd = fio && /\bnbd\b/.test(spawnSync("fio", ["--enghelp"], { encoding: "utf8" }).stdout ?? "");
  if (fio && !fioNbd) console.warn(`${area}: fio has no nbd ioengine; the fio tests are skipped`);
  return { nbdinfo: have(area, "nbdinfo"), nbdcopy: have(area, "nbdcopy"), qemuIo: have(area, "qemu-io"), fio, fioNbd };
}

/** The bench's unreplicated peers beside nbdkit (bench/run.ts). */
export function benchPeers(area: string) {
  return { nbdServer: have(area, "nbd-server", ["-V"]), qemuNbd: have(area, "qemu-nbd") };
}

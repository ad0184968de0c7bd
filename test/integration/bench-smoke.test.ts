// The benchmark must keep working as the code changes: a few seconds of it,
// no targets asserted (figures on a shared 2-core machine mean nothing here;
// npm run bench is where they are measured).
import { describe, expect, it } from "vitest";
import { execFile } from "node:child_process";
import path from "node:path";
import { ROOT } from "../support/cluster.ts";
import { benchPeers, nbdTools } from "../support/tools.ts";
import { haveCerttool } from "../support/tls-material.ts";

const TOOLS = nbdTools("bench smoke");
const CERTTOOL = haveCerttool("bench smoke");
const PEERS = benchPeers("bench smoke");

function bench(script: string, args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, ["--import", "tsx", path.join(ROOT, script), ...args], { cwd: ROOT, timeout: 180_000, maxBuffer: 16 << 20 }, (err, stdout, stderr) =>
      resolve({ code: err ? ((err as { code?: number }).code ?? 1) : 0, stdout, stderr }),
    );
  });
}

describe("bench: smoke", () => {
  it.skipIf(!TOOLS.fioNbd)("bench: a 2 s random-write job runs end to end on the 1x1 and 2x3 shapes and prints their rows", async () => {
    const out = await bench("bench/run.ts", ["--seconds", "2", "--only", "1x1,2x3", "--jobs", "randwrite", "--volume-mib", "64"]);
    expect(out.code, out.stderr + out.stdout).toBe(0);
    for (const shape of ["1x1", "2x3"]) {
      const row = out.stdout.split("\n").find((l) => new RegExp(`^tidemark ${shape}\\s+randwrite\\s`).test(l));
      expect(row, out.stdout).toBeDefined();
      const iops = Number(row!.trim().split(/\s+/)[3]);
      expect(iops, `${shape} IOPS`).toBeGreaterThan(0);
      expect(out.stdout, "the half-rate job reports its lag").toMatch(new RegExp(`tidemark ${shape} at half rate \\(\\d+ IOPS\\): lag p99 \\d+ ms`));
    }
  });

  it.skipIf(!TOOLS.fioNbd || !PEERS.nbdServer || !PEERS.qemuNbd)("bench: the unreplicated peers nbd-server and qemu-nbd run a 2 s job each and report their CPU per operation", async () => {
    const out = await bench("bench/run.ts", ["--seconds", "2", "--only", "nbd-server,qemu-nbd", "--jobs", "randwrite", "--volume-mib", "64"]);
    expect(out.code, out.stderr + out.stdout).toBe(0);
    const head = out.stdout.split("\n").find((l) => l.startsWith("target "));
    const cpuColumn = head!.split(/\s{2,}/).indexOf("CPU us/op");
    expect(cpuColumn, head).toBeGreaterThan(0);
    for (const target of ["nbd-server file", "qemu-nbd file"]) {
      const row = out.stdout.split("\n").find((l) => l.startsWith(target) && /\srandwrite\s/.test(l));
      expect(row, out.stdout).toBeDefined();
      const cells = row!.split(/\s{2,}/);
      expect(Number(cells[2]), `${target} IOPS`).toBeGreaterThan(0);
      // The daemon's forked children did the work: counted, the CPU is not zero.
      expect(Number(cells[cpuColumn]), `${target} CPU us/op`).toBeGreaterThan(0);
    }
  });

  it.skipIf(!TOOLS.nbdcopy)("bench: bench:resync on 16 MiB runs end to end, prints both rates and finds the images identical", async () => {
    const out = await bench("bench/resync.ts", ["--mib", "16"]);
    expect(out.code, out.stderr).toBe(0);
    expect(out.stdout).toMatch(/tidemark resync \(\+ quiesce\)\s+16\s+[\d.]+\s+[\d.]+/);
    expect(out.stdout).toMatch(/nbdcopy file -> file\s+16\s+[\d.]+\s+[\d.]+/);
    expect(out.stdout).toMatch(/ratio tidemark\/nbdcopy: [\d.]+.*identical \(cmp\)/);
  });

  it.skipIf(!TOOLS.fioNbd || !CERTTOOL)("bench: the TLS cost targets run (NBD over X.509 through fio, links with and without TLS) and print a TLS cost line", async () => {
    const out = await bench("bench/run.ts", ["--seconds", "2", "--only", "1x1-tls-off,1x1-tls-on", "--jobs", "seqwrite", "--volume-mib", "64"]);
    expect(out.code, out.stderr).toBe(0);
    for (const target of ["tidemark 1x1 tls off", "tidemark 1x1 tls on"]) {
      const row = out.stdout.split("\n").find((l) => l.startsWith(target) && /\sseqwrite\s/.test(l));
      expect(row, out.stdout).toBeDefined();
      expect(Number(row!.slice(target.length).trim().split(/\s+/)[1])).toBeGreaterThan(0);
    }
    expect(out.stdout).toMatch(/TLS cost, tidemark 1x1 seqwrite: \d+ IOPS with TLS, \d+ without/);
  });

  it.skipIf(!TOOLS.fioNbd || !TOOLS.nbdcopy)("bench: bench:verify on 16 MiB runs every row, finds no mismatch and the images identical", async () => {
    const out = await bench("bench/verify.ts", ["--mib", "16", "--seconds", "2"]);
    expect(out.code, out.stderr + out.stdout).toBe(0);
    for (const row of ["idle, verify unlimited", "randwrite + verify unlimited", "randwrite-half + verify at 64 MiB/s"]) {
      expect(out.stdout, row).toMatch(new RegExp(`^${row.replace(/[+]/g, "\\+")}\\s+.*\\s0$`, "m"));
    }
    expect(out.stdout).toMatch(/images after the last quiesce: identical \(cmp\); mismatched blocks over all passes: 0/);
  });
});

// The benchmark must keep working as the code changes: a few seconds of it,
// no targets asserted (figures on a shared 2-core machine mean nothing here;
// npm run bench is where they are measured).
import { describe, expect, it } from "vitest";
import { execFile } from "node:child_process";
import path from "node:path";
import { ROOT } from "../support/cluster.ts";
import { nbdTools } from "../support/tools.ts";

const TOOLS = nbdTools("bench smoke");

describe("bench: smoke", () => {
  it.skipIf(!TOOLS.fioNbd)("bench: a 2 s 1x1 random-write job runs end to end and prints its row", async () => {
    const out = await new Promise<{ code: number; stdout: string; stderr: string }>((resolve) => {
      execFile(
        process.execPath,
        ["--import", "tsx", path.join(ROOT, "bench/run.ts"), "--seconds", "2", "--only", "1x1", "--jobs", "randwrite", "--volume-mib", "64"],
        { cwd: ROOT, timeout: 120_000, maxBuffer: 16 << 20 },
        (err, stdout, stderr) => resolve({ code: err ? ((err as { code?: number }).code ?? 1) : 0, stdout, stderr }),
      );
    });
    expect(out.code, out.stderr).toBe(0);
    const row = out.stdout.split("\n").find((l) => /^tidemark 1x1\s+randwrite/.test(l));
    expect(row, out.stdout).toBeDefined();
    const iops = Number(row!.trim().split(/\s+/)[3]);
    expect(iops).toBeGreaterThan(0);
    expect(out.stdout, "the half-rate job reports its lag").toMatch(/tidemark 1x1 at half rate \(\d+ IOPS\): lag p99 \d+ ms/);
  });

  it.skipIf(!TOOLS.nbdcopy)("bench: bench:resync on 16 MiB runs end to end, prints both rates and finds the images identical", async () => {
    const out = await new Promise<{ code: number; stdout: string; stderr: string }>((resolve) => {
      execFile(process.execPath, ["--import", "tsx", path.join(ROOT, "bench/resync.ts"), "--mib", "16"], { cwd: ROOT, timeout: 120_000, maxBuffer: 16 << 20 }, (err, stdout, stderr) =>
        resolve({ code: err ? ((err as { code?: number }).code ?? 1) : 0, stdout, stderr }),
      );
    });
    expect(out.code, out.stderr).toBe(0);
    expect(out.stdout).toMatch(/tidemark resync \(\+ quiesce\)\s+16\s+[\d.]+\s+[\d.]+/);
    expect(out.stdout).toMatch(/nbdcopy file -> file\s+16\s+[\d.]+\s+[\d.]+/);
    expect(out.stdout).toMatch(/ratio tidemark\/nbdcopy: [\d.]+.*identical \(cmp\)/);
  });
});

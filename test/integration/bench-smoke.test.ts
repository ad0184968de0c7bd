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
  });
});

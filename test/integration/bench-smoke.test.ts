// The benchmark must keep working as the code changes: a few seconds of it,
// no targets asserted (figures on a shared 2-core machine mean nothing here;
// npm run bench is where they are measured).
import { describe, expect, it } from "vitest";
import { execFile, spawn, spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, truncateSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { ROOT, freePort } from "../support/cluster.ts";
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

  it.skipIf(!TOOLS.fioNbd || !TOOLS.qemuIo)("bench: the Node.js floor serves what it is written (its figures count only if it does a server's work), forwards each write to its sink, and its five targets run", async () => {
    // Its figures stand against tidemark's only if it does what a server does:
    // written bytes read back, and with --forward the sink holds the same image.
    const script = path.join(ROOT, "bench/node-floor.ts");
    for (const io of [[], ["--async-io"]]) {
      const dir = mkdtempSync(path.join(os.tmpdir(), "tidemark-node-floor-"));
      const procs: ReturnType<typeof spawn>[] = [];
      try {
        const [p, s] = [path.join(dir, "p.img"), path.join(dir, "s.img")];
        for (const f of [p, s]) {
          writeFileSync(f, "");
          truncateSync(f, 16 << 20);
        }
        const [port, sinkPort] = [await freePort(), await freePort()];
        const started = (args: string[]) =>
          new Promise<void>((resolve, reject) => {
            const c = spawn(process.execPath, ["--import", "tsx", script, ...io, "--journal", ...args], { stdio: ["ignore", "pipe", "inherit"] });
            procs.push(c);
            c.stdout!.once("data", () => resolve());
            c.once("exit", (code) => reject(new Error(`node-floor ${io.join(" ")} ${args.join(" ")} exited ${code}`)));
          });
        await started(["--sink", s, String(sinkPort)]);
        await started([p, String(port), "--forward", String(sinkPort)]);
        const uri = `nbd://127.0.0.1:${port}`;
        // A 1 MiB write arrives in many socket chunks; the odd offsets cross them.
        const io1 = spawnSync("qemu-io", ["-f", "raw", "-c", "write -P 0x5a 4096 1M", "-c", "write -P 0xc3 3145728 12288", "-c", "read -P 0x5a 4096 1M", "-c", "read -P 0xc3 3145728 12288", "-c", "read -P 0 0 4096", uri], { encoding: "utf8" });
        expect(io1.status, io1.stderr + io1.stdout).toBe(0);
        expect(io1.stdout + io1.stderr, `node-floor ${io.join(" ")}`).not.toMatch(/Pattern verification failed|error/i);
        // The sink answers once its rows are committed and writes its file after: wait until it is the server's.
        let same = false;
        for (let i = 0; i < 50 && !same; i++) {
          same = readFileSync(p).equals(readFileSync(s));
          if (!same) await new Promise((r) => setTimeout(r, 100));
        }
        expect(same, `node-floor ${io.join(" ")}: the sink's image equals the server's`).toBe(true);
      } finally {
        for (const c of procs) c.kill("SIGKILL");
        rmSync(dir, { recursive: true, force: true });
      }
    }
    const out = await bench("bench/run.ts", ["--seconds", "2", "--only", "node-floor,node-floor-async,node-floor-fwd,node-floor-jnl,node-floor-jnl-async", "--jobs", "randwrite", "--volume-mib", "64"]);
    expect(out.code, out.stderr + out.stdout).toBe(0);
    for (const target of ["node floor", "node floor async", "node floor fwd", "node floor jnl", "node floor jnl async"]) {
      const row = out.stdout.split("\n").find((l) => new RegExp(`^${target}\\s+randwrite\\s`).test(l));
      expect(row, out.stdout).toBeDefined();
      expect(Number(row!.slice(target.length).trim().split(/\s+/)[1]), `${target} IOPS`).toBeGreaterThan(0);
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

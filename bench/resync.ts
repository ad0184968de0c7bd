// `npm run bench:resync`: the resync's copy rate against nbdcopy's, in one
// run on one disk. A 1-primary/1-secondary group with an RCM is suspended,
// N MiB of random data are written to the primary volume over NBD (so N MiB
// are dirty in its bitmap), and `tidemark resync` plus `tidemark quiesce`
// bring the secondary back in step (copies read, stamped, journaled, sent,
// queued durably, applied, fdatasynced). Against it: `nbdcopy --flush` of the
// same N MiB between two plain files on the same disk. Prints both rates and
// the ratio; the images are compared with cmp at the end.
import { spawnSync } from "node:child_process";
import { readFileSync, writeFileSync, openSync, closeSync, ftruncateSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { volumePath } from "../config/load.ts";
import { startPair } from "./pair.ts";
import { runTimed as run, stopAll, tidemarkTimed as tidemark } from "./processes.ts";

interface Options {
  mib: number;
  dir: string;
  keep: boolean;
  json: string | null;
}

function parseArgs(argv: string[]): Options {
  const o: Options = { mib: 1024, dir: os.tmpdir(), keep: false, json: null };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const next = () => {
      const v = argv[++i];
      if (v === undefined) fail(`${a} needs a value`);
      return v;
    };
    if (a === "--mib") o.mib = Number(next());
    else if (a === "--quick") o.mib = 256;
    else if (a === "--dir") o.dir = next();
    else if (a === "--keep") o.keep = true;
    else if (a === "--json") o.json = next();
    else if (a === "--help" || a === "-h") {
      process.stdout.write("npm run bench:resync -- [--mib N (dirty MiB, default 1024)] [--quick (256 MiB)] [--dir DIR] [--keep] [--json FILE]\n");
      process.exit(0);
    } else fail(`unknown argument '${a}' (try --help)`);
  }
  if (!Number.isInteger(o.mib) || o.mib <= 0) fail(`--mib must be a positive integer, not '${o.mib}'`);
  return o;
}

function fail(msg: string): never {
  process.stderr.write(`bench:resync: ${msg}\n`);
  process.exit(2);
}

async function main(): Promise<void> {
  const o = parseArgs(process.argv.slice(2));
  for (const [tool, pkg] of [
    ["nbdcopy", "libnbd-bin"],
    ["cmp", "diffutils"],
  ]) {
    if (spawnSync("sh", ["-c", `command -v ${tool}`]).status !== 0) {
      process.stderr.write(`bench:resync: ${tool} is missing (Debian: apt-get install ${pkg})\n`);
      process.exit(3);
    }
  }
  const { dir, file, topo, source: src, uri } = await startPair(o, "resync");
  tidemark(["suspend", "--config", file, "--group", "C1", "--json"], "suspend");
  run("nbdcopy", [src, uri], "nbdcopy into the suspended primary");

  const rs = tidemark(["resync", "--config", file, "--group", "C1", "--json"], "tidemark resync");
  const q = tidemark(["quiesce", "--config", file, "--group", "C1", "--json"], "quiesce after the resync");
  const resyncMs = rs.ms + q.ms;
  const report = JSON.parse(rs.stdout) as { start: { primaries: { remainingBlocks: number }[] } };
  const copiedMiB = (report.start.primaries.reduce((n, p) => n + p.remainingBlocks, 0) * 4096) / (1 << 20);
  // The copy inside the subsystems, without the commands' start-up: from the
  // primary's "resync begins" to the secondary's barrier passed.
  const at = (log: string, msg: string) => {
    const lines = readFileSync(path.join(dir, log), "utf8").split("\n").filter((l) => l.includes(msg));
    return lines.length > 0 ? (JSON.parse(lines[lines.length - 1]) as { time: number }).time : NaN;
  };
  const copyMs = at("ss2.log", "resync complete: the barrier is passed") - at("ss1.log", "resync begins: copying the bitmap");
  const same = spawnSync("cmp", [volumePath(topo, topo.volumes.get("p1a")!), volumePath(topo, topo.volumes.get("s2a")!)], { encoding: "utf8" });

  // nbdcopy between two plain files on the same disk, flushed like the resync's fdatasync.
  const dst = path.join(dir, "destination.img");
  const dfd = openSync(dst, "w");
  ftruncateSync(dfd, o.mib << 20);
  closeSync(dfd);
  const nc = run("nbdcopy", ["--flush", src, dst], "nbdcopy between two files");

  const rate = (ms: number) => o.mib / (ms / 1000);
  const rows = [
    ["copy", "dirty MiB", "seconds", "MiB/s"],
    ["tidemark resync (+ quiesce)", String(o.mib), (resyncMs / 1000).toFixed(2), rate(resyncMs).toFixed(1)],
    ["  of which the copy (begin -> barrier)", String(o.mib), (copyMs / 1000).toFixed(2), rate(copyMs).toFixed(1)],
    ["nbdcopy file -> file", String(o.mib), (nc.ms / 1000).toFixed(2), rate(nc.ms).toFixed(1)],
  ];
  const widths = rows[0].map((_, i) => Math.max(...rows.map((r) => r[i].length)));
  process.stdout.write(`tidemark bench:resync, ${o.mib} MiB dirty, ${os.cpus().length} CPUs, ${new Date().toISOString()}\n`);
  process.stdout.write(rows.map((r) => r.map((c, i) => c.padEnd(widths[i])).join("  ")).join("\n") + "\n");
  process.stdout.write(`ratio tidemark/nbdcopy: ${(rate(resyncMs) / rate(nc.ms)).toFixed(2)} (copy phase alone: ${(rate(copyMs) / rate(nc.ms)).toFixed(2)}); the resync copied ${copiedMiB.toFixed(0)} MiB (bitmap blocks); images after quiesce: ${same.status === 0 ? "identical (cmp)" : `DIFFER: ${same.stdout.trim()}`}\n`);
  if (o.json) {
    writeFileSync(o.json, JSON.stringify({ mib: o.mib, resyncMs, copyMs, resyncCommandMs: rs.ms, quiesceMs: q.ms, nbdcopyMs: nc.ms, copiedMiB, identical: same.status === 0 }, null, 2));
  }
  stopAll();
  if (same.status !== 0) process.exit(1);
}

main().catch((err: Error) => {
  process.stderr.write(`bench:resync: ${err.message}\n`);
  process.exit(1);
});

// `npm run bench:verify`: what the online verify costs and how fast it goes
// (issue 14), in one run on one disk. A 1-primary/1-secondary group with an
// RCM; the primary volume is filled with random data over NBD and
// replicated. Then:
//   - verify on an idle group, unlimited and at the default rate limit;
//   - fio 4 KiB randwrite (iodepth 32) alone, then with verify passes run
//     back to back for the whole job;
//   - the same at half the IOPS the first job reached (fio --rate_iops),
//     alone, with verify at the default rate and with verify unlimited.
// Prints, per row: host IOPS and p99, the IOPS lost against the same job
// without verify, the verify passes that ran inside the job and their rate,
// and the mismatches (there must be none: the bench exits 1 otherwise, and
// when the images differ under cmp at the end).
import { spawn, spawnSync } from "node:child_process";
import { writeFileSync } from "node:fs";
import os from "node:os";
import { volumePath } from "../config/load.ts";
import { VERIFY_RATE_MIBPS_DEFAULT } from "../config/schema.ts";
import { runFio, type FioResult } from "./fio.ts";
import { startPair } from "./pair.ts";
import { BIN, runTimed, stopAll, tidemarkTimed, track } from "./processes.ts";

/** The verify's own ceiling (config/schema.ts): "unlimited" in the rows below. */
const UNLIMITED_MIBPS = 100_000;

interface Options {
  mib: number;
  seconds: number;
  dir: string;
  keep: boolean;
  json: string | null;
}

function fail(msg: string): never {
  process.stderr.write(`bench:verify: ${msg}\n`);
  process.exit(2);
}

function parseArgs(argv: string[]): Options {
  const o: Options = { mib: 1024, seconds: 60, dir: os.tmpdir(), keep: false, json: null };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const next = () => {
      const v = argv[++i];
      if (v === undefined) fail(`${a} needs a value`);
      return v;
    };
    const whole = (v: string) => {
      const n = Number(v);
      if (!Number.isInteger(n) || n < 1) fail(`${a} needs a whole number above 0, got '${v}'`);
      return n;
    };
    if (a === "--mib") o.mib = whole(next());
    else if (a === "--seconds") o.seconds = whole(next());
    else if (a === "--quick") {
      o.mib = 256;
      o.seconds = 20;
    } else if (a === "--dir") o.dir = next();
    else if (a === "--keep") o.keep = true;
    else if (a === "--json") o.json = next();
    else {
      process.stdout.write("npm run bench:verify -- [--mib N (volume, default 1024)] [--seconds S (each fio job, default 60)] [--quick (256 MiB, 20 s)] [--dir DIR] [--keep] [--json FILE]\n");
      process.exit(a === "--help" ? 0 : 2);
    }
  }
  return o;
}

interface Pass {
  ms: number;
  mismatched: number;
  /** Ended after the fio job it ran beside: partly on an idle group. */
  outlived: boolean;
}

/** One `tidemark verify --json` to its end. */
function verifyOnce(config: string, rateMiBps: number): Promise<{ ms: number; mismatched: number }> {
  return new Promise((resolve, reject) => {
    const p = track(spawn(process.execPath, [BIN, "verify", "--config", config, "--group", "C1", "--rate-mib-ps", String(rateMiBps), "--json"], { stdio: ["ignore", "pipe", "pipe"] }));
    let out = "";
    let err = "";
    p.stdout!.on("data", (d) => (out += d));
    p.stderr!.on("data", (d) => (err += d));
    p.once("exit", (code) => {
      const line = out.trim().split("\n").pop() ?? "";
      try {
        const r = JSON.parse(line) as { final: { mismatchedBlocks: number }; elapsedMs: number };
        resolve({ ms: r.elapsedMs, mismatched: r.final.mismatchedBlocks });
      } catch {
        reject(new Error(`tidemark verify exited ${code} without its JSON result: ${err.trim() || out.trim()}`));
      }
    });
  });
}

/** Verify passes back to back until `job` ends (the pass under way then is finished and marked). */
async function verifyBeside(config: string, rateMiBps: number, job: Promise<unknown>): Promise<Pass[]> {
  let ended = false;
  void job.finally(() => (ended = true)).catch(() => undefined);
  const passes: Pass[] = [];
  while (!ended) {
    const r = await verifyOnce(config, rateMiBps);
    passes.push({ ...r, outlived: ended });
  }
  return passes;
}

interface Row {
  what: string;
  fio: FioResult | null;
  passes: Pass[];
}

async function main(): Promise<void> {
  const o = parseArgs(process.argv.slice(2));
  for (const [tool, args, pkg] of [
    ["fio", ["--enghelp"], "fio (with the nbd ioengine)"],
    ["nbdcopy", ["--version"], "libnbd-bin"],
    ["cmp", ["--version"], "diffutils"],
  ] as const) {
    const r = spawnSync(tool, [...args], { encoding: "utf8" });
    if (r.status !== 0 || (tool === "fio" && !/\bnbd\b/.test(r.stdout))) {
      process.stderr.write(`bench:verify: ${tool} is missing (Debian: apt-get install ${pkg})\n`);
      process.exit(3);
    }
  }
  // Every block holds data, so every hash covers real bytes on both sides.
  const { dir, file, topo, source: src, uri } = await startPair(o, "verify");
  runTimed("nbdcopy", [src, uri], "nbdcopy into the primary");
  tidemarkTimed(["quiesce", "--config", file, "--group", "C1"], "quiesce after the fill");

  const rows: Row[] = [];
  const say = (s: string) => process.stdout.write(s);
  for (const rate of [UNLIMITED_MIBPS, VERIFY_RATE_MIBPS_DEFAULT]) {
    say(`bench:verify: idle group, verify ${label(rate)} ... `);
    const r = await verifyOnce(file, rate);
    rows.push({ what: `idle, verify ${label(rate)}`, fio: null, passes: [{ ...r, outlived: false }] });
    say(`${(o.mib / (r.ms / 1000)).toFixed(1)} MiB/s\n`);
  }
  const fioArgs = (rateIops?: number) => [
    "--name=bench-verify",
    "--ioengine=nbd",
    `--uri=${uri}`,
    "--rw=randwrite",
    "--bs=4k",
    "--iodepth=32",
    `--size=${o.mib}M`,
    "--randrepeat=0",
    "--norandommap",
    ...(rateIops ? [`--rate_iops=${rateIops}`] : []),
  ];
  const job = async (what: string, rateIops: number | undefined, verifyRate: number | null): Promise<Row> => {
    say(`bench:verify: ${what} (${o.seconds} s) ... `);
    const fio = runFio(fioArgs(rateIops), o.seconds, dir, process.env, track);
    const passes = verifyRate === null ? [] : await verifyBeside(file, verifyRate, fio);
    const row = { what, fio: await fio, passes };
    say(`${row.fio.iops.toFixed(0)} IOPS${passes.length ? `, ${passes.length} verify passes` : ""}\n`);
    tidemarkTimed(["quiesce", "--config", file, "--group", "C1"], `quiesce after ${what}`);
    return row;
  };
  const full = await job("randwrite, no verify", undefined, null);
  rows.push(full);
  rows.push(await job(`randwrite + verify ${label(UNLIMITED_MIBPS)}`, undefined, UNLIMITED_MIBPS));
  const half = Math.max(1, Math.round(full.fio!.iops / 2));
  rows.push(await job("randwrite-half, no verify", half, null));
  rows.push(await job(`randwrite-half + verify ${label(VERIFY_RATE_MIBPS_DEFAULT)}`, half, VERIFY_RATE_MIBPS_DEFAULT));
  rows.push(await job(`randwrite-half + verify ${label(UNLIMITED_MIBPS)}`, half, UNLIMITED_MIBPS));

  const same = spawnSync("cmp", [volumePath(topo, topo.volumes.get("p1a")!), volumePath(topo, topo.volumes.get("s2a")!)], { encoding: "utf8" });
  const mismatched = rows.reduce((n, r) => n + r.passes.reduce((m, p) => m + p.mismatched, 0), 0);
  say(report(rows, o, half) + `images after the last quiesce: ${same.status === 0 ? "identical (cmp)" : `DIFFER: ${same.stdout.trim()}`}; mismatched blocks over all passes: ${mismatched}\n`);
  if (o.json) writeFileSync(o.json, JSON.stringify({ options: o, halfIops: half, rows, identical: same.status === 0, mismatched }, null, 2));
  stopAll();
  if (same.status !== 0 || mismatched > 0) process.exit(1);
}

function label(rate: number): string {
  return rate === UNLIMITED_MIBPS ? "unlimited" : `at ${rate} MiB/s`;
}

function report(rows: Row[], o: Options, half: number): string {
  const without = (r: Row) => rows.find((x) => x.passes.length === 0 && x.fio && x.what.startsWith(r.what.split(" ")[0] + ","));
  const body = rows.map((r) => {
    const inside = r.passes.filter((p) => !p.outlived);
    const counted = inside.length > 0 ? inside : r.passes;
    const ms = counted.reduce((n, p) => n + p.ms, 0);
    const base = r.fio && r.passes.length > 0 ? without(r)?.fio : null;
    return [
      r.what,
      r.fio ? r.fio.iops.toFixed(0) : "-",
      r.fio ? `${(r.fio.p99us / 1000).toFixed(1)}ms` : "-",
      base && r.fio ? `${(base.iops - r.fio.iops).toFixed(0)} (${((100 * (base.iops - r.fio.iops)) / base.iops).toFixed(1)}%)` : "-",
      r.passes.length === 0 ? "-" : `${inside.length}${r.passes.length > inside.length ? ` (+${r.passes.length - inside.length} outlived)` : ""}`,
      counted.length === 0 ? "-" : `${((counted.length * o.mib) / (ms / 1000)).toFixed(1)}${inside.length === 0 ? " *" : ""}`,
      r.passes.length === 0 ? "-" : String(r.passes.reduce((n, p) => n + p.mismatched, 0)),
    ];
  });
  const head = ["row", "host IOPS", "p99", "IOPS lost", "verify passes in job", "verify MiB/s", "mismatched"];
  const all = [head, ...body];
  const w = head.map((_, i) => Math.max(...all.map((r) => r[i].length)));
  return [
    `tidemark bench:verify, ${o.mib} MiB volume full of random data, ${o.seconds} s per fio job (4 KiB randwrite, iodepth 32; half rate = ${half} IOPS), ${os.cpus().length} CPUs, ${new Date().toISOString()}`,
    ...all.map((r) => r.map((c, i) => (i === 0 ? c.padEnd(w[i]) : c.padStart(w[i]))).join("  ")),
    "IOPS lost: against the same fio job without verify. verify MiB/s: volume MiB x passes / their time, over the passes that ended inside the fio job",
    "(* when none did: the one pass, partly on an idle group). Each pass is a whole `tidemark verify`: start, hashing on the primary, comparison on the secondary.",
    "",
  ].join("\n");
}

main().catch((err: Error) => {
  process.stderr.write(`bench:verify: ${err.message}\n`);
  process.exit(1);
});

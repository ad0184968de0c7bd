// What `maxClockOffsetMs` costs a host write (docs/deploy.md, "What the
// clock bound costs"). With clock "realtime", each acknowledgement waits
// until the primary's clock has passed the write's stamp + maxClockOffsetMs
// (the commit wait, appliance/primary/primary.ts commitWait). At queue depth
// 1 that wait is paid by every write in turn; at higher depths the waits of
// writes in flight overlap.
//
// Runs a 1 primary x 1 secondary cluster on loopback per setting (clock
// "monotonic", which has no commit wait, then "realtime" at each bound) and
// the same fio job against the primary volume (nbd ioengine, 4 KiB random
// writes), and prints per setting the completion latency (mean, p50, p99) and
// IOPS as fio reports them.
//
//   node --import tsx bench/commit-wait.ts [--seconds 20] [--offsets 1,10] [--iodepth 1]
//
// Not part of `npm test`. Every process and temp dir is removed at the end,
// on failure and on Ctrl-C (TestCluster.destroy).
import { spawnSync } from "node:child_process";
import { TestCluster, freePort } from "../test/support/cluster.ts";

interface Options {
  seconds: number;
  offsets: number[];
  iodepth: number;
}

function parseArgs(argv: string[]): Options {
  const o: Options = { seconds: 20, offsets: [1, 10], iodepth: 1 };
  for (let i = 0; i < argv.length; i++) {
    const v = argv[i + 1];
    if (argv[i] === "--seconds") o.seconds = Number(v);
    else if (argv[i] === "--offsets") o.offsets = v.split(",").map(Number);
    else if (argv[i] === "--iodepth") o.iodepth = Number(v);
    else {
      process.stderr.write("usage: node --import tsx bench/commit-wait.ts [--seconds N] [--offsets 1,10] [--iodepth N]\n");
      process.exit(2);
    }
    i++;
  }
  if (!(o.seconds > 0) || !(o.iodepth >= 1) || o.offsets.some((x) => !(x >= 1))) {
    process.stderr.write("--seconds and --iodepth must be positive, every offset at least 1 (ms)\n");
    process.exit(2);
  }
  return o;
}

interface Row {
  setting: string;
  iops: number;
  meanUs: number;
  p50Us: number;
  p99Us: number;
}

async function measure(setting: string, clock: Record<string, unknown>, o: Options): Promise<Row> {
  const config = {
    clusterKeyFile: "cluster.key",
    dataDir: "data",
    syncIntervalMs: 50,
    ...clock,
    subsystems: [
      { id: 1, host: "127.0.0.1", replicationPort: await freePort(), nbdPort: await freePort(), volumes: [{ name: "p", sizeMiB: 256 }] },
      { id: 2, host: "127.0.0.1", replicationPort: await freePort(), nbdPort: await freePort(), volumes: [{ name: "s", sizeMiB: 256 }] },
    ],
    groups: [{ name: "C1", pairs: [{ primary: "p", secondary: "s" }] }],
  };
  const c = TestCluster.create(config, "tidemark-commit-wait-");
  const stop = () => void c.destroy().then(() => process.exit(130));
  process.once("SIGINT", stop);
  try {
    await c.startAll();
    const args = [
      "--name=qd",
      "--ioengine=nbd",
      `--uri=${c.nbdUrl("p")}`,
      "--rw=randwrite",
      "--bs=4k",
      `--iodepth=${o.iodepth}`,
      "--time_based",
      `--runtime=${o.seconds}`,
      "--ramp_time=2",
      "--output-format=json",
    ];
    const r = spawnSync("fio", args, { encoding: "utf8", maxBuffer: 64 << 20 });
    if (r.status !== 0) throw new Error(`fio failed (${r.status}): ${r.stderr}`);
    const w = JSON.parse(r.stdout.slice(r.stdout.indexOf("{"))).jobs[0].write;
    const pct = w.clat_ns.percentile as Record<string, number>;
    return { setting, iops: w.iops, meanUs: w.clat_ns.mean / 1000, p50Us: pct["50.000000"] / 1000, p99Us: pct["99.000000"] / 1000 };
  } finally {
    process.removeListener("SIGINT", stop);
    await c.destroy();
  }
}

const o = parseArgs(process.argv.slice(2));
if (spawnSync("fio", ["--enghelp"], { encoding: "utf8" }).stdout?.split("\n").every((l) => l.trim() !== "nbd")) {
  process.stderr.write("fio with the nbd ioengine is needed (apt-get install fio)\n");
  process.exit(1);
}
const rows: Row[] = [await measure("monotonic (no commit wait)", { clock: "monotonic" }, o)];
for (const ms of o.offsets) rows.push(await measure(`realtime, maxClockOffsetMs ${ms}`, { clock: "realtime", maxClockOffsetMs: ms }, o));
process.stdout.write(`4 KiB random writes, iodepth ${o.iodepth}, ${o.seconds} s each (fio nbd ioengine, 1x1 cluster on loopback)\n`);
process.stdout.write(`${"setting".padEnd(34)} ${"IOPS".padStart(8)} ${"mean us".padStart(9)} ${"p50 us".padStart(9)} ${"p99 us".padStart(9)}\n`);
for (const r of rows) {
  process.stdout.write(`${r.setting.padEnd(34)} ${r.iops.toFixed(0).padStart(8)} ${r.meanUs.toFixed(0).padStart(9)} ${r.p50Us.toFixed(0).padStart(9)} ${r.p99Us.toFixed(0).padStart(9)}\n`);
}

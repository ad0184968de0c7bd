// The fuzzer of the NBD, replication and control ports against a real 1x1 cluster (docs/fuzzing.md).
//   npm run fuzz -- --inputs 1000000 [--from 1] [--concurrency 8] [--batch 1000] [--deadline-ms 15000]
//   npm run fuzz -- --replay SEED          runs input SEED alone, printing its bytes, then the checks
//   --slow-drip: meanwhile, a slow-drip client on each port of #2 (a handshake piece every 5 s, never
//   finished) must be closed by the port's handshake bound (NBD 30 s, replication 5 s) plus 10 s.
// Prints progress after each batch, each failure with its seeds, bytes (hex) and replay command,
// and exits 1 if any input failed or the final replication check did not hold.
import { describeInput } from "../test/fuzz/input.ts";
import { generateInput } from "../test/fuzz/generate.ts";
import { FuzzCluster, finalCheck, formatFailure, runSweep, type SweepOptions } from "../test/fuzz/sweep.ts";
import { slowDrip, type DripResult } from "../test/fuzz/slow-drip.ts";

/** The handshake bounds the drip must meet, plus the margin of a loaded machine. */
const DRIP_BOUND_MS = { nbd: 30_000 + 10_000, replication: 5000 + 10_000 };
const DRIP_INTERVAL_MS = 5000;

function parse(argv: string[]): SweepOptions & { replay: number | null; slowDrip: boolean } {
  const o = { from: 1, inputs: 10_000, concurrency: 8, batch: 1000, deadlineMs: 15_000, maxFailures: 20, replay: null as number | null, slowDrip: false, log: (l: string) => console.log(l) };
  const num = (i: number, min = 0) => {
    const v = Number(argv[i]);
    if (!Number.isInteger(v) || v < min) throw new Error(`${argv[i - 1]} needs a whole number of at least ${min}, got '${argv[i] ?? ""}'`);
    return v;
  };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === "--inputs") o.inputs = num(++i, 1);
    else if (a === "--from") o.from = num(++i);
    else if (a === "--concurrency") o.concurrency = num(++i, 1);
    else if (a === "--batch") o.batch = num(++i, 1);
    else if (a === "--deadline-ms") o.deadlineMs = num(++i, 100);
    else if (a === "--max-failures") o.maxFailures = num(++i, 1);
    else if (a === "--replay") o.replay = num(++i);
    else if (a === "--slow-drip") o.slowDrip = true;
    else throw new Error(`unknown option '${a}' (see the comment at the top of scripts/fuzz.ts)`);
  }
  return o;
}

async function main(): Promise<number> {
  const o = parse(process.argv.slice(2));
  if (o.replay !== null) {
    o.from = o.replay;
    o.inputs = 1;
    o.concurrency = 1;
    o.batch = 1;
  }
  const fc = await FuzzCluster.start();
  // Ctrl-C or a kill must not leave the cluster's subsystem processes behind.
  for (const sig of ["SIGINT", "SIGTERM"] as const) {
    process.once(sig, () => {
      console.log(`fuzz: ${sig}: stopping the cluster; its folder is kept: ${fc.cluster.dir}`);
      void fc.cluster.destroy(true).then(() => process.exit(130));
    });
  }
  let failed = true;
  try {
    if (o.replay !== null) console.log(describeInput(generateInput(o.replay, fc.topology), 1 << 20));
    const ss2 = fc.cluster.topo.config.subsystems[1];
    const drips: Promise<DripResult[]> = o.slowDrip
      ? Promise.all([
          slowDrip("nbd", { host: ss2.host, port: ss2.nbdPort }, DRIP_INTERVAL_MS, DRIP_BOUND_MS.nbd),
          slowDrip("replication", { host: ss2.host, port: ss2.replicationPort }, DRIP_INTERVAL_MS, DRIP_BOUND_MS.replication),
        ])
      : Promise.resolve([]);
    const report = await runSweep(fc, o);
    for (const d of await drips) {
      const line = `slow drip on the ${d.port} port of #2 (${d.bytesSent} bytes, a piece every ${DRIP_INTERVAL_MS} ms)`;
      if (d.closedAfterMs !== null) console.log(`fuzz: ${line}: closed by the server after ${d.closedAfterMs} ms`);
      else report.failures.push({ kind: "hang", seeds: [], detail: `${line}: still open after ${d.givenUpAfterMs} ms; the handshake bound is not a deadline` });
    }
    for (const f of report.failures) console.log(formatFailure(f, fc.topology));
    const final = report.failures.some((f) => f.kind === "crash") ? ["skipped: a process died"] : await finalCheck(fc, o.from);
    console.log(
      `fuzz: ${report.inputs} inputs in ${report.seconds.toFixed(1)} s (${report.perSecond.toFixed(1)}/s), ${(report.bytesSent / 1048576).toFixed(1)} MiB sent; ` +
        `closed by server ${report.outcomes.server} (${report.stalls} of them stalled in the handshake until its deadline), dropped by client ${report.outcomes.client}, hangs ${report.outcomes.hang}; ` +
        `nbd ${report.byPort.nbd ?? 0}, replication ${report.byPort.replication ?? 0}`,
    );
    for (const p of report.processes) {
      console.log(`fuzz: #${p.id} pid ${p.pid}: RSS ${p.rssStartMiB} → ${p.rssEndMiB} MiB (max after a batch ${p.rssMaxAfterBatchMiB}, peak ${p.hwmMiB}); fds ${p.fdsStart} → max ${p.fdsMaxAfterBatch} after a batch`);
    }
    console.log(final.length ? `fuzz: final check FAILED:\n  ${final.join("\n  ")}` : "fuzz: final check: a replicated write reached s1 after quiesce; every pair is cmp-identical");
    failed = report.failures.length > 0 || final.length > 0;
    if (failed) console.log(`fuzz: logs kept in ${fc.cluster.dir}`);
    return failed ? 1 : 0;
  } finally {
    await fc.cluster.destroy(failed || process.env.TIDEMARK_KEEP_TEST_DIRS === "1");
  }
}

main().then(
  (code) => process.exit(code),
  (err: Error) => {
    console.error(`fuzz: ${err.message}`);
    process.exit(2);
  },
);

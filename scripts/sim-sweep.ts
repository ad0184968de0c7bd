// Long sweeps of the seeded simulator (test/sim/vopr.ts), and replays of one seed.
//   node --import tsx scripts/sim-sweep.ts --seeds 100000 [--from N]
//   node --import tsx scripts/sim-sweep.ts --seed 1234 --verbose
// Options that select the simulation: --clock monotonic|realtime, and the
// negative controls --floor-lead-ns N (a stamp floor ahead of the clock), --bare-clock-sync,
// --no-fence, --no-commit-wait, --outcome-checks-only; --power-cuts models power
// cuts, with its negative controls --no-activity-log and --normal-queue-commit
// (they imply --power-cuts). Prints progress, every
// failing seed with its replay command, and exits 1 if any seed failed.
import { replayCommand, simulate, type SimOptions } from "../test/sim/vopr.ts";

function parse(argv: string[]) {
  const o: Omit<SimOptions, "seed"> = {};
  let seeds = 100_000;
  let from = 1;
  let single: number | null = null;
  let verbose = false;
  let maxFailures = 20;
  const num = (i: number) => {
    const v = Number(argv[i]);
    if (!Number.isInteger(v) || v < 0) throw new Error(`${argv[i - 1]} needs a whole number, got '${argv[i]}'`);
    return v;
  };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === "--seeds") seeds = num(++i);
    else if (a === "--from") from = num(++i);
    else if (a === "--seed") single = num(++i);
    else if (a === "--max-failures") maxFailures = num(++i);
    else if (a === "--verbose") verbose = true;
    else if (a === "--clock") {
      const c = argv[++i];
      if (c !== "monotonic" && c !== "realtime") throw new Error(`--clock is monotonic or realtime, got '${c}'`);
      o.clock = c;
    } else if (a === "--floor-lead-ns") o.floorLeadNs = BigInt(num(++i));
    else if (a === "--bare-clock-sync") o.bareClockSync = true;
    else if (a === "--no-fence") o.noFence = true;
    else if (a === "--no-commit-wait") o.noCommitWait = true;
    else if (a === "--outcome-checks-only") o.outcomeChecksOnly = true;
    else if (a === "--power-cuts") o.powerCuts = true;
    else if (a === "--no-activity-log") o.noActivityLog = true;
    else if (a === "--normal-queue-commit") o.normalQueueCommit = true;
    else if (a === "--no-power-cut-fixes") o.noPowerCutFixes = true;
    else throw new Error(`unknown option '${a}' (see the comment at the top of scripts/sim-sweep.ts)`);
  }
  return { o, seeds, from, single, verbose, maxFailures };
}

function main(): number {
  let args;
  try {
    args = parse(process.argv.slice(2));
  } catch (err) {
    console.error(`sim-sweep: ${(err as Error).message}`);
    return 2;
  }
  const { o, seeds, from, single, verbose, maxFailures } = args;
  if (o.noActivityLog || o.normalQueueCommit || o.noPowerCutFixes) o.powerCuts = true;

  if (single !== null) {
    const r = simulate({ ...o, seed: single, log: verbose ? (l) => console.log(l) : undefined });
    const { failure, ...rest } = r;
    console.log(JSON.stringify(rest, (_k, v) => (typeof v === "bigint" ? v.toString() : v)));
    if (!r.ok) console.log(`seed ${single} FAILED: ${failure}`);
    return r.ok ? 0 : 1;
  }

  const started = Date.now();
  let lastReport = started;
  let failures = 0;
  let done = 0;
  for (let seed = from; seed < from + seeds; seed++) {
    const r = simulate({ ...o, seed });
    done++;
    if (!r.ok) {
      failures++;
      console.log(`seed ${seed} FAILED: ${r.failure}\n  replay: ${replayCommand(seed, o)}`);
      if (failures >= maxFailures) {
        console.log(`stopping after ${failures} failures (--max-failures)`);
        break;
      }
    }
    const now = Date.now();
    if (now - lastReport >= 5000) {
      lastReport = now;
      const rate = done / ((now - started) / 1000);
      console.log(`${done}/${seeds} seeds (up to ${seed}), ${failures} failed, ${rate.toFixed(0)} seeds/s, ~${Math.ceil((seeds - done) / rate)} s left`);
    }
  }
  const secs = (Date.now() - started) / 1000;
  console.log(`sim-sweep: ${done} seeds from ${from}, ${failures} failed, ${(done / secs).toFixed(0)} seeds/s, ${secs.toFixed(1)} s`);
  return failures > 0 ? 1 : 0;
}

process.exitCode = main();

// Long sweeps of the seeded simulator (test/sim/vopr.ts), and replays of one seed.
//   node --import tsx scripts/sim-sweep.ts --seeds 100000 [--from N]
//   node --import tsx scripts/sim-sweep.ts --seed 1234 --verbose
// Options that select the simulation: --clock monotonic|realtime, and the
// negative controls --floor-lead-ns N (a stamp floor ahead of the clock), --bare-clock-sync,
// --no-fence, --no-commit-wait, --outcome-checks-only; --power-cuts models power
// cuts, with its negative controls --no-activity-log and --normal-queue-commit
// (they imply --power-cuts). --resync adds resyncs and their interruption
// (--interrupt-at before|begin|copying|copied|apply|after|none forces the step),
// with the negative controls --no-barrier, --clear-bit-before-journal,
// --copy-outside-lock, --copied-waits-for-last-seq and --restart-lifts-112
// (they imply --resync).
// Prints progress, every failing seed with its replay command, and exits 1 if
// any seed failed.
import { INTERRUPT_PHASES, replayCommand, simulate, type InterruptPhase, type SimOptions } from "../test/sim/vopr.ts";

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
    else if (a === "--resync") o.resync = true;
    else if (a === "--interrupt-at") {
      const p = argv[++i] as InterruptPhase;
      if (!INTERRUPT_PHASES.includes(p)) throw new Error(`--interrupt-at is one of ${INTERRUPT_PHASES.join(", ")}, got '${p}'`);
      o.interruptAt = p;
    } else if (a === "--no-barrier") o.noBarrier = true;
    else if (a === "--clear-bit-before-journal") o.clearBitBeforeJournal = true;
    else if (a === "--copy-outside-lock") o.copyOutsideLock = true;
    else if (a === "--copied-waits-for-last-seq") o.copiedWaitsForLastSeq = true;
    else if (a === "--restart-lifts-112") o.restartLifts112 = true;
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
  if (o.interruptAt || o.noBarrier || o.clearBitBeforeJournal || o.copyOutsideLock || o.copiedWaitsForLastSeq || o.restartLifts112) o.resync = true;

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
  let copies = 0;
  let resyncs = 0;
  let powerCuts = 0;
  /** Resync histories: how many seeds the second procedure interrupted at each step, and where it cut. */
  const interrupts = new Map<string, number>();
  for (let seed = from; seed < from + seeds; seed++) {
    const r = simulate({ ...o, seed });
    done++;
    copies += r.copies;
    resyncs += r.resyncsCompleted;
    powerCuts += r.powerCuts;
    if (o.resync) {
      const key = r.interrupt ? `${r.interrupt.mode} at ${r.interrupt.phase} -> ${r.interrupt.cut === "floor" ? "T_old" : "Ts"}` : "none";
      interrupts.set(key, (interrupts.get(key) ?? 0) + 1);
    }
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
  if (o.powerCuts) console.log(`power cuts: ${powerCuts}`);
  if (o.resync) {
    console.log(`resyncs completed: ${resyncs}, copies: ${copies}; interruptions (procedure at step -> cut):`);
    for (const [k, n] of [...interrupts].sort()) console.log(`  ${k}: ${n}`);
  }
  console.log(`sim-sweep: ${done} seeds from ${from}, ${failures} failed, ${(done / secs).toFixed(0)} seeds/s, ${secs.toFixed(1)} s`);
  return failures > 0 ? 1 : 0;
}

process.exitCode = main();

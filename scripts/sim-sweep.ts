// Sweeps of the seeded simulation of the product's engines (test/sim/engine/), and replays of one seed.
//   node --import tsx scripts/sim-sweep.ts --seeds 10000 [--from N] [--power-cuts] [--clock realtime]
//   node --import tsx scripts/sim-sweep.ts --seed 1234 --verbose
// --story takeover|resync|reverse|swap fixes what the RCM does (default: drawn by the seed among
// these); --story outage runs issue 16's site outage, --story storm issue 17's race 3 (never drawn: asked for only);
// --copy-journal-kib N fixes where the copier starts to wait for the journal to drain;
// --segment-kib N the payload segments' size (drawn in histories with power cuts).
// --wide adds issue 17's scope: a second RCM overlapping the story's procedures,
// and the RCM killed at a drawn control step; the sweep then sums up where.
// Negative controls (each must make some seed fail): --copy-hole-outside-lock,
// --ack-before-durable, --per-process-epoch (issue 11's bugs), --bare-clock-sync,
// --no-fence, --no-activity-log (with --power-cuts), --copied-waits-for-last-seq,
// --restart-lifts-112 (docs/simulation.md), --turn-rebuilds-subsystem, --refusal-fences-frozen,
// --copier-outlives-generation (issue 17's races 1-3; with --wide), --restart-acks-unsynced-segments
// (finding 13; with --power-cuts), --unreplicated-during-suspension (finding 17; with --wide),
// --segments-go-before-durable (finding 18; with --power-cuts), --swap-turns-thawed-primaries
// (finding 19; with --wide --story swap), --thawed-freeze-hidden (finding 21; with --wide),
// --copies-not-replayed (finding 22; with --power-cuts), --suspension-thaws-taken-over-group
// (finding 24; with --wide --story swap), --swap-opens-before-cut-check (finding 25; with --wide),
// --swap-ignores-differing (finding 27, and a second line against finding 21's thawed primary),
// --commit-acks-before-loaded-durable (finding 29).
// Prints progress, each failing seed with its replay command, and exits 1 if any seed failed.
// At the end, or when stopped with Ctrl-C or SIGTERM, it sums up the seeds done (the range, the
// stories drawn, where the RCM was killed).
import { EXTRA_STORIES, STORIES, replayCommand, simulateEngines, type EngineSimOptions, type Story } from "../test/sim/engine/simulation.ts";

function parse(argv: string[]) {
  const o: Omit<EngineSimOptions, "seed"> = {};
  let seeds = 1000;
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
    else if (a === "--power-cuts") o.powerCuts = true;
    else if (a === "--wide") o.wide = true;
    else if (a === "--clock") {
      const c = argv[++i];
      if (c !== "monotonic" && c !== "realtime") throw new Error(`--clock is monotonic or realtime, got '${c}'`);
      o.clock = c;
    } else if (a === "--per-process-epoch") o.perProcessEpoch = true;
    else if (a === "--copy-journal-kib") o.copyJournalKiB = num(++i);
    else if (a === "--segment-kib") o.segmentKiB = num(++i);
    else if (a === "--story") {
      const st = argv[++i] as Story;
      const known: readonly Story[] = [...STORIES, ...EXTRA_STORIES];
      if (!known.includes(st)) throw new Error(`--story is one of ${known.join(", ")}, got '${st}'`);
      o.story = st;
    } else if (a === "--copy-hole-outside-lock") o.controls = { ...o.controls, copyHoleOutsideLock: true };
    else if (a === "--ack-before-durable") o.controls = { ...o.controls, ackBeforeDurable: true };
    else if (a === "--segments-go-before-durable") o.controls = { ...o.controls, segmentsGoBeforeDurable: true };
    else if (a === "--swap-turns-thawed-primaries") o.controls = { ...o.controls, swapTurnsThawedPrimaries: true };
    else if (a === "--suspension-thaws-taken-over-group") o.controls = { ...o.controls, suspensionThawsTakenOverGroup: true };
    else if (a === "--swap-opens-before-cut-check") o.controls = { ...o.controls, swapOpensBeforeCutCheck: true };
    else if (a === "--swap-ignores-differing") o.controls = { ...o.controls, swapIgnoresDiffering: true };
    else if (a === "--commit-acks-before-loaded-durable") o.controls = { ...o.controls, commitAcksBeforeLoadedDurable: true };
    else if (a === "--thawed-freeze-hidden") o.controls = { ...o.controls, thawedFreezeHidden: true };
    else if (a === "--copies-not-replayed") o.controls = { ...o.controls, copiesNotReplayed: true };
    else if (a === "--bare-clock-sync") o.controls = { ...o.controls, bareClockSync: true };
    else if (a === "--no-fence") o.controls = { ...o.controls, noFence: true };
    else if (a === "--no-activity-log") o.controls = { ...o.controls, noActivityLog: true };
    else if (a === "--copied-waits-for-last-seq") o.controls = { ...o.controls, copiedWaitsForLastSeq: true };
    else if (a === "--restart-lifts-112") o.controls = { ...o.controls, restartLifts112: true };
    else if (a === "--copier-outlives-generation") o.controls = { ...o.controls, copierOutlivesGeneration: true };
    else if (a === "--turn-rebuilds-subsystem") o.controls = { ...o.controls, turnRebuildsSubsystem: true };
    else if (a === "--refusal-fences-frozen") o.controls = { ...o.controls, refusalFencesFrozen: true };
    else if (a === "--restart-acks-unsynced-segments") o.controls = { ...o.controls, restartAcksUnsyncedSegments: true };
    else if (a === "--unreplicated-during-suspension") o.controls = { ...o.controls, unreplicatedDuringSuspension: true };
    else throw new Error(`unknown option '${a}' (see the comment at the top of scripts/sim-sweep.ts)`);
  }
  return { o, seeds, from, single, verbose, maxFailures };
}

async function main(): Promise<void> {
  const { o, seeds, from, single, verbose, maxFailures } = parse(process.argv.slice(2));
  if (single !== null) {
    const r = await simulateEngines({ ...o, seed: single, log: verbose ? (l) => console.log(l) : undefined });
    console.log(JSON.stringify({ ...r, failure: undefined }));
    if (!r.ok) console.log(`FAILED: ${r.failure}`);
    process.exit(r.ok ? 0 : 1);
  }
  const started = Date.now();
  let last = started;
  let failed = 0;
  let writes = 0;
  let events = 0;
  /** Wide scope: control ops the RCM was killed at, by procedure; the second RCM's outcomes. */
  const killedAt = new Map<string, Set<string>>();
  const overlaps = new Map<string, number>();
  const stories = new Map<string, number>();
  let done = 0;
  const summary = (end: string) => {
    const secs = (Date.now() - started) / 1000;
    console.log(`${done} seeds from ${from} (to ${from + done - 1}${end}): ${failed} failed; ${writes} host writes, ${events} events; ${secs.toFixed(0)} s (${(done / secs).toFixed(1)} seeds/s)`);
    console.log(`stories: ${[...stories].sort().map(([k, n]) => `${k} ${n}`).join(", ")}`);
    if (killedAt.size > 0) {
      console.log("RCM killed at these control steps (procedure: ops):");
      for (const [proc, ops] of [...killedAt].sort()) console.log(`  ${proc}: ${[...ops].sort().join(", ")}`);
    }
    if (overlaps.size > 0) console.log(`second RCM's procedures: ${[...overlaps].sort().map(([k, n]) => `${k} x${n}`).join("; ")}`);
  };
  // A sweep stopped by hand still says how far it got, and with what.
  for (const sig of ["SIGINT", "SIGTERM"] as const) {
    process.once(sig, () => {
      summary(`, stopped by ${sig}`);
      process.exit(failed > 0 ? 1 : 130);
    });
  }
  for (let seed = from; seed < from + seeds; seed++) {
    const r = await simulateEngines({ ...o, seed });
    done++;
    stories.set(r.story, (stories.get(r.story) ?? 0) + 1);
    writes += r.writes;
    events += r.events;
    for (const k of r.rcmKilledAt) {
      const [proc, op] = k.split(":");
      if (!killedAt.has(proc)) killedAt.set(proc, new Set());
      killedAt.get(proc)!.add(op);
    }
    for (const x of r.overlaps) overlaps.set(x, (overlaps.get(x) ?? 0) + 1);
    if (!r.ok) {
      failed++;
      console.log(`seed ${seed}: ${r.failure}\n  replay: ${replayCommand({ ...o, seed })}`);
      if (failed >= maxFailures) break;
    }
    if (Date.now() - last > 5000) {
      last = Date.now();
      console.log(`... ${seed - from + 1} seeds, ${failed} failed, ${((seed - from + 1) / ((last - started) / 1000)).toFixed(1)} seeds/s`);
    }
  }
  summary("");
  process.exit(failed > 0 ? 1 : 0);
}

void main();

// The `tidemark` command line. Every error a user can cause (a bad config, an
// unreachable subsystem, a wrong argument) ends with one clear line and a
// non-zero exit code, never a stack trace.
import { Command, InvalidArgumentError } from "commander";
import type { LoadedTopology } from "../../config/load.ts";
import type { SubsystemStatus } from "./status-view.ts";
import type { ClockOffsetReport } from "../rcm/clock-offsets.ts";
import type { ProcedureReport } from "../rcm/procedure.ts";
import type { ResyncStart } from "../rcm/resync.ts";
import type { FailbackReport } from "../rcm/failback.ts";
import type { ScheduleStatus } from "../rcm/verify-schedule.ts";
import { drillCommand } from "./drill.ts";

function positiveInt(what: string) {
  return (v: string) => {
    const n = Number(v);
    if (!Number.isInteger(n) || n <= 0) throw new InvalidArgumentError(`${what} must be a positive integer, not '${v}'`);
    return n;
  };
}

// Every command imports what it uses in its action, not at the top: `--help` and a wrong argument
// then load commander alone, and `status` neither the long-running processes' modules nor the
// procedures'. A start is mostly module loading (docs/benchmarks.md, CLI start).
/** What `suspend` and `takeover` use. */
const procedureModules = () => Promise.all([import("../../config/load.ts"), import("./rcm-client.ts"), import("./procedure-view.ts")]);
/** What `resync` and `swap` use before they follow the resync. */
const failbackModules = () => Promise.all([import("../../config/load.ts"), import("./rcm-client.ts"), import("../rcm/returning.ts")]);

const program = new Command();
program.name("tidemark").description("N:M asynchronous block replication with consistency groups, served over NBD").showHelpAfterError();

program
  .command("up")
  .description("run every subsystem of a config as child processes, in the foreground")
  .requiredOption("-c, --config <file>", "topology file")
  .action(async (o: { config: string }) => {
    const { up } = await import("./up.ts");
    const { loadConfig } = await import("../../config/load.ts");
    process.exitCode = await up(loadConfig(o.config), process.stdout, process.stderr);
  });

program
  .command("subsystem")
  .description("run one subsystem of a config")
  .requiredOption("-c, --config <file>", "topology file")
  .requiredOption("--id <n>", "subsystem id", positiveInt("--id"))
  .option("--log <file>", "write JSON logs to this file instead of stdout")
  .action(async (o: { config: string; id: number; log?: string }) => {
    const { subsystemMain } = await import("../subsystem/subsystem.ts");
    await subsystemMain(o.config, o.id, o.log);
  });

program
  .command("status")
  .description("pairs, time parameters, queues and lag of every group")
  .requiredOption("-c, --config <file>", "topology file")
  .option("--json", "print the status document (docs/status.md) as JSON")
  .action(async (o: { config: string; json?: boolean }) => {
    const [{ loadConfig }, { askAll }, { buildStatus, renderStatus }, { liveTopologyFrom }, { clockReader }, { askRcm }] = await Promise.all([
      import("../../config/load.ts"),
      import("./control-client.ts"),
      import("./status-view.ts"),
      import("./live-topology.ts"),
      import("../primary/clock-source.ts"),
      import("./rcm-client.ts"),
    ]);
    const topo = loadConfig(o.config);
    const answers = await askAll<SubsystemStatus>(
      topo,
      topo.config.subsystems.map((s) => s.id),
      { op: "status" },
    );
    const doc = buildStatus(liveTopologyFrom(topo, answers.values() as Iterable<{ ok: boolean; value?: SubsystemStatus }>, true), answers, clockReader(topo.config.clock)());
    // The RCM's verify schedules, when the config has any: a quick question, null when it does not answer.
    // And, with clock "realtime", the clocks as the RCM measures them. One question, null parts when it does not answer.
    const wantSchedules = topo.config.groups.some((g) => g.verify?.cron);
    const wantClocks = topo.config.clock === "realtime";
    if (topo.config.rcm && (wantSchedules || wantClocks)) {
      const rcm = await askRcm<{ schedules?: ScheduleStatus[]; clockOffsets?: ClockOffsetReport | null }>(topo, { op: "status" }, 3000).catch(() => null);
      if (wantSchedules) doc.schedules = rcm === null ? null : (rcm.schedules ?? []);
      if (wantClocks) doc.clockOffsets = rcm?.clockOffsets ?? null;
    }
    process.stdout.write(o.json ? JSON.stringify(doc, null, 2) + "\n" : renderStatus(doc) + "\n");
    if (doc.subsystems.some((s) => !s.reachable)) process.exitCode = 3;
  });

program
  .command("events")
  .description("follow every state change of every subsystem and the RCM, one line each, until Ctrl-C (docs/events.md)")
  .requiredOption("-c, --config <file>", "topology file")
  .option("--json", "one JSON object per line (docs/events.md)")
  .action(async (o: { config: string; json?: boolean }) => {
    const { EventsFollower } = await import("./events.ts");
    const { loadConfig } = await import("../../config/load.ts");
    const follower = new EventsFollower(loadConfig(o.config), {
      json: o.json === true,
      write: (line) => void process.stdout.write(line + "\n"),
      backlogBytes: () => process.stdout.writableLength,
    });
    process.once("SIGINT", () => follower.stop());
    process.once("SIGTERM", () => follower.stop());
    await follower.run();
  });

program
  .command("quiesce")
  .description("wait until every write acknowledged before the call is applied on every secondary of the group")
  .requiredOption("-c, --config <file>", "topology file")
  .requiredOption("-g, --group <name>", "consistency group")
  .option("--timeout-ms <ms>", "give up after this long", positiveInt("--timeout-ms"), 120_000)
  .option("--json", "print the result as JSON")
  .action(async (o: { config: string; group: string; timeoutMs: number; json?: boolean }) => {
    const [{ loadConfig }, { liveTopology }, { quiesce }] = await Promise.all([import("../../config/load.ts"), import("./live-topology.ts"), import("./quiesce.ts")]);
    const r = await quiesce(await liveTopology(loadConfig(o.config)), o.group, o.timeoutMs);
    process.stdout.write(o.json ? JSON.stringify(r) + "\n" : `group ${r.group} quiesced in ${r.elapsedMs} ms: every write acknowledged before the call is applied on every secondary\n`);
  });

program
  .command("rcm")
  .description("run the remote copy manager: suspension, takeover, automatic suspension on failure")
  .requiredOption("-c, --config <file>", "topology file")
  .option("--log <file>", "write JSON logs to this file instead of stdout")
  .action(async (o: { config: string; log?: string }) => {
    const { rcmMain } = await import("../rcm/main.ts");
    await rcmMain(o.config, o.log);
  });

program
  .command("suspend")
  .description("planned suspension: fence the group and bring every secondary to one synchronized time")
  .requiredOption("-c, --config <file>", "topology file")
  .requiredOption("-g, --group <name>", "consistency group")
  .option("--reason <text>", "recorded with the suspension", "planned suspension")
  .option("--json", "print the report as JSON")
  .action(async (o: { config: string; group: string; reason: string; json?: boolean }) => {
    const [{ loadConfig }, { askRcm }, { renderProcedure }] = await procedureModules();
    const r = await askRcm<ProcedureReport>(loadConfig(o.config), { op: "suspend", group: o.group, reason: o.reason, by: `admin (pid ${process.pid})` }, 45 * 60_000);
    process.stdout.write(o.json ? JSON.stringify(r, null, 2) + "\n" : renderProcedure(r) + "\n");
  });

program
  .command("takeover")
  .description("take over: bring every secondary to the synchronized time Ts and serve the secondary volumes read-write")
  .requiredOption("-c, --config <file>", "topology file")
  .requiredOption("-g, --group <name>", "consistency group")
  .option("--dry-run", "show the plan (Ts, what would be lost) without changing anything")
  .option("--json", "print the report as JSON")
  .action(async (o: { config: string; group: string; dryRun?: boolean; json?: boolean }) => {
    const [{ loadConfig }, { askRcm }, { renderProcedure }] = await procedureModules();
    const r = await askRcm<ProcedureReport>(loadConfig(o.config), { op: "takeover", group: o.group, dryRun: !!o.dryRun, by: `admin (pid ${process.pid})` }, 45 * 60_000);
    process.stdout.write(o.json ? JSON.stringify(r, null, 2) + "\n" : renderProcedure(r) + "\n");
  });

async function followResync(topo: LoadedTopology, group: string, r: ResyncStart, o: { wait: boolean; json?: boolean }, extra: Record<string, unknown>, started: number, print = true): Promise<void> {
  const [{ watchResync }, { liveTopology }, { progressView }, { renderResyncStart }] = await Promise.all([
    import("../rcm/resync.ts"),
    import("./live-topology.ts"),
    import("./progress-view.ts"),
    import("./procedure-view.ts"),
  ]);
  if (!print) {
    // Only followed (verify --repair --json): its own document is the caller's.
    if (!r.nothingToDo) await watchResync(await liveTopology(topo), group, r.generation, () => {});
    return;
  }
  if (r.nothingToDo) {
    process.stdout.write(o.json ? JSON.stringify({ ...extra, start: r }) + "\n" : `group ${group} replicates with nothing to copy; nothing was changed\n`);
    return;
  }
  if (!o.json) process.stdout.write(renderResyncStart(r) + "\n");
  if (!o.wait) {
    if (o.json) process.stdout.write(JSON.stringify({ ...extra, start: r }) + "\n");
    return;
  }
  const view = o.json ? null : progressView(process.stdout);
  try {
    const p = await watchResync(await liveTopology(topo), group, r.generation, (x) => view?.update(x));
    view?.stop();
    const elapsedMs = Date.now() - started;
    process.stdout.write(o.json ? JSON.stringify({ ...extra, start: r, final: p, elapsedMs }) + "\n" : `group ${group} is paired again at generation ${r.generation} after ${(elapsedMs / 1000).toFixed(1)} s\n`);
  } finally {
    view?.stop();
  }
}

program
  .command("resync")
  .description("copy the blocks that differ and pair the group again; the secondaries stay consistent throughout (docs/resync.md)")
  .requiredOption("-c, --config <file>", "topology file")
  .requiredOption("-g, --group <name>", "consistency group")
  .option("--reverse", "failback after a takeover: the secondaries (which hosts write now) become the source, the old primaries the target")
  .option("--no-wait", "start the resync and return; follow it with 'tidemark status'")
  .option("--json", "print the result as JSON")
  .action(async (o: { config: string; group: string; reverse?: boolean; wait: boolean; json?: boolean }) => {
    const [{ loadConfig }, { askRcm }, { describeReturning }] = await failbackModules();
    const topo = loadConfig(o.config);
    const started = Date.now();
    const by = `admin (pid ${process.pid})`;
    if (o.reverse) {
      const f = await askRcm<FailbackReport>(topo, { op: "resync", reverse: true, group: o.group, by }, 45 * 60_000);
      if (!o.json && f.returning) process.stdout.write(describeReturning(o.group, f.returning).join("\n") + "\n");
      if (!o.json) process.stdout.write(`group ${o.group} now replicates ${f.direction === "reverse" ? "from the config's secondaries to its primaries" : "from the config's primaries to its secondaries"} (direction ${f.direction}); the targets rest at Ts ${f.turnedAtTs}\n`);
      return followResync(topo, o.group, f.resync, o, { failback: { direction: f.direction, turnedAtTs: f.turnedAtTs, ...(f.returning ? { returning: f.returning } : {}) } }, started);
    }
    const r = await askRcm<ResyncStart>(topo, { op: "resync", group: o.group, by }, 45 * 60_000);
    return followResync(topo, o.group, r, o, {}, started);
  });

program
  .command("swap")
  .description("turn a paired group round with no acknowledged write lost: its secondaries become primary (docs/resync.md)")
  .requiredOption("-c, --config <file>", "topology file")
  .requiredOption("-g, --group <name>", "consistency group")
  .option("--timeout-ms <ms>", "how long the secondaries may take to apply what the frozen primaries acknowledged", positiveInt("--timeout-ms"), 120_000)
  .option("--no-wait", "return once the direction turned; follow the resync with 'tidemark status'")
  .option("--json", "print the result as JSON")
  .action(async (o: { config: string; group: string; timeoutMs: number; wait: boolean; json?: boolean }) => {
    const [{ loadConfig }, { askRcm }, { describeReturning }] = await failbackModules();
    const topo = loadConfig(o.config);
    const started = Date.now();
    const f = await askRcm<FailbackReport>(topo, { op: "swap", group: o.group, timeoutMs: o.timeoutMs, by: `admin (pid ${process.pid})` }, 45 * 60_000);
    if (!o.json) {
      if (f.returning) process.stdout.write(describeReturning(o.group, f.returning).join("\n") + "\n");
      process.stdout.write(
        `group ${o.group} swapped: direction ${f.swappedFrom ?? "?"} -> ${f.direction}; ${f.frozenAt ? `the old primaries were frozen at stamp ${f.frozenAt} and ` : ""}the new secondaries rest at Ts ${f.turnedAtTs}; hosts reconnect to the new primaries\n`,
      );
    }
    return followResync(topo, o.group, f.resync, o, { swap: { from: f.swappedFrom, direction: f.direction, turnedAtTs: f.turnedAtTs, frozenAt: f.frozenAt, ...(f.returning ? { returning: f.returning } : {}) } }, started);
  });

/** `--range OFF:LEN` in bytes (a K, M or G suffix multiplies by 1024s). */
function parseRange(v: string): { offset: number; length: number } {
  const m = /^(\d+)([kmg]?):(\d+)([kmg]?)$/i.exec(v.trim());
  const scale = (n: string, u: string) => Number(n) * 1024 ** ["", "k", "m", "g"].indexOf(u.toLowerCase());
  if (!m) throw new InvalidArgumentError(`TM_VERIFY_RANGE: --range must be OFF:LEN in bytes (K, M, G suffixes allowed), not '${v}'`);
  const r = { offset: scale(m[1], m[2]), length: scale(m[3], m[4]) };
  if (r.offset % 4096 !== 0 || r.length % 4096 !== 0 || r.length === 0) throw new InvalidArgumentError(`TM_VERIFY_RANGE: --range ${v} is not whole 4 KiB blocks`);
  return r;
}

function positiveNumber(what: string) {
  return (v: string) => {
    const n = Number(v);
    if (!Number.isFinite(n) || n <= 0) throw new InvalidArgumentError(`${what} must be a positive number, not '${v}'`);
    return n;
  };
}

program
  .command("verify")
  .description("compare every primary and secondary volume of the group at one stamp while hosts keep writing (docs/verify.md)")
  .requiredOption("-c, --config <file>", "topology file")
  .requiredOption("-g, --group <name>", "consistency group")
  .option("--volume <name>", "verify only this pair (its primary or secondary volume)")
  .option("--range <off:len>", "verify only this byte range (whole 4 KiB blocks)", parseRange)
  .option("--rate-mib-ps <n>", "hashing rate limit per primary volume (default: the group's verify.rateMiBps)", positiveNumber("--rate-mib-ps"))
  .option("--repair", "when blocks differ, run 'tidemark resync' at the end")
  .option("--no-wait", "start the verify and return; follow it with 'tidemark status'")
  .option("--json", "print the result as JSON")
  .action(async (o: { config: string; group: string; volume?: string; range?: { offset: number; length: number }; rateMiBps?: number; repair?: boolean; wait: boolean; json?: boolean }) => {
    const [{ loadConfig }, { liveTopology }, { askRcm }, { startVerify, watchVerify }, { renderVerifyResult, verifyView }, { VERIFY_RATE_MIBPS_DEFAULT }, { tmError }] = await Promise.all([
      import("../../config/load.ts"),
      import("./live-topology.ts"),
      import("./rcm-client.ts"),
      import("../rcm/verify.ts"),
      import("./verify-view.ts"),
      import("../../config/schema.ts"),
      import("../errors/codes.ts"),
    ]);
    const topo = await liveTopology(loadConfig(o.config));
    const started = Date.now();
    const cfg = topo.config.groups.find((g) => g.name === o.group)?.verify;
    const rateMiBps = o.rateMiBps ?? cfg?.rateMiBps ?? VERIFY_RATE_MIBPS_DEFAULT;
    const start = await startVerify(topo, o.group, { volume: o.volume, offset: o.range?.offset, length: o.range?.length, rateMiBps });
    if (!o.wait) {
      process.stdout.write(o.json ? JSON.stringify({ start }) + "\n" : `verify of ${o.group} started on ${start.runs.length} pairs at ${rateMiBps} MiB/s per volume; follow it with 'tidemark status'\n`);
      return;
    }
    const view = o.json ? null : verifyView(process.stdout);
    let final;
    try {
      final = await watchVerify(topo, start, (x) => view?.update(x));
    } finally {
      view?.stop();
    }
    const elapsedMs = Date.now() - started;
    if (!o.json) process.stdout.write(renderVerifyResult(final, elapsedMs) + "\n");
    let repaired: ResyncStart | null = null;
    if (final.mismatchedBlocks > 0 && o.repair) {
      repaired = await askRcm<ResyncStart>(topo, { op: "resync", group: o.group, by: `tidemark verify --repair (pid ${process.pid})` }, 45 * 60_000);
      if (!o.json) process.stdout.write(`repairing: ${final.mismatchedBlocks} mismatched blocks are in the secondaries' bitmaps; resync of ${o.group}\n`);
      await followResync(topo, o.group, repaired, { wait: true, json: false }, {}, Date.now(), !o.json);
    }
    if (o.json) process.stdout.write(JSON.stringify({ start, final, elapsedMs, ...(repaired ? { repaired } : {}) }) + "\n");
    if (final.mismatchedBlocks > 0 && !o.repair) {
      throw tmError("TM_VERIFY_MISMATCH", `verify of ${o.group}: ${final.mismatchedBlocks} blocks differ from the primary's; they are in the secondaries' bitmaps: run 'tidemark resync --config ${o.config} --group ${o.group}' (or verify --repair)`, { group: o.group });
    }
  });

program
  .command("keygen")
  .description("write a fresh cluster key file (mode 0600) for clusterKeyFile; copy it to every host of the cluster")
  .argument("<file>", "the key file to write")
  .option("--force", "replace the file if it exists")
  .action(async (file: string, o: { force?: boolean }) => {
    const { writeKeyFile } = await import("../../config/keys.ts");
    if (!writeKeyFile(file, o.force === true)) throw new Error(`keygen: ${file} exists; it is not replaced without --force (every process of the cluster must then get the new key)`);
    process.stdout.write(`wrote a fresh cluster key to ${file} (mode 0600): name it in the config's clusterKeyFile\n`);
  });

program.addCommand(drillCommand());

try {
  await program.parseAsync(process.argv);
} catch (err) {
  const e = err as Error & { code?: string };
  // By name, not instanceof: the catch must not load the config schema (zod) for every error.
  if (e.name === "ConfigError") {
    process.stderr.write(`tidemark: config error in ${e.message}\n`);
    process.exit(2);
  }
  process.stderr.write(`tidemark: ${e.message}\n`);
  process.exit(1);
}

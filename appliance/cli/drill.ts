// `tidemark drill`: the crash-recovery drill as a command (appliance/drill/drill.ts does the work).
// Exit 0 when every round passed, 1 on any violation (the report names the seed and the command
// that replays it), 2 when the drill cannot run here (bad config, --loop without loop devices,
// --hosts without network namespaces),
// 130 after Ctrl-C, once every process is killed and every loop device detached.
import { randomInt } from "node:crypto";
import { Command, InvalidArgumentError } from "commander";
import type { DrillOptions } from "../drill/drill.ts";
import { VOLUME_MIB_DEFAULT, VOLUME_MIB_MAX } from "../drill/defaults.ts";
import { hasCode } from "../errors/codes.ts";

function intIn(what: string, lo: number, hi: number) {
  return (v: string) => {
    const n = Number(v);
    if (!Number.isInteger(n) || n < lo || n > hi) throw new InvalidArgumentError(`${what} must be a whole number from ${lo} to ${hi}, not '${v}'`);
    return n;
  };
}

interface Flags {
  rounds: number;
  seed?: number;
  loop?: boolean;
  config?: string;
  shape?: string;
  volumeMib: number;
  keep?: boolean;
  keepGoing?: boolean;
  dir?: string;
  json?: boolean;
  fullDisk?: boolean;
  hosts?: boolean;
}

export function drillCommand(): Command {
  return new Command("drill")
    .description("crash-recovery drill on a temporary topology: write, kill -9, cut links, take over, check chains, resync, cmp")
    .option("--rounds <n>", "rounds to run", intIn("--rounds", 1, 1_000_000), 5)
    .option("--seed <s>", "seed of the first round (round i uses seed s+i-1); default: random, printed", intIn("--seed", 0, 0xffffffff))
    .option("--loop", "put every volume on its own loop device (needs root and /dev/loop-control)")
    .option("-c, --config <file>", "copy the shape (subsystem ids, volumes, groups) of this topology instead of the default 2 x 3")
    .option("--shape <name>", "a built-in shape: default (Fig. 1, one group) or two-groups (A and B on shared subsystems; A is turned while B is written)")
    .option("--volume-mib <n>", "size of every volume", intIn("--volume-mib", 1, VOLUME_MIB_MAX), VOLUME_MIB_DEFAULT)
    .option("--keep", "keep the temporary folder (logs, images, state) even when every round passed")
    .option("--keep-going", "after a failed round, build a fresh topology and run the remaining rounds")
    .option("--dir <path>", "make the temporary folder here instead of the system's temp folder")
    .option("--json", "print the reports and the summary as one JSON document on stdout (progress goes to stderr)")
    .option("--full-disk", "make the last round a full-disk round: the data folder on a tmpfs of its own, filled while hosts write (needs root)")
    .option("--hosts", "every subsystem and the RCM on a host of its own: a network namespace in 198.18.0.0/24 with its own address and clock offset; links fail by the network (needs root, ip netns, faketime)")
    .action(async (f: Flags) => {
      const code = await drillMain(f);
      // Exit now rather than when the event loop drains: a request to a process the drill killed
      // can leave a client's timeout timer behind (askRcm keeps its timer when the RCM's link
      // closes), which would hold the finished drill for up to a minute. stdout and stderr are
      // synchronous for files and pipes on Linux, so nothing printed is lost.
      process.exit(code);
    });
}

async function drillMain(f: Flags): Promise<number> {
  // Loaded here, not at the top: every tidemark command (the subsystems too) loads this file, and
  // none of them needs the drill's modules.
  const { Drill, renderDrillSummary } = await import("../drill/drill.ts");
  const out = f.json ? process.stderr : process.stdout;
  const seed = f.seed ?? randomInt(1, 2 ** 31);
  const o: DrillOptions = {
    rounds: f.rounds,
    seed,
    loop: !!f.loop,
    configFile: f.config,
    shapeName: f.shape,
    volumeMiB: f.volumeMib,
    keep: !!f.keep,
    keepGoing: !!f.keepGoing,
    baseDir: f.dir,
    fullDisk: !!f.fullDisk,
    hosts: !!f.hosts,
    say: (t) => out.write(t + "\n"),
  };
  out.write(`drill: ${o.rounds} round${o.rounds === 1 ? "" : "s"} from seed ${seed}${o.loop ? " on loop devices" : ""}${o.hosts ? " on namespaced hosts" : ""}${o.configFile ? `, shape of ${o.configFile}` : ""}${o.shapeName ? `, shape ${o.shapeName}` : ""}\n`);
  const drill = new Drill(o);
  let interrupted = false;
  const onSignal = (sig: NodeJS.Signals) => {
    if (interrupted) return;
    interrupted = true;
    process.stderr.write(`\ndrill: ${sig}: killing every process and detaching every loop device\n`);
    void drill.interrupt().then((problems) => {
      for (const p of problems) process.stderr.write(`drill: ${p}\n`);
      process.exit(130);
    });
  };
  process.on("SIGINT", onSignal);
  process.on("SIGTERM", onSignal);
  try {
    const r = await drill.run();
    // After Ctrl-C the signal handler tears down and exits 130; a half-run summary would mislead.
    if (interrupted) await new Promise(() => undefined);
    out.write(renderDrillSummary(o, r.summary) + "\n");
    if (f.json) process.stdout.write(JSON.stringify({ seed, options: { rounds: o.rounds, loop: o.loop, config: o.configFile ?? null, shape: o.shapeName ?? null, volumeMiB: o.volumeMiB, fullDisk: !!o.fullDisk, hosts: !!o.hosts }, summary: r.summary, rounds: r.reports, keptDir: r.keptDir }, null, 2) + "\n");
    return r.summary.passed === r.summary.rounds && r.summary.rounds === o.rounds ? 0 : 1;
  } catch (err) {
    const e = err as Error;
    if (interrupted) await new Promise(() => undefined);
    await drill.interrupt();
    process.stderr.write(`tidemark drill: ${e.message}\n`);
    return hasCode(e, "TM_DRILL_LOOP", "TM_DRILL_HOSTS", "TM_DRILL_MOUNT", "TM_DRILL_CONFIG", "TM_CONFIG") ? 2 : 1;
  } finally {
    process.off("SIGINT", onSignal);
    process.off("SIGTERM", onSignal);
  }
}

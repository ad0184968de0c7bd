// `tidemark drill`: builds a temporary topology (volume files in a temporary folder, or with
// --loop every volume on its own loop device; with --hosts every process in a network namespace
// of its own), starts its subsystems, RCM and link proxies, runs
// the rounds, and takes everything down again. Loop devices are detached and processes killed
// whatever happens: a failed round, an error, or Ctrl-C (the caller runs cleanup() on a signal).
// A failed round keeps the folder (logs, images, state files) for a post-mortem and says where.
import { execFileSync } from "node:child_process";
import { mkdirSync, mkdtempSync, rmSync, statSync, truncateSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { loadConfig, type LoadedTopology } from "../../config/load.ts";
import { writeKeyFile } from "../../config/keys.ts";
import { attachLoop, detachLoop, loopSupported } from "../../disks/loop-device.ts";
import { LinkProxy } from "./link-proxy.ts";
import { HostLinkFault, ProxyLinkFault, type LinkFault } from "./link-fault.ts";
import { MAX_HOSTS, NetnsHosts, netnsUnavailable } from "./netns-hosts.ts";
import { prng } from "./prng.ts";
import { freePorts } from "./ports.ts";
import { DrillProcesses } from "./processes.ts";
import { summarize, renderRound, renderSummary, type DrillSummary, type RoundReport } from "./report.ts";
import { killRunningCommands } from "./commands.ts";
import { runRound, type DrillEnv } from "./round.ts";
import { runFullDiskRound } from "./full-disk-round.ts";
import { RCM_ID } from "./schedule.ts";
import { VOLUME_MIB_DEFAULT } from "./defaults.ts";
import { checkShape, DrillConfigError, SHAPES, drillConfig, portsNeeded, secondaryIds, shapeOf, type DrillShape } from "./topology.ts";
import type { ErrorCode } from "../errors/codes.ts";
import { askRcm } from "../cli/rcm-client.ts";
import type { ClockOffsetReport } from "../rcm/clock-offsets.ts";

export const DRILL_HOST = "127.0.0.1";

export interface DrillOptions {
  rounds: number;
  seed: number;
  loop: boolean;
  /** A topology file whose shape (ids, volumes, groups) the drill copies; default Fig. 1. */
  configFile?: string;
  /** A built-in shape by name (topology.ts SHAPES); not with configFile. Default: `default`. */
  shapeName?: string;
  volumeMiB: number;
  /** Keep the temporary folder even when every round passed. */
  keep: boolean;
  /** After a failed round, build a fresh topology and go on (default: stop at the first failure). */
  keepGoing: boolean;
  /** Where the temporary folder goes (default: the OS temp dir). */
  baseDir?: string;
  /** The last round is a full-disk round: the data folder on a tmpfs of its own, filled while hosts write (needs root). */
  fullDisk?: boolean;
  /**
   * Every subsystem and the RCM on a host of its own: a network namespace with its own address
   * and a real-time clock offset of its own (netns-hosts.ts); the network's own faults fail the
   * links (link-fault.ts). Needs root, `ip netns` and libfaketime.
   */
  hosts?: boolean;
  /** Progress lines and round reports. */
  say: (text: string) => void;
}

export interface DrillResult {
  reports: RoundReport[];
  summary: DrillSummary;
  /** The folder kept for a post-mortem, if any. */
  keptDir: string | null;
}

export class DrillMountError extends Error {
  readonly code = "TM_DRILL_MOUNT" satisfies ErrorCode;
  constructor(message: string) {
    super(message);
    this.name = "DrillMountError";
  }
}

/** The reserve each subsystem keeps in a full-disk drill: small, the tmpfs is memory. */
const FULL_DISK_RESERVE_MIB = 4;
/** Room on the full-disk round's tmpfs beyond the volumes and reserves (segments, WALs, logs). */
const FULL_DISK_HEADROOM_MIB = 64;

export class DrillHostsError extends Error {
  readonly code = "TM_DRILL_HOSTS" satisfies ErrorCode;
  constructor(message: string) {
    super(message);
    this.name = "DrillHostsError";
  }
}

/**
 * --hosts: the bound the generated config gives `maxClockOffsetMs`, and the widest offset a
 * host's clock gets. Two hosts are then at most 2 x 4 = 8 ms apart, inside the bound less the
 * clock's 1 ms resolution, as chrony keeps hosts of one site (docs/deploy.md).
 */
export const HOSTS_MAX_CLOCK_OFFSET_MS = 10;
export const HOSTS_CLOCK_SKEW_MS = 4;

/** The host a process runs on with --hosts: subsystem #N on "ss<N>", the RCM on "rcm". */
const hostOf = (id: number) => (id === RCM_ID ? "rcm" : `ss${id}`);

/** Each host's clock offset for a drill seed: whole tenths of a ms within +-HOSTS_CLOCK_SKEW_MS, drawn from their own stream. */
export function hostClockOffsets(seed: number, ids: number[]): Map<number, number> {
  const rand = prng((seed ^ 0x6c8e9cf5) >>> 0);
  return new Map(ids.map((id) => [id, Math.round((rand() * 2 - 1) * HOSTS_CLOCK_SKEW_MS * 10) / 10]));
}

const signed = (ms: number) => `${ms >= 0 ? "+" : ""}${ms}`;

/** How long the drill waits for the RCM's first clock measurements (it probes once a second). */
const CLOCKS_WAIT_MS = 10_000;

/**
 * What the RCM measured of every subsystem's clock against its own (rcm/clock-offsets.ts),
 * beside what the drill set (the subsystem's offset less the RCM host's): the drill shows how
 * close the measurement comes; a measured pair beyond the bound would suspend the group.
 */
async function measuredClocks(env: Environment): Promise<string> {
  const topo = env.topo!;
  const set = (id: number) => env.hosts!.host(hostOf(id)).clockOffsetMs! - env.hosts!.host(hostOf(RCM_ID)).clockOffsetMs!;
  const until = Date.now() + CLOCKS_WAIT_MS;
  let report: ClockOffsetReport | null = null;
  while (Date.now() < until) {
    report = (await askRcm<{ clockOffsets?: ClockOffsetReport | null }>(topo, { op: "status" }, 3000).catch(() => null))?.clockOffsets ?? null;
    if (report && report.subsystems.length === topo.config.subsystems.length) break;
    await new Promise((r) => setTimeout(r, 250));
  }
  if (!report || report.subsystems.length === 0) return "the RCM reported no clock measurement within 10 s";
  const per = report.subsystems.map((c) => `#${c.subsystem} ${signed(Number(c.offsetMs.toFixed(2)))} ms (±${c.uncertaintyMs.toFixed(2)}; set ${signed(Number(set(c.subsystem).toFixed(1)))})`);
  const w = report.widest;
  return `the RCM measures ${per.join(", ")}; widest pair #${w?.ahead} - #${w?.behind} ${w ? w.offsetMs.toFixed(2) : "?"} ms`;
}

export class DrillLoopError extends Error {
  readonly code = "TM_DRILL_LOOP" satisfies ErrorCode;
  constructor(message: string) {
    super(message);
    this.name = "DrillLoopError";
  }
}

/** The command line that replays one round alone (the full-disk round is the last of a --full-disk drill). */
export function replayCommand(o: Pick<DrillOptions, "loop" | "configFile" | "shapeName" | "volumeMiB"> & Partial<Pick<DrillOptions, "fullDisk" | "seed" | "rounds" | "hosts">>, seed: number): string {
  const fullDisk = !!o.fullDisk && o.seed !== undefined && o.rounds !== undefined && seed === (o.seed + o.rounds - 1) >>> 0;
  return [
    "tidemark drill --rounds 1",
    `--seed ${seed}`,
    ...(o.loop ? ["--loop"] : []),
    ...(o.hosts ? ["--hosts"] : []),
    ...(fullDisk ? ["--full-disk"] : []),
    ...(o.configFile ? [`--config ${o.configFile}`] : []),
    ...(o.shapeName && o.shapeName !== "default" ? [`--shape ${o.shapeName}`] : []),
    ...(o.volumeMiB !== VOLUME_MIB_DEFAULT ? [`--volume-mib ${o.volumeMiB}`] : []),
  ].join(" ");
}

/** One running temporary topology. */
class Environment {
  readonly loops: string[] = [];
  readonly links = new Map<number, LinkFault>();
  /** --hosts: the namespaces every process runs in. */
  hosts: NetnsHosts | null = null;
  procs: DrillProcesses | null = null;
  topo: LoadedTopology | null = null;
  /** The tmpfs of a full-disk drill (the data folder), unmounted at teardown. */
  mounted: string | null = null;
  private torn = false;

  constructor(readonly dir: string) {}

  /** `hostsSeed`: --hosts, with the clock offsets of this seed. */
  async build(shape: DrillShape, volumeMiB: number, loop: boolean, fullDisk = false, hostsSeed: number | null = null): Promise<void> {
    const dataDir = path.join(this.dir, "data");
    mkdirSync(dataDir, { recursive: true });
    if (fullDisk) {
      const volumes = shape.subsystems.reduce((n, s) => n + s.volumes.length, 0);
      const mib = (loop ? 0 : volumes * volumeMiB) + shape.subsystems.length * FULL_DISK_RESERVE_MIB + FULL_DISK_HEADROOM_MIB;
      try {
        execFileSync("mount", ["-t", "tmpfs", "-o", `size=${mib}m`, "tidemark-drill-full-disk", dataDir], { stdio: "pipe" });
      } catch (err) {
        throw new DrillMountError(`--full-disk: cannot mount a ${mib} MiB tmpfs on ${dataDir}: ${String((err as { stderr?: unknown }).stderr ?? err).trim()}`);
      }
      this.mounted = dataDir;
    }
    const devices = new Map<string, string>();
    if (loop) {
      const backing = path.join(this.dir, "loop");
      mkdirSync(backing);
      for (const s of shape.subsystems) {
        for (const v of s.volumes) {
          const file = path.join(backing, `${v}.img`);
          writeFileSync(file, "");
          truncateSync(file, volumeMiB << 20);
          const dev = await attachLoop(file);
          this.loops.push(dev);
          devices.set(v, dev);
        }
      }
    }
    const ports = await freePorts(DRILL_HOST, portsNeeded(shape));
    // A fresh key per drill, in a file of mode 0600 as production has it (config/keys.ts).
    const keyFile = path.join(this.dir, "cluster.key");
    writeKeyFile(keyFile, true);
    const ids = [...shape.subsystems.map((s) => s.id), RCM_ID];
    if (hostsSeed !== null) {
      const offsets = hostClockOffsets(hostsSeed, ids);
      this.hosts = NetnsHosts.create(Object.fromEntries(ids.map((id) => [hostOf(id), { clockOffsetMs: offsets.get(id)! }])));
    }
    const hosts = this.hosts;
    const { config, proxies } = drillConfig({
      shape,
      host: hosts ? hosts.address(hostOf(RCM_ID)) : DRILL_HOST,
      ports,
      clusterKeyFile: keyFile,
      dataDir,
      volumeMiB,
      devices,
      hosts: hosts ? { addressOf: (id) => hosts.address(hostOf(id)), maxClockOffsetMs: HOSTS_MAX_CLOCK_OFFSET_MS } : undefined,
    });
    if (fullDisk) (config as Record<string, unknown>).stateReserveMiB = FULL_DISK_RESERVE_MIB;
    const file = path.join(this.dir, "drill.json");
    writeFileSync(file, JSON.stringify(config, null, 2) + "\n");
    this.topo = loadConfig(file);
    for (const p of proxies) {
      const proxy = new LinkProxy(DRILL_HOST, p.targetPort);
      await proxy.listen(DRILL_HOST, p.listenPort);
      this.links.set(p.secondary, new ProxyLinkFault(proxy, p.secondary));
    }
    if (hosts) {
      const place = {
        primaries: [...new Set([...this.topo.groups.values()].flatMap((g) => g.primaries))].sort((a, b) => a - b).map(hostOf),
        secondaries: secondaryIds(shape).map(hostOf),
      };
      for (const id of secondaryIds(shape)) this.links.set(id, new HostLinkFault(hosts, id, { ...place, secondary: hostOf(id) }));
    }
    this.procs = new DrillProcesses(file, this.dir, ids, hosts ? (id, argv) => hosts.command(hostOf(id), argv) : undefined);
    await this.procs.startAll();
  }

  /** Processes first (the kernel defers a loop detach while a process holds the device), then links and hosts, then loops. */
  async teardown(fast: boolean): Promise<string[]> {
    if (this.torn) return [];
    this.torn = true;
    const problems: string[] = [];
    if (fast) killRunningCommands();
    if (this.procs) await (fast ? this.procs.killAll() : this.procs.stopAll());
    for (const l of this.links.values()) await l.close();
    if (this.hosts) await this.hosts.destroy();
    for (const dev of this.loops.splice(0)) {
      await detachLoop(dev).catch((e: Error) => problems.push(`could not detach ${dev}: ${e.message}`));
    }
    if (this.mounted) {
      try {
        execFileSync("umount", ["-l", this.mounted], { stdio: "pipe" });
      } catch (err) {
        problems.push(`could not unmount the tmpfs on ${this.mounted}: ${String(err)}`);
      }
      this.mounted = null;
    }
    return problems;
  }
}

export class Drill {
  private env: Environment | null = null;
  private stopping = false;
  private readonly dirs: string[] = [];

  constructor(private readonly o: DrillOptions) {}

  /** Loads and checks the shape, and refuses --loop where loop devices cannot work, before anything is created. */
  private shape(): DrillShape {
    const name = this.o.shapeName ?? "default";
    if (this.o.configFile && name !== "default") throw new DrillConfigError(`--shape ${name} and --config: give one shape, not both`);
    const builtIn = Object.hasOwn(SHAPES, name) ? SHAPES[name] : undefined;
    if (!builtIn) throw new DrillConfigError(`--shape ${name}: no such shape; the shapes are ${Object.keys(SHAPES).join(", ")}`);
    const shape = this.o.configFile ? shapeOf(loadConfig(this.o.configFile)) : builtIn;
    checkShape(shape, this.o.configFile ?? (name === "default" ? "the default topology" : `the ${name} shape`));
    if (this.o.baseDir !== undefined && !statSync(this.o.baseDir, { throwIfNoEntry: false })?.isDirectory()) {
      throw new DrillConfigError(`--dir ${this.o.baseDir}: not a folder`);
    }
    if (this.o.loop) {
      const s = loopSupported();
      if (!s.ok) throw new DrillLoopError(`--loop: ${s.why}; run without --loop to drill on volume files`);
    }
    if (this.o.hosts) {
      const why = netnsUnavailable({ clocks: true });
      if (why) throw new DrillHostsError(`--hosts: ${why}; run without --hosts to drill on one host`);
      if (shape.subsystems.length + 1 > MAX_HOSTS) throw new DrillHostsError(`--hosts: ${shape.subsystems.length} subsystems and the RCM need ${shape.subsystems.length + 1} hosts; at most ${MAX_HOSTS} fit`);
    }
    if (this.o.fullDisk && process.getuid?.() !== 0) throw new DrillMountError("--full-disk: mounting the tmpfs the round fills needs root; run the drill as root or without --full-disk");
    return shape;
  }

  private async fresh(shape: DrillShape): Promise<Environment> {
    const dir = mkdtempSync(path.join(this.o.baseDir ?? os.tmpdir(), "tidemark-drill-"));
    this.dirs.push(dir);
    const env = new Environment(dir);
    this.env = env;
    const begun = Date.now();
    try {
      await env.build(shape, this.o.volumeMiB, this.o.loop, this.o.fullDisk, this.o.hosts ? this.o.seed : null);
    } catch (err) {
      await env.teardown(true);
      throw err;
    }
    const clocks = env.hosts ? await measuredClocks(env) : "";
    this.o.say(
      `drill: topology in ${dir}: ${env.topo!.config.subsystems.length} subsystems, ${env.topo!.pairs.length} pairs in ${env.topo!.groups.size} group(s), ` +
        `${this.o.volumeMiB} MiB volumes ${this.o.loop ? `on loop devices ${env.loops.join(" ")}` : "in files"}; up in ${Date.now() - begun} ms` +
        (env.hosts
          ? `\ndrill: hosts: ${[...env.hosts.hosts.values()].map((h) => `${h.name} ${h.address} clock ${signed(h.clockOffsetMs!)} ms`).join(", ")}; clock realtime, maxClockOffsetMs ${HOSTS_MAX_CLOCK_OFFSET_MS}` +
            `\ndrill: hosts: ${clocks}`
          : ""),
    );
    return env;
  }

  async run(): Promise<DrillResult> {
    const started = Date.now();
    const shape = this.shape();
    const reports: RoundReport[] = [];
    let keptDir: string | null = null;
    let env = await this.fresh(shape);
    for (let i = 0; i < this.o.rounds && !this.stopping; i++) {
      const seed = (this.o.seed + i) >>> 0;
      const denv: DrillEnv = { topo: env.topo!, procs: env.procs!, links: env.links, volumeBytes: this.o.volumeMiB << 20, turn: shape.turn ?? null, stopping: () => this.stopping };
      const fullDiskRound = this.o.fullDisk && i === this.o.rounds - 1;
      const r = fullDiskRound ? await runFullDiskRound(denv, i + 1, seed, env.mounted!) : await runRound(denv, i + 1, seed);
      reports.push(r);
      if (!this.stopping) this.o.say(renderRound(r, replayCommand(this.o, seed)));
      if (!r.ok && !this.stopping) {
        keptDir = env.dir;
        this.o.say(`drill: logs, images and state files of the failed round are kept in ${env.dir}`);
        if (!this.o.keepGoing || i + 1 >= this.o.rounds) break;
        for (const p of await env.teardown(false)) this.o.say(`drill: ${p}`);
        env = await this.fresh(shape);
      }
    }
    await this.finish(keptDir);
    return { reports, summary: summarize(reports, Date.now() - started), keptDir };
  }

  private async finish(keptDir: string | null): Promise<void> {
    const begun = Date.now();
    if (this.env) for (const p of await this.env.teardown(false)) this.o.say(`drill: ${p}`);
    let removed = 0;
    for (const d of this.dirs) {
      if (d === keptDir || this.o.keep) continue;
      rmSync(d, { recursive: true, force: true });
      removed++;
    }
    this.o.say(`drill: every process stopped${this.o.loop ? ", every loop device detached" : ""}${removed > 0 ? ", temporary folders removed" : ""} in ${Date.now() - begun} ms`);
    if (this.o.keep && this.env) this.o.say(`drill: kept ${this.dirs.join(", ")}`);
  }

  /** Ctrl-C: stop the round where it is, kill every process at once, detach every loop device. */
  async interrupt(): Promise<string[]> {
    this.stopping = true;
    const problems = this.env ? await this.env.teardown(true) : [];
    for (const d of this.dirs) if (!this.o.keep) rmSync(d, { recursive: true, force: true });
    return problems;
  }
}

export function renderDrillSummary(o: Pick<DrillOptions, "loop" | "configFile" | "shapeName" | "volumeMiB"> & Partial<Pick<DrillOptions, "fullDisk" | "seed" | "rounds" | "hosts">>, s: DrillSummary): string {
  return renderSummary(s, (seed) => replayCommand(o, seed));
}

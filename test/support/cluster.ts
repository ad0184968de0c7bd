// A real cluster for integration tests: a config in a temporary folder with
// free loopback ports, one `tidemark subsystem` process per subsystem, and
// helpers to kill (-9), stop, restart and query them.
import { spawn, execFile, type ChildProcess } from "node:child_process";
import { mkdtempSync, mkdirSync, writeFileSync, rmSync, readFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import { loadConfig, volumePath, type LoadedTopology } from "../../config/load.ts";
import { writeKeyFile } from "../../config/keys.ts";
import { askAll } from "../../appliance/cli/control-client.ts";
import { liveTopologyFrom } from "../../appliance/cli/live-topology.ts";
import { buildStatus, type StatusDoc, type SubsystemStatus } from "../../appliance/cli/status-view.ts";
import { NbdClient } from "./nbd-client.ts";
import { DEFAULT_SHAPE } from "../../appliance/drill/topology.ts";
import { freePort } from "./ports.ts";
export { freePort };
import { clockReader } from "../../appliance/primary/clock-source.ts";
import { prng } from "../../appliance/drill/prng.ts";
export { prng };

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
export const BIN = path.join(ROOT, "bin/tidemark");


/** The seed's Fig. 1 shape: primaries #1, #2; secondaries #3, #4, #5. */
export async function fig1Config(o: { volumeMiB: number; syncIntervalMs?: number; extra?: Record<string, unknown> }) {
  const ss = async (id: number, vols: string[]) => ({
    id,
    host: "127.0.0.1",
    replicationPort: await freePort(),
    nbdPort: await freePort(),
    volumes: vols.map((name) => ({ name, sizeMiB: o.volumeMiB })),
  });
  return {
    // Written mode 0600 beside the config by TestCluster.create (config/keys.ts).
    clusterKeyFile: "cluster.key",
    dataDir: "data",
    syncIntervalMs: o.syncIntervalMs ?? 20,
    reconnectMs: 100,
    logLevel: "info",
    subsystems: await Promise.all(DEFAULT_SHAPE.subsystems.map((x) => ss(x.id, x.volumes))),
    // Fresh copies: tests edit the pairs of the config they get.
    groups: DEFAULT_SHAPE.groups.map((g) => ({ name: g.name, pairs: g.pairs.map((p) => ({ ...p })) })),
    ...o.extra,
  };
}

/**
 * How the cluster starts one of its processes (id 0: the RCM): it gets the
 * argv that would run here (`node bin/tidemark subsystem ...`) and returns the
 * argv to run instead, e.g. inside a network namespace
 * (appliance/drill/netns-hosts.ts, hostsLauncher). The process must keep the pid
 * it is spawned with (exec in place), so kill() reaches it.
 */
export type Launcher = (id: number, argv: string[]) => string[];

export interface TestClusterOptions {
  launch?: Launcher;
}

export class TestCluster {
  readonly procs = new Map<number, ChildProcess>();
  topo: LoadedTopology;
  private readonly deaths: string[] = [];
  private readonly launch: Launcher;

  private constructor(
    readonly dir: string,
    readonly configFile: string,
    opts: TestClusterOptions = {},
  ) {
    this.topo = loadConfig(configFile);
    this.launch = opts.launch ?? ((_id, argv) => argv);
  }

  static create(config: unknown, prefix = "tidemark-it-", opts: TestClusterOptions = {}): TestCluster {
    const dir = mkdtempSync(path.join(os.tmpdir(), prefix));
    const file = path.join(dir, "config.json");
    writeFileSync(file, JSON.stringify(config, null, 2));
    const keyFile = (config as { clusterKeyFile?: unknown }).clusterKeyFile;
    if (typeof keyFile === "string") writeKeyFile(path.resolve(dir, keyFile), false);
    return new TestCluster(dir, file, opts);
  }

  private spawnProcess(id: number, args: string[]): ChildProcess {
    const [command, ...rest] = this.launch(id, [process.execPath, BIN, ...args]);
    return spawn(command, rest, { stdio: ["ignore", "pipe", "pipe"] });
  }

  get ids(): number[] {
    return this.topo.config.subsystems.map((s) => s.id);
  }

  /** Where the processes' logs go; a test may point it at its own file system before starting them. */
  logDir = "";

  logOf(id: number): string {
    return path.join(this.logDir || this.dir, id === 0 ? "rcm.log" : `ss${id}.log`);
  }

  async start(id: number): Promise<void> {
    const proc = this.spawnProcess(id, ["subsystem", "--config", this.configFile, "--id", String(id), "--log", this.logOf(id)]);
    this.procs.set(id, proc);
    let stderr = "";
    proc.stderr!.on("data", (d) => (stderr += d));
    await new Promise<void>((resolve, reject) => {
      createInterface({ input: proc.stdout! }).on("line", (l) => {
        if (l.includes('"ready":true')) resolve();
      });
      proc.once("exit", (code, sig) => {
        if (sig !== "SIGKILL" && sig !== "SIGTERM" && code !== 0) this.deaths.push(`#${id} exit ${code ?? sig}: ${stderr.trim()}`);
        reject(new Error(`subsystem #${id} exited (${sig ?? code}) before ready: ${stderr.trim()}`));
      });
    });
  }

  /** The RCM (config rcm section), as process id 0 among the subsystems. */
  async startRcm(): Promise<void> {
    const proc = this.spawnProcess(0, ["rcm", "--config", this.configFile, "--log", this.logOf(0)]);
    this.procs.set(0, proc);
    let stderr = "";
    proc.stderr!.on("data", (d) => (stderr += d));
    await new Promise<void>((resolve, reject) => {
      createInterface({ input: proc.stdout! }).on("line", (l) => {
        if (l.includes('"ready":true')) resolve();
      });
      proc.once("exit", (code, sig) => reject(new Error(`rcm exited (${sig ?? code}) before ready: ${stderr.trim()}`)));
    });
  }

  /**
   * Starts every subsystem and, unless told not to, waits until every group
   * is paired: a new group begins with its initial copy, during which the
   * secondaries hold their image (docs/resync.md).
   */
  async startAll(o: { paired?: boolean } = {}): Promise<void> {
    await Promise.all(this.ids.map((id) => this.start(id)));
    if (o.paired !== false) await this.waitPaired();
  }

  /** Until no primary copies and no secondary holds for a resync. */
  async waitPaired(timeoutMs = 60_000): Promise<void> {
    const until = Date.now() + timeoutMs;
    for (;;) {
      const answers = await askAll<SubsystemStatus>(this.topo, this.ids, { op: "status" });
      const busy: string[] = [];
      for (const [id, a] of answers) {
        if (!a.ok) continue;
        for (const g of a.value.primary?.groups ?? []) if (g.state === "copying") busy.push(`#${id} copying ${g.name}`);
        for (const g of a.value.secondary ?? []) if (g.state === "resyncing") busy.push(`#${id} holds ${g.name}`);
      }
      if (busy.length === 0) return;
      if (Date.now() > until) throw new Error(`groups not paired within ${timeoutMs} ms: ${busy.join(", ")}`);
      await new Promise((r) => setTimeout(r, 50));
    }
  }

  /** kill -9: no chance to clean up. */
  async kill(id: number, signal: NodeJS.Signals = "SIGKILL"): Promise<void> {
    const p = this.procs.get(id);
    if (!p || p.exitCode !== null || p.signalCode !== null) return;
    if (signal === "SIGSTOP" || signal === "SIGCONT") {
      p.kill(signal);
      return;
    }
    const gone = new Promise((r) => p.once("exit", r));
    p.kill(signal);
    await gone;
  }

  alive(id: number): boolean {
    const p = this.procs.get(id);
    return !!p && p.exitCode === null && p.signalCode === null;
  }

  /** Deaths nobody asked for (a crash, an invariant stop). */
  unexpectedDeaths(): string[] {
    return [...this.deaths];
  }

  async stopAll(): Promise<void> {
    await Promise.all(this.ids.map((id) => this.kill(id, "SIGTERM")));
  }

  async destroy(keep = process.env.TIDEMARK_KEEP_TEST_DIRS === "1"): Promise<void> {
    await Promise.all([...this.procs.keys()].map((id) => this.kill(id, "SIGKILL")));
    if (!keep) rmSync(this.dir, { recursive: true, force: true });
  }

  cli(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
    return new Promise((resolve) => {
      execFile(process.execPath, [BIN, ...args], { maxBuffer: 64 * 1024 * 1024 }, (err, stdout, stderr) => {
        resolve({ code: err ? ((err as { code?: number }).code ?? 1) : 0, stdout, stderr });
      });
    });
  }

  /** The status document as `tidemark status` builds it: the roles of the moment (after a failback the config's secondaries are primary). */
  async status(): Promise<StatusDoc> {
    const answers = await askAll<SubsystemStatus>(this.topo, this.ids, { op: "status" });
    const live = liveTopologyFrom(this.topo, answers.values() as Iterable<{ ok: boolean; value?: SubsystemStatus }>, true);
    return buildStatus(live, answers, clockReader(this.topo.config.clock)());
  }

  async rawStatus(id: number): Promise<SubsystemStatus> {
    const a = (await askAll<SubsystemStatus>(this.topo, [id], { op: "status" })).get(id)!;
    if (!a.ok) throw new Error(a.error);
    return a.value;
  }

  /** A changed topology (e.g. a new pair): written over the config file; processes started from now on read it. */
  rewriteConfig(config: unknown): void {
    writeFileSync(this.configFile, JSON.stringify(config, null, 2));
    this.topo = loadConfig(this.configFile);
  }

  /** Before the first start: volume files made with content (fill gets a zeroed buffer of the volume's size). */
  prefill(fill: (name: string, buf: Buffer) => void, names: string[]): void {
    for (const name of names) {
      const v = this.topo.config.subsystems.flatMap((s) => s.volumes).find((x) => x.name === name)!;
      const buf = Buffer.alloc((v.sizeMiB ?? 0) << 20);
      fill(name, buf);
      const file = this.volumeFile(name);
      mkdirSync(path.dirname(file), { recursive: true });
      writeFileSync(file, buf, { mode: 0o600 });
    }
  }

  volumeFile(name: string): string {
    return volumePath(this.topo, this.topo.volumes.get(name)!);
  }

  nbd(volume: string): Promise<NbdClient> {
    const v = this.topo.volumes.get(volume)!;
    const ss = this.topo.config.subsystems.find((s) => s.id === v.subsystemId)!;
    return NbdClient.connect({ host: ss.host, port: ss.nbdPort, exportName: volume });
  }

  nbdUrl(volume: string): string {
    const v = this.topo.volumes.get(volume)!;
    const ss = this.topo.config.subsystems.find((s) => s.id === v.subsystemId)!;
    return `nbd://${ss.host}:${ss.nbdPort}/${volume}`;
  }

  async quiesce(group = "C1", timeoutMs = 120_000): Promise<void> {
    const r = await this.cli(["quiesce", "--config", this.configFile, "--group", group, "--timeout-ms", String(timeoutMs)]);
    if (r.code !== 0) throw new Error(`quiesce failed (${r.code}): ${r.stderr}`);
  }

  /** Pairs of image files (primary, secondary) of every pair. */
  pairFiles(): { primary: string; secondary: string; name: string }[] {
    return this.topo.pairs.map((p) => ({ name: `${p.primary.name}->${p.secondary.name}`, primary: this.volumeFile(p.primary.name), secondary: this.volumeFile(p.secondary.name) }));
  }

  readLog(id: number): string {
    try {
      return readFileSync(this.logOf(id), "utf8");
    } catch {
      return "";
    }
  }

  /**
   * The log of subsystem `id` once it matches `re`, or whatever it holds after
   * `timeoutMs`: a process writes its log asynchronously, so a line about a
   * connection a client saw closed may land a little after the client exits.
   */
  async waitForLog(id: number, re: RegExp, timeoutMs = 5_000): Promise<string> {
    const until = Date.now() + timeoutMs;
    for (;;) {
      const log = this.readLog(id);
      if (re.test(log) || Date.now() >= until) return log;
      await new Promise((r) => setTimeout(r, 50));
    }
  }
}

/** cmp(1) of two files: null when identical, else its message. */
export function cmp(a: string, b: string): Promise<string | null> {
  return new Promise((resolve) => {
    execFile("cmp", [a, b], (err, stdout, stderr) => resolve(err ? (stdout + stderr).trim() || `cmp exit ${(err as { code?: number }).code}` : null));
  });
}


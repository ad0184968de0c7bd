// `npm run bench`: the replicated write path against plain NBD servers on the
// same disk. Starts `nbdkit file`, `nbd-server` and `qemu-nbd` serving a plain
// file (each skipped, with its reason, when its tool is missing), a
// 1-primary/1-secondary tidemark and the
// default 2x3 shape (each in its own temp dir, on free loopback ports), runs
// the same fio jobs (nbd engine) against each, samples `status` every
// SAMPLE_MS for the replication lag, and prints one table. Every process it
// starts and every temp dir is removed on exit, failure or Ctrl-C.
// Not part of `npm test`: it takes minutes and needs a quiet machine.
import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { mkdtempSync, writeFileSync, rmSync, readFileSync, mkdirSync, copyFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import { loadConfig, type LoadedTopology } from "../config/load.ts";
import { ControlClient } from "../appliance/cli/control-client.ts";
import { buildStatus, type Answer, type SubsystemStatus } from "../appliance/cli/status-view.ts";
import { clockReader } from "../appliance/primary/clock-source.ts";
import { freePort } from "../test/support/ports.ts";
import { fig1Config } from "../test/support/cluster.ts";
import { haveCerttool, makeTlsMaterial } from "../test/support/tls-material.ts";
import { runFio as runFioIn, type FioResult } from "./fio.ts";

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const BIN = path.join(ROOT, "bin/tidemark");
const MiB = 1024 * 1024;
/** Status sampling period during a job (the issue asks for ~250 ms). */
const SAMPLE_MS = 250;
/** Longest wait for the secondaries to drain their queues after a write job. */
const DRAIN_TIMEOUT_MS = 180_000;
const STOP_GRACE_MS = 15_000;

// ---------------------------------------------------------------- arguments
interface Options {
  seconds: number;
  volumeMiB: number;
  syncIntervalMs: number;
  dir: string;
  json: string | null;
  keep: boolean;
  only: Set<string> | null;
  jobs: Set<string> | null;
  /** MiB of RCRs queued on a secondary before the takeover measurement. */
  takeoverMiB: number;
}

function usage(): never {
  process.stdout.write(
    [
      "usage: npm run bench -- [--quick] [--seconds N] [--volume-mib N] [--dir D] [--json FILE] [--only nbdkit,nbd-server,qemu-nbd,1x1,2x3] [--jobs randwrite,seqwrite,randread] [--keep]",
      "  --seconds N     length of every fio job (default 60; the issue asks for sustained rates)",
      "  --quick         10 s jobs",
      "  --volume-mib N  size of every volume file (default 1024)",
      "  --dir D         where the temp dirs go (default: os.tmpdir(), the disk under test)",
      "  --json FILE     also write the raw results as JSON",
      "  --keep          keep the temp dirs (logs, state files) for inspection",
      "  --takeover-mib N  RCRs queued on a secondary before the takeover run (default 1024; --only takeover runs just that)",
      "  TLS cost (targets run only when named): --only nbdkit,nbdkit-tls,1x1-tls-off,1x1-tls-on",
      "  the Node.js floor (runs only when named): --only node-floor,node-floor-async,node-floor-fwd,node-floor-jnl,node-floor-jnl-async: bench/node-floor.ts serving a plain file alone, alone with its file I/O in libuv's pool, forwarding each write to a second process, that with the least journal on both sides, and that with the file I/O in the pool",
      "    nbdkit-tls: nbdkit --tls=require with an X.509 certificate; 1x1-tls-off: links and NBD in plain TCP;",
      "    1x1-tls-on: links over TLS (PSK, the default) and NBD with --tls=require (X.509). Needs certtool (gnutls-bin).",
      "",
    ].join("\n"),
  );
  process.exit(2);
}

function parseArgs(argv: string[]): Options {
  const o: Options = { seconds: 60, volumeMiB: 1024, syncIntervalMs: 50, dir: os.tmpdir(), json: null, keep: false, only: null, jobs: null, takeoverMiB: 1024 };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const val = () => {
      const v = argv[++i];
      if (v === undefined) usage();
      return v;
    };
    const num = () => {
      const n = Number(val());
      if (!Number.isFinite(n) || n <= 0) usage();
      return n;
    };
    if (a === "--quick") o.seconds = 10;
    else if (a === "--seconds") o.seconds = num();
    else if (a === "--volume-mib") o.volumeMiB = Math.round(num());
    else if (a === "--sync-interval-ms") o.syncIntervalMs = Math.round(num());
    else if (a === "--dir") o.dir = path.resolve(val());
    else if (a === "--json") o.json = path.resolve(val());
    else if (a === "--keep") o.keep = true;
    else if (a === "--only") o.only = new Set(val().split(","));
    else if (a === "--jobs") o.jobs = new Set(val().split(","));
    else if (a === "--takeover-mib") o.takeoverMiB = Math.round(num());
    else usage();
  }
  return o;
}

// ---------------------------------------------------------------- cleanup
const children = new Set<ChildProcess>();
/** Daemons that are not our children (nbd-server), killed at exit like them. */
const daemonStops = new Set<number>();
const tempDirs = new Set<string>();
let keepDirs = false;

function track(p: ChildProcess): ChildProcess {
  children.add(p);
  p.once("exit", () => children.delete(p));
  return p;
}

function alive(p: ChildProcess): boolean {
  return p.exitCode === null && p.signalCode === null;
}

async function stopProc(p: ChildProcess, graceMs = STOP_GRACE_MS): Promise<void> {
  if (!alive(p)) return;
  const gone = new Promise<void>((r) => p.once("exit", () => r()));
  p.kill("SIGTERM");
  const t = setTimeout(() => p.kill("SIGKILL"), graceMs);
  await gone;
  clearTimeout(t);
}

/** Last resort, synchronous: runs from process 'exit' whatever happened before. */
function cleanupSync(): void {
  for (const p of children) if (alive(p)) p.kill("SIGKILL");
  for (const pid of daemonStops) {
    try {
      process.kill(pid, "SIGKILL");
    } catch {
      /* already gone */
    }
  }
  if (!keepDirs) for (const d of tempDirs) rmSync(d, { recursive: true, force: true });
}

let interrupted = false;
process.on("exit", cleanupSync);
for (const sig of ["SIGINT", "SIGTERM", "SIGHUP"] as const) {
  process.on(sig, () => {
    if (interrupted) return;
    interrupted = true;
    process.stderr.write(`\nbench: ${sig}: stopping every process and removing temp dirs\n`);
    void Promise.all([...children].map((p) => stopProc(p, 3000))).finally(() => process.exit(130));
  });
}

function tempDir(o: Options, prefix: string): string {
  mkdirSync(o.dir, { recursive: true });
  const d = mkdtempSync(path.join(o.dir, prefix));
  tempDirs.add(d);
  return d;
}

// ---------------------------------------------------------------- tools
function have(cmd: string, args: string[]): string | null {
  const r = spawnSync(cmd, args, { encoding: "utf8" });
  return r.status === 0 || (r.stdout ?? "").length > 0 ? `${r.stdout}${r.stderr}` : null;
}

/** fio and nbdinfo drive every target: without them nothing runs. */
function checkTools(): void {
  const missing: string[] = [];
  const fio = have("fio", ["--enghelp"]);
  if (fio === null) missing.push("fio (apt-get install fio)");
  else if (!/\bnbd\b/.test(fio)) missing.push("fio with the nbd ioengine (Debian's fio >= 3.20 has it; it links libnbd)");
  if (have("nbdinfo", ["--version"]) === null) missing.push("nbdinfo (apt-get install libnbd-bin)");
  if (missing.length > 0) {
    process.stderr.write(`bench: missing tools:\n  ${missing.join("\n  ")}\n`);
    process.exit(3);
  }
}

/** Why an unreplicated peer cannot run here, or null when its tool is installed. */
function peerMissing(key: string): string | null {
  const tool: Record<string, [string, string[], string]> = {
    nbdkit: ["nbdkit", ["--version"], "apt-get install nbdkit"],
    "nbdkit-tls": ["nbdkit", ["--version"], "apt-get install nbdkit"],
    "nbd-server": ["nbd-server", ["-V"], "apt-get install nbd-server"],
    "qemu-nbd": ["qemu-nbd", ["--version"], "apt-get install qemu-utils"],
  };
  const t = tool[key];
  if (!t) return null;
  return have(t[0], t[1]) === null ? `${t[0]} is not installed (${t[2]})` : null;
}

/** Peak RSS (VmHWM) in MiB, and its reset (clear_refs 5) so each job gets its own peak. */
function vmHwmMiB(pid: number): number | null {
  try {
    const m = /VmHWM:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, "utf8"));
    return m ? Number(m[1]) / 1024 : null;
  } catch {
    return null;
  }
}

/**
 * CPU seconds (user + system) a process has used so far, from /proc/<pid>/stat;
 * with `reaped`, also those of its children that have exited and been waited
 * for (nbd-server serves each connection in a forked child).
 */
function cpuSeconds(pid: number, reaped = false): number | null {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    return (Number(f[11]) + Number(f[12]) + (reaped ? Number(f[13]) + Number(f[14]) : 0)) / CLOCK_TICKS;
  } catch {
    return null;
  }
}
const CLOCK_TICKS = Number(spawnSync("getconf", ["CLK_TCK"], { encoding: "utf8" }).stdout.trim()) || 100;

/** Waits (up to 2 s) until a process has no live children: their CPU is then in its cutime. */
async function childrenReaped(pid: number): Promise<void> {
  for (let i = 0; i < 40; i++) {
    try {
      if (readFileSync(`/proc/${pid}/task/${pid}/children`, "utf8").trim() === "") return;
    } catch {
      return;
    }
    await sleep(50);
  }
}

function resetHwm(pid: number): void {
  try {
    writeFileSync(`/proc/${pid}/clear_refs`, "5");
  } catch {
    /* not allowed here: the peak then covers the process's whole life */
  }
}

// ---------------------------------------------------------------- fio
interface FioJob {
  name: "randwrite" | "seqwrite" | "randread" | "randwrite-half";
  rw: string;
  bs: string;
  iodepth: number;
  write: boolean;
  /** fio --rate_iops: the half-rate job runs at half what randwrite reached on the same target. */
  rateIops?: number;
}

const JOBS: FioJob[] = [
  { name: "randwrite", rw: "randwrite", bs: "4k", iodepth: 32, write: true },
  { name: "seqwrite", rw: "write", bs: "1M", iodepth: 8, write: true },
  { name: "randread", rw: "randread", bs: "4k", iodepth: 32, write: false },
];

function runFio(args: string[], seconds: number, cwd: string, env?: NodeJS.ProcessEnv): Promise<FioResult> {
  return runFioIn(args, seconds, cwd, env ?? process.env, track);
}

function nbdFioArgs(uri: string, job: FioJob, sizeMiB: number): string[] {
  return [
    `--name=${job.name}`,
    "--ioengine=nbd",
    `--uri=${uri}`,
    `--rw=${job.rw}`,
    `--bs=${job.bs}`,
    `--iodepth=${job.iodepth}`,
    `--size=${sizeMiB}M`,
    "--randrepeat=0",
    "--norandommap",
    ...(job.rateIops ? [`--rate_iops=${job.rateIops}`] : []),
  ];
}

// ---------------------------------------------------------------- targets
interface Proc {
  label: string;
  proc: ChildProcess;
}

/** A process whose CPU and memory a job reads: a child of ours, or a daemon that forked away from us (nbd-server). */
interface Measured {
  label: string;
  pid: number;
  /** Count the CPU of its exited children too: they did the target's work. */
  reaped: boolean;
}

interface Target {
  name: string;
  uri: string;
  procs: Proc[];
  /** What a job measures; procs unless the server is a daemon we did not spawn ourselves. */
  measured: Measured[];
  /** Stops a server that is not one of procs (nbd-server's daemon). */
  stop?: () => Promise<void>;
  cluster: Cluster | null;
  /** fio's environment: over TLS, HOME holds .pki/libnbd, the only way fio's libnbd takes a CA (docs/benchmarks.md). */
  fioEnv?: NodeJS.ProcessEnv;
}

interface Cluster {
  topo: LoadedTopology;
  clients: Map<number, ControlClient>;
}

const measuredOf = (procs: Proc[]): Measured[] => procs.map((p) => ({ label: p.label, pid: p.proc.pid!, reaped: false }));

/** Polls with nbdinfo until the server answers the handshake (every server here listens before it is ready to say so). */
async function waitNbd(name: string, uri: string, up: () => string | null, env: NodeJS.ProcessEnv = process.env): Promise<void> {
  for (let i = 0; i < 100; i++) {
    const down = up();
    if (down !== null) throw new Error(`${name} exited: ${down}`);
    if (spawnSync("nbdinfo", ["--size", uri], { encoding: "utf8", env }).status === 0) return;
    await sleep(100);
  }
  throw new Error(`${name} did not answer on ${uri} within 10 s`);
}

/** A sparse file of the volumes' size, as a tidemark volume file starts. */
function plainFile(o: Options, prefix: string): { dir: string; file: string } {
  const dir = tempDir(o, prefix);
  const file = path.join(dir, "disk.img");
  spawnSync("truncate", ["-s", `${o.volumeMiB}M`, file]);
  return { dir, file };
}

/** Spawns a server; with `readyLine`, `ready` resolves at its first line of output (or rejects when it exits first). */
function spawnServer(cmd: string, args: string[], readyLine = false): { proc: ChildProcess; exited: () => string | null; ready: Promise<void> } {
  const proc = track(spawn(cmd, args, { stdio: ["ignore", readyLine ? "pipe" : "ignore", "pipe"] }));
  let err = "";
  proc.stderr!.on("data", (d) => (err += d));
  const exited = (): string | null => (alive(proc) ? null : `${proc.signalCode ?? proc.exitCode}: ${err.trim()}`);
  const ready = !readyLine
    ? Promise.resolve()
    : new Promise<void>((resolve, reject) => {
        proc.stdout!.once("data", () => resolve());
        proc.once("exit", () => reject(new Error(`${cmd} ${args.join(" ")} exited: ${exited()}`)));
      });
  return { proc, exited, ready };
}

async function startNbdkit(o: Options, tls: BenchTls | null = null): Promise<Target> {
  const { file } = plainFile(o, "tidemark-bench-nbdkit-");
  const port = await freePort();
  const tlsArgs = tls ? ["--tls=require", `--tls-certificates=${tls.serverDir}`] : [];
  const { proc, exited } = spawnServer("nbdkit", ["-f", "-i", "127.0.0.1", "-p", String(port), ...tlsArgs, "file", `file=${file}`]);
  const uri = `${tls ? "nbds" : "nbd"}://127.0.0.1:${port}/`;
  await waitNbd("nbdkit", uri, exited, tls ? tls.fioEnv : process.env);
  const procs = [{ label: "nbdkit", proc }];
  if (tls) return { name: "nbdkit file tls", uri, procs, measured: measuredOf(procs), cluster: null, fioEnv: tls.fioEnv };
  return { name: "nbdkit file", uri, procs, measured: measuredOf(procs), cluster: null };
}

type FloorMode = { asyncIo: boolean; forwarded: boolean; journaled: boolean };

/**
 * bench/node-floor.ts serving the file: the NBD protocol and pread/pwrite in
 * one Node.js process, with its file I/O in libuv's pool or not, forwarding
 * each write to a sink process or not, with the least journal on both sides
 * or not. Its CPU per operation is the least a Node.js program pays here for
 * that work: the floor under tidemark's figures (docs/benchmarks.md).
 */
async function startNodeFloor(o: Options, m: FloorMode): Promise<Target> {
  const { file } = plainFile(o, "tidemark-bench-node-floor-");
  const port = await freePort();
  const script = path.join(path.dirname(fileURLToPath(import.meta.url)), "node-floor.ts");
  const flags = [...(m.asyncIo ? ["--async-io"] : []), ...(m.journaled ? ["--journal"] : [])];
  const procs: Proc[] = [];
  const forward: string[] = [];
  if (m.forwarded) {
    // The sink listens before the server connects to it: wait for its line.
    const { file: sinkFile } = plainFile(o, "tidemark-bench-node-sink-");
    const sinkPort = await freePort();
    const sink = spawnServer(process.execPath, ["--import", "tsx", script, ...flags, "--sink", sinkFile, String(sinkPort)], true);
    await sink.ready;
    procs.push({ label: "sink", proc: sink.proc });
    forward.push("--forward", String(sinkPort));
  }
  const { proc, exited } = spawnServer(process.execPath, ["--import", "tsx", script, ...flags, file, String(port), ...forward]);
  const uri = `nbd://127.0.0.1:${port}/`;
  await waitNbd("node floor", uri, exited);
  procs.unshift({ label: "node", proc });
  const name = ["node floor", m.forwarded && !m.journaled ? "fwd" : "", m.journaled ? "jnl" : "", m.asyncIo ? "async" : ""].filter(Boolean).join(" ");
  return { name, uri, procs, measured: measuredOf(procs), cluster: null };
}

/** qemu-nbd serving the file raw, with its defaults (writeback cache, thread-pool AIO); -t keeps it up across fio's connections. */
async function startQemuNbd(o: Options): Promise<Target> {
  const { file } = plainFile(o, "tidemark-bench-qemu-nbd-");
  const port = await freePort();
  const { proc, exited } = spawnServer("qemu-nbd", ["-f", "raw", "-b", "127.0.0.1", "-p", String(port), "-t", "-e", "8", file]);
  const uri = `nbd://127.0.0.1:${port}/`;
  await waitNbd("qemu-nbd", uri, exited);
  const procs = [{ label: "qemu-nbd", proc }];
  return { name: "qemu-nbd file", uri, procs, measured: measuredOf(procs), cluster: null };
}

/**
 * nbd-server serves each connection in a child it forks, and serves only one
 * client when kept in the foreground (-d); so it runs as the daemon it is, its
 * pid read from its pid file, and a job counts the CPU of its reaped children.
 */
async function startNbdServer(o: Options): Promise<Target> {
  const { dir, file } = plainFile(o, "tidemark-bench-nbd-server-");
  const port = await freePort();
  const conf = path.join(dir, "nbd-server.conf");
  const pidFile = path.join(dir, "nbd-server.pid");
  // The default /etc/nbd-server/config is never read: every setting is here.
  writeFileSync(conf, `[generic]\n    listenaddr = 127.0.0.1\n    port = ${port}\n[disk]\n    exportname = ${file}\n`);
  const r = spawnSync("nbd-server", ["-C", conf, "-p", pidFile], { encoding: "utf8" });
  if (r.status !== 0) throw new Error(`nbd-server exited ${r.status}: ${(r.stderr ?? "").trim()}`);
  // The daemon may create the file before it writes its pid: an empty file is waited on like a missing one.
  let pid = 0;
  for (let i = 0; i < 50 && pid === 0; i++) {
    try {
      pid = Number(readFileSync(pidFile, "utf8").trim()) || 0;
    } catch {
      pid = 0;
    }
    if (pid === 0) await sleep(100);
  }
  if (pid === 0) throw new Error(`nbd-server wrote no pid file (${pidFile})`);
  const daemon = (): string | null => {
    try {
      const st = readFileSync(`/proc/${pid}/stat`, "utf8");
      return / [ZX] /.test(st.slice(st.lastIndexOf(")"))) ? "the daemon is a zombie" : null;
    } catch {
      return `pid ${pid} is gone`;
    }
  };
  const stop = async () => {
    try {
      process.kill(pid, "SIGTERM");
    } catch {
      return;
    }
    for (let i = 0; i < 50 && daemon() === null; i++) await sleep(100);
    if (daemon() === null) process.kill(pid, "SIGKILL");
  };
  daemonStops.add(pid);
  const uri = `nbd://127.0.0.1:${port}/disk`;
  await waitNbd("nbd-server", uri, daemon).catch(async (e) => {
    await stop();
    throw e;
  });
  return { name: "nbd-server file", uri, procs: [], measured: [{ label: "nbd-server", pid, reaped: true }], stop, cluster: null };
}

/** Certificates for the TLS targets, made once per run with certtool in a temp dir. */
interface BenchTls {
  /** ca-cert.pem, server-cert.pem, server-key.pem: what nbdkit --tls-certificates reads. */
  serverDir: string;
  serverCert: string;
  serverKey: string;
  /** HOME for fio and nbdinfo: $HOME/.pki/libnbd holds the CA that checks the server. */
  fioEnv: NodeJS.ProcessEnv;
}

let benchTls: BenchTls | null = null;

async function tlsMaterial(o: Options): Promise<BenchTls> {
  if (benchTls) return benchTls;
  if (!haveCerttool("bench")) throw new Error("the TLS targets need certtool (apt-get install gnutls-bin)");
  const dir = tempDir(o, "tidemark-bench-tls-");
  const m = await makeTlsMaterial(dir, true);
  const serverDir = path.join(dir, "server");
  mkdirSync(serverDir);
  copyFileSync(m.caCert, path.join(serverDir, "ca-cert.pem"));
  copyFileSync(m.serverCert, path.join(serverDir, "server-cert.pem"));
  copyFileSync(m.serverKey, path.join(serverDir, "server-key.pem"));
  const home = path.join(dir, "home");
  mkdirSync(path.join(home, ".pki", "libnbd"), { recursive: true });
  // Only the CA: a client certificate would be offered, and the servers ask for none.
  copyFileSync(m.caCert, path.join(home, ".pki", "libnbd", "ca-cert.pem"));
  benchTls = { serverDir, serverCert: m.serverCert, serverKey: m.serverKey, fioEnv: { ...process.env, HOME: home } };
  return benchTls;
}

async function subsystemJson(id: number, vols: string[], volumeMiB: number) {
  return { id, host: "127.0.0.1", replicationPort: await freePort(), nbdPort: await freePort(), volumes: vols.map((name) => ({ name, sizeMiB: volumeMiB })) };
}

/**
 * default: links over TLS with PSK (the product's default), NBD in plain TCP;
 * off: links and NBD in plain TCP (linkTls off, allowed on loopback only);
 * on: links over TLS, NBD with tls require and an X.509 certificate.
 */
type TlsChoice = "default" | "off" | "on";

async function configOf(shape: "1x1" | "2x3", o: Options, tls: TlsChoice = "default") {
  const base = { clusterKey: "tidemark-bench-cluster-key-0123456789", dataDir: "data", clock: "monotonic", syncIntervalMs: o.syncIntervalMs };
  if (shape === "1x1") {
    const primary = await subsystemJson(1, ["p1a"], o.volumeMiB);
    const m = tls === "on" ? await tlsMaterial(o) : null;
    return {
      ...base,
      ...(tls === "off" ? { linkTls: { mode: "off" } } : {}),
      subsystems: [m ? { ...primary, nbdTls: { mode: "require", certFile: m.serverCert, keyFile: m.serverKey } } : primary, await subsystemJson(2, ["s2a"], o.volumeMiB)],
      groups: [{ name: "C1", pairs: [{ primary: "p1a", secondary: "s2a" }] }],
    };
  }
  // config/default.json's shape: primaries #1, #2; secondaries #3, #4, #5. The
  // key is given inline here, as for 1x1; the schema refuses it beside a key file.
  const { clusterKeyFile: _keyFile, ...fig1 } = await fig1Config({ volumeMiB: o.volumeMiB, syncIntervalMs: o.syncIntervalMs });
  return { ...fig1, ...base };
}

async function startTidemark(shape: "1x1" | "2x3", o: Options, tls: TlsChoice = "default"): Promise<Target> {
  const dir = tempDir(o, `tidemark-bench-${shape}-`);
  const file = path.join(dir, "config.json");
  writeFileSync(file, JSON.stringify(await configOf(shape, o, tls), null, 2));
  const topo = loadConfig(file);
  const procs: Proc[] = [];
  const clients = new Map<number, ControlClient>();
  try {
    const t = await startCluster(tls === "default" ? shape : `${shape} tls ${tls}`, dir, file, topo, procs, clients);
    if (tls !== "on") return t;
    return { ...t, uri: t.uri.replace(/^nbd:/, "nbds:"), fioEnv: (await tlsMaterial(o)).fioEnv };
  } catch (err) {
    // Whatever did start is stopped before the next target runs.
    for (const c of clients.values()) c.close();
    await Promise.all(procs.map((p) => stopProc(p.proc)));
    throw err;
  }
}

async function startCluster(shape: string, dir: string, file: string, topo: LoadedTopology, procs: Proc[], clients: Map<number, ControlClient>): Promise<Target> {
  await Promise.all(
    topo.config.subsystems.map(
      (s) =>
        new Promise<void>((resolve, reject) => {
          const log = path.join(dir, `ss${s.id}.log`);
          const proc = track(
            spawn(process.execPath, [BIN, "subsystem", "--config", file, "--id", String(s.id), "--log", log], { stdio: ["ignore", "pipe", "pipe"] }),
          );
          procs.push({ label: `#${s.id}${s.volumes.some((v) => v.name.startsWith("p")) ? "p" : "s"}`, proc });
          let err = "";
          proc.stderr!.on("data", (d) => (err += d));
          createInterface({ input: proc.stdout! }).on("line", (l) => {
            if (l.includes('"ready":true')) resolve();
          });
          proc.once("exit", (code, sig) => reject(new Error(`subsystem #${s.id} exited (${sig ?? code}) before ready: ${err.trim()} (log ${log})`)));
        }),
    ),
  );
  procs.sort((a, b) => a.label.localeCompare(b.label));
  for (const s of topo.config.subsystems) clients.set(s.id, await ControlClient.connect(topo, s.id));
  const p = topo.config.subsystems[0];
  const t: Target = { name: `tidemark ${shape}`, uri: `nbd://127.0.0.1:${p.nbdPort}/p1a`, procs, measured: measuredOf(procs), cluster: { topo, clients } };
  // Wait for the links and the first SYNC: lag must be known before a job starts.
  const t0 = Date.now();
  for (;;) {
    const s = await sample(t.cluster!);
    if (s.lagMs !== null && s.linksUp) break;
    if (Date.now() - t0 > 30_000) throw new Error(`${t.name}: links did not come up within 30 s`);
    await sleep(100);
  }
  return t;
}

async function stopTarget(t: Target): Promise<void> {
  for (const c of t.cluster?.clients.values() ?? []) c.close();
  await Promise.all(t.procs.map((p) => stopProc(p.proc)));
  await t.stop?.();
}

// ---------------------------------------------------------------- status sampling
interface Sample {
  atMs: number;
  lagMs: number | null;
  queued: number;
  applied: number;
  appliedBytes: number;
  linksUp: boolean;
}

async function sample(c: Cluster): Promise<Sample> {
  const answers = new Map<number, Answer>();
  await Promise.all(
    [...c.clients].map(async ([id, cl]) => {
      try {
        answers.set(id, { ok: true, value: await cl.request<SubsystemStatus>({ op: "status" }, 5000) });
      } catch (e) {
        answers.set(id, { ok: false, error: (e as Error).message });
      }
    }),
  );
  const doc = buildStatus(c.topo, answers, clockReader(c.topo.config.clock)());
  const g = doc.groups[0];
  let queued = 0;
  let applied = 0;
  let appliedBytes = 0;
  for (const s of g.secondaries) {
    queued += (s.rcrQueue ?? 0) + (s.diskQueue ?? 0);
    applied += s.applied ?? 0;
    appliedBytes += s.appliedBytes ?? 0;
  }
  return { atMs: performance.now(), lagMs: g.lagMs, queued, applied, appliedBytes, linksUp: doc.pairs.every((p) => p.state === "paired") };
}

function percentile(xs: number[], p: number): number {
  if (xs.length === 0) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.ceil((p / 100) * s.length) - 1)];
}

// ---------------------------------------------------------------- one job
interface Row {
  target: string;
  job: string;
  fio: FioResult;
  lagEndMs?: number | null;
  lagP99Ms?: number;
  queuedEnd?: number;
  applyPerS?: number;
  applyMiBps?: number;
  drainMs?: number | null;
  /** After fio stops: until the lag is back under one sync interval. */
  lagRecoveryMs?: number | null;
  rss: Record<string, number | null>;
  /** Per process: CPU seconds used during the job / wall seconds (1.0 = one core). */
  cpu: Record<string, number | null>;
}

async function runJob(t: Target, job: FioJob, o: Options, cwd: string): Promise<Row> {
  for (const p of t.measured) resetHwm(p.pid);
  const cpu0 = new Map(t.measured.map((p) => [p.label, cpuSeconds(p.pid, p.reaped)]));
  const wall0 = performance.now();
  const samples: Sample[] = [];
  let sampling = t.cluster !== null;
  const sampler = (async () => {
    while (sampling) {
      const started = performance.now();
      samples.push(await sample(t.cluster!));
      await sleep(Math.max(0, SAMPLE_MS - (performance.now() - started)));
    }
  })();
  process.stdout.write(`bench: ${t.name}: ${job.name} (${job.bs}, iodepth ${job.iodepth}, ${o.seconds} s) ... `);
  let fio: FioResult;
  try {
    fio = await runFio(nbdFioArgs(t.uri, job, o.volumeMiB), o.seconds, cwd, t.fioEnv);
  } finally {
    sampling = false;
    await sampler;
  }
  const wall = (performance.now() - wall0) / 1000;
  const row: Row = { target: t.name, job: job.name, fio, rss: {}, cpu: {} };
  // A forked server's child is counted once its parent has reaped it.
  for (const p of t.measured) if (p.reaped) await childrenReaped(p.pid);
  for (const p of t.measured) {
    const a = cpu0.get(p.label);
    const b = cpuSeconds(p.pid, p.reaped);
    row.cpu[p.label] = a === null || a === undefined || b === null ? null : (b - a) / wall;
  }
  if (t.cluster) {
    const end = await sample(t.cluster);
    const first = samples[0] ?? end;
    const secs = (end.atMs - first.atMs) / 1000;
    row.lagEndMs = end.lagMs;
    row.lagP99Ms = percentile(samples.map((s) => s.lagMs ?? NaN).filter((x) => !Number.isNaN(x)), 99);
    row.queuedEnd = end.queued;
    row.applyPerS = secs > 0 ? (end.applied - first.applied) / secs : 0;
    row.applyMiBps = secs > 0 ? (end.appliedBytes - first.appliedBytes) / MiB / secs : 0;
    // Drain before the next job so each starts from empty queues.
    row.drainMs = null;
    row.lagRecoveryMs = null;
    if (job.write) {
      const t0 = performance.now();
      for (;;) {
        const s = await sample(t.cluster);
        if (row.lagRecoveryMs === null && s.lagMs !== null && s.lagMs < o.syncIntervalMs) row.lagRecoveryMs = performance.now() - t0;
        if (s.queued === 0 && row.lagRecoveryMs !== null) {
          row.drainMs = performance.now() - t0;
          break;
        }
        if (performance.now() - t0 > DRAIN_TIMEOUT_MS) break;
        await sleep(50);
      }
    }
  }
  for (const p of t.measured) row.rss[p.label] = vmHwmMiB(p.pid);
  process.stdout.write(`${fio.iops.toFixed(0)} IOPS, ${fio.mibps.toFixed(1)} MiB/s\n`);
  return row;
}

async function rawDisk(o: Options): Promise<FioResult> {
  const dir = tempDir(o, "tidemark-bench-raw-");
  process.stdout.write(`bench: raw disk: fio libaio direct=1 1 MiB sequential write, iodepth 8, ${o.seconds} s ... `);
  const r = await runFio(
    [
      "--name=raw",
      "--ioengine=libaio",
      "--direct=1",
      "--rw=write",
      "--bs=1M",
      "--iodepth=8",
      `--size=${o.volumeMiB}M`,
      `--filename=${path.join(dir, "raw.dat")}`,
    ],
    o.seconds,
    dir,
  );
  process.stdout.write(`${r.mibps.toFixed(1)} MiB/s\n`);
  rmSync(dir, { recursive: true, force: true });
  tempDirs.delete(dir);
  return r;
}

// ---------------------------------------------------------------- report
function fmt(n: number | null | undefined, digits = 0): string {
  if (n === null || n === undefined || Number.isNaN(n)) return "-";
  return n.toFixed(digits);
}

function lat(us: number): string {
  if (Number.isNaN(us)) return "-";
  return us >= 1000 ? `${(us / 1000).toFixed(1)}ms` : `${us.toFixed(0)}us`;
}

function table(rows: string[][]): string {
  const w = rows[0].map((_, i) => Math.max(...rows.map((r) => (r[i] ?? "").length)));
  return rows.map((r) => r.map((c, i) => (i === 0 || i === 1 ? c.padEnd(w[i]) : c.padStart(w[i]))).join("  ")).join("\n");
}

/** CPU of all the target's processes per fio operation, in µs (for 1 MiB jobs, per MiB). */
function cpuPerOpUs(r: Row): number {
  return (Object.values(r.cpu).reduce<number>((n, v) => n + (v ?? 0), 0) * 1e6) / r.fio.iops;
}

const UNREPLICATED = new Set(["nbdkit file", "nbd-server file", "qemu-nbd file", "nbdkit file tls", "node floor", "node floor async", "node floor fwd", "node floor jnl", "node floor jnl async"]);

function report(rows: Row[], raw: FioResult | null, o: Options): string {
  const base = new Map(rows.filter((r) => r.target === "nbdkit file").map((r) => [r.job, r.fio]));
  const head = ["target", "job", "IOPS", "MiB/s", "p50", "p99", "x nbdkit", "CPU us/op", "lag end", "lag p99", "lag back", "queued end", "apply/s", "apply MiB/s", "drain", "peak RSS MiB", "CPU (cores)"];
  const body = rows.map((r) => {
    const b = base.get(r.job);
    const ratio = b && r.target !== "nbdkit file" ? (r.job === "randread" ? r.fio.iops / b.iops : r.fio.mibps / b.mibps) : NaN;
    const rss = Object.entries(r.rss)
      .map(([k, v]) => `${k}:${fmt(v)}`)
      .join(" ");
    return [
      r.target,
      r.job,
      fmt(r.fio.iops),
      fmt(r.fio.mibps, 1),
      lat(r.fio.p50us),
      lat(r.fio.p99us),
      Number.isNaN(ratio) ? "-" : `${ratio.toFixed(2)}x`,
      fmt(cpuPerOpUs(r), cpuPerOpUs(r) < 100 ? 1 : 0),
      r.lagEndMs === undefined ? "-" : `${fmt(r.lagEndMs, 0)}ms`,
      r.lagP99Ms === undefined ? "-" : `${fmt(r.lagP99Ms, 0)}ms`,
      r.lagRecoveryMs === undefined || r.lagRecoveryMs === null ? "-" : `${(r.lagRecoveryMs / 1000).toFixed(2)}s`,
      fmt(r.queuedEnd),
      fmt(r.applyPerS),
      fmt(r.applyMiBps, 1),
      r.drainMs === undefined || (r.drainMs === null && r.job === "randread") ? "-" : r.drainMs === null ? ">timeout" : `${(r.drainMs / 1000).toFixed(1)}s`,
      rss,
      Object.entries(r.cpu)
        .map(([k, v]) => `${k}:${fmt(v, 2)}`)
        .join(" "),
    ];
  });
  const lines = [
    "",
    `tidemark bench: ${o.seconds} s per job, ${o.volumeMiB} MiB volumes, syncIntervalMs ${o.syncIntervalMs}, ${os.cpus().length} CPUs, ${(os.totalmem() / 1024 ** 3).toFixed(1)} GiB, ${new Date().toISOString()}`,
    table([head, ...body]),
    "",
  ];
  if (raw) {
    const quarter = raw.mibps / 4;
    lines.push(`raw disk (fio libaio direct=1, 1 MiB seq write, iodepth 8): ${raw.mibps.toFixed(1)} MiB/s; raw/4 = ${quarter.toFixed(1)} MiB/s`);
    for (const r of rows.filter((x) => x.job === "seqwrite" && !UNREPLICATED.has(x.target))) {
      lines.push(`  ${r.target} 1 MiB seq write: ${r.fio.mibps.toFixed(1)} MiB/s = ${(r.fio.mibps / quarter).toFixed(2)}x raw/4 (target >= 0.6x)`);
    }
  }
  // Issue 12's targets, for every replicated target in the run.
  const qemu = new Map(rows.filter((r) => r.target === "qemu-nbd file").map((r) => [r.job, r.fio]));
  for (const r of rows.filter((x) => !UNREPLICATED.has(x.target) && x.job !== "randwrite-half")) {
    const b = base.get(r.job);
    const cpu = cpuPerOpUs(r);
    if (r.job === "randwrite") {
      const q = qemu.get("randwrite");
      lines.push(
        `  ${r.target} 4 KiB randwrite: ${b ? `${(r.fio.iops / b.iops).toFixed(2)}x nbdkit` : "no nbdkit in this run"} (target >= 0.35x)` +
          `, ${q ? `${(r.fio.iops / q.iops).toFixed(2)}x qemu-nbd` : "no qemu-nbd in this run"} (target > 1x)` +
          `; CPU ${cpu.toFixed(1)} us per write (target <= 50 us)`,
      );
    } else if (r.job === "seqwrite") lines.push(`  ${r.target} 1 MiB seq write: CPU ${(cpu / 1000).toFixed(2)} ms per MiB (target <= 2 ms)`);
    else if (r.job === "randread") lines.push(`  ${r.target} 4 KiB randread: CPU ${cpu.toFixed(1)} us per read (target <= 15 us)`);
  }
  // TLS cost: the same jobs with TLS on and off, and nbdkit's own cost as a reference.
  for (const [on, off] of [
    ["tidemark 1x1 tls on", "tidemark 1x1 tls off"],
    ["nbdkit file tls", "nbdkit file"],
  ] as const) {
    // randwrite-half is rate-limited: its IOPS say nothing of TLS.
    for (const r of rows.filter((x) => x.target === on && x.job !== "randwrite-half")) {
      const plain = rows.find((x) => x.target === off && x.job === r.job);
      if (!plain) continue;
      const perOp = r.job === "seqwrite" ? "MiB" : "op";
      const scale = r.job === "seqwrite" ? r.fio.iops / r.fio.mibps : 1;
      lines.push(
        `  TLS cost, ${on.replace(/ tls on$| tls$/, "")} ${r.job}: ${fmt(r.fio.iops)} IOPS with TLS, ${fmt(plain.fio.iops)} without (${(r.fio.iops / plain.fio.iops).toFixed(2)}x); ` +
          `CPU per ${perOp} ${fmt(cpuPerOpUs(r) * scale, 1)} µs with, ${fmt(cpuPerOpUs(plain) * scale, 1)} µs without`,
      );
    }
  }
  for (const r of rows.filter((x) => x.job === "randwrite-half")) {
    const p99 = r.lagP99Ms ?? NaN;
    const back = r.lagRecoveryMs ?? NaN;
    lines.push(
      `  ${r.target} at half rate (${fmt(r.fio.iops)} IOPS): lag p99 ${fmt(p99, 0)} ms (target <= ${2 * o.syncIntervalMs} ms), back under ${o.syncIntervalMs} ms ${(back / 1000).toFixed(2)} s after fio stopped (target <= 1 s)`,
    );
  }
  if (takeoverLine) lines.push(takeoverLine);
  lines.push(
    "columns: lag = now - lowest 112 of the group (status lagMs), sampled every 250 ms during the job; queued end = RCR + disk queue rows on all secondaries when fio stopped;",
    "lag back = time after fio stops until the lag is under one sync interval; randwrite-half = randwrite with fio --rate_iops at half what randwrite reached;",
    "apply/s = rows applied per second on all secondaries during the job; drain = time after fio stops until every secondary queue is empty; peak RSS = VmHWM per process during the job (p primary, s secondary);",
    "CPU = CPU seconds of each process during the job (fio run, before drain) / wall seconds; 1.00 = one of the machine's cores.",
    "CPU us/op = the CPU of all the target's processes (not fio's) per fio operation, in microseconds; a 1 MiB job's operation is one MiB. nbd-server's includes its per-connection children.",
    "",
  );
  return lines.join("\n");
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

// ---------------------------------------------------------------- takeover
let takeoverLine: string | null = null;

/**
 * Takeover with a large queue to apply: in the 2x3 topology primary #2 is
 * stopped (SIGSTOP), so 112 stays put while o.takeoverMiB of 1 MiB writes to
 * p1a queue up on secondary #3; #2 goes on (SIGCONT), its SYNCs make the
 * whole queue due, and the takeover applies it. Against: the time to write
 * the same bytes to a plain file on the same disk with fdatasync.
 */
async function takeoverBench(o: Options): Promise<string> {
  const mib = o.takeoverMiB;
  const dir = tempDir(o, "tidemark-bench-takeover-");
  const file = path.join(dir, "config.json");
  const cfg = { ...(await configOf("2x3", { ...o, volumeMiB: Math.max(o.volumeMiB, mib + 64) })), rcm: { port: await freePort(), autoSuspend: false } };
  writeFileSync(file, JSON.stringify(cfg, null, 2));
  const topo = loadConfig(file);
  const procs: Proc[] = [];
  const clients = new Map<number, ControlClient>();
  let t: Target | null = null;
  try {
    t = await startCluster("2x3 takeover", dir, file, topo, procs, clients);
    const rcm = track(spawn(process.execPath, [BIN, "rcm", "--config", file, "--log", path.join(dir, "rcm.log")], { stdio: ["ignore", "pipe", "pipe"] }));
    procs.push({ label: "rcm", proc: rcm });
    await new Promise<void>((resolve, reject) => {
      createInterface({ input: rcm.stdout! }).on("line", (l) => l.includes('"ready":true') && resolve());
      rcm.once("exit", (code) => reject(new Error(`rcm exited ${code} before ready`)));
    });
    const p2 = procs.find((p) => p.label === "#2p")!.proc;
    p2.kill("SIGSTOP");
    const uri = `nbd://127.0.0.1:${topo.config.subsystems[0].nbdPort}/p1a`;
    const fill = spawnSync("fio", ["--name=fill", "--ioengine=nbd", `--uri=${uri}`, "--rw=write", "--bs=1M", "--iodepth=8", `--size=${mib}M`], {
      cwd: dir,
      encoding: "utf8",
    });
    if (fill.status !== 0) throw new Error(`fio fill: ${fill.stderr}`);
    // Every RCR is queued on #3 (acknowledged) before #2 goes on.
    const t0 = Date.now();
    for (;;) {
      const s = await sample(t.cluster!);
      if (s.queued >= mib) break;
      if (Date.now() - t0 > 600_000) throw new Error(`only ${s.queued} of ${mib} RCRs queued after 600 s`);
      await sleep(200);
    }
    // The issue's memory target: RSS flat while the queue grows (payloads stream from segments).
    const rssQueued = procs.map((p) => `${p.label}:${fmt(vmHwmMiB(p.proc.pid!))}`).join(" ");
    p2.kill("SIGCONT");
    await sleep(o.syncIntervalMs * 4);
    const started = Date.now();
    const r = spawnSync(process.execPath, [BIN, "takeover", "--config", file, "--group", "C1", "--json"], { encoding: "utf8", maxBuffer: 16 << 20 });
    const wallMs = Date.now() - started;
    if (r.status !== 0) throw new Error(`takeover: ${r.stderr}`);
    const rep = JSON.parse(r.stdout) as { elapsedMs: number; secondaries: { appliedNow?: number; dropped?: number }[] };
    const applied = rep.secondaries.reduce((n, s) => n + (s.appliedNow ?? 0), 0);
    const ref = spawnSync("fio", ["--name=ref", "--ioengine=psync", "--rw=write", "--bs=1M", `--size=${mib}M`, "--end_fsync=1", `--filename=${path.join(dir, "ref.img")}`, "--output-format=json"], {
      encoding: "utf8",
      maxBuffer: 16 << 20,
    });
    const refMs = ref.status === 0 ? (JSON.parse(ref.stdout) as { jobs: { elapsed: number; write: { runtime: number } }[] }).jobs[0].write.runtime : NaN;
    return (
      `takeover with ${mib} MiB queued on secondary #3: ${rep.elapsedMs} ms in the RCM (${wallMs} ms for the command), ${applied} RCRs applied by it; ` +
      `writing ${mib} MiB to a file on the same disk with fdatasync: ${refMs} ms; ratio ${(rep.elapsedMs / refMs).toFixed(2)} (target <= 1.2)\n` +
      `  peak RSS MiB of every process while ${mib} MiB were queued on secondary #3: ${rssQueued} (target < 200)`
    );
  } finally {
    for (const c of clients.values()) c.close();
    for (const p of procs) p.proc.kill("SIGCONT");
    await Promise.all(procs.map((p) => stopProc(p.proc)));
  }
}

// ---------------------------------------------------------------- main
async function main(): Promise<void> {
  const o = parseArgs(process.argv.slice(2));
  keepDirs = o.keep;
  checkTools();
  const work = tempDir(o, "tidemark-bench-fio-");
  const rows: Row[] = [];
  const jobs = JOBS.filter((j) => !o.jobs || o.jobs.has(j.name));
  let raw: FioResult | null = null;
  if (!o.only || o.only.has("raw")) raw = await rawDisk(o);
  const shapes: [string, () => Promise<Target>][] = [
    ["nbdkit", () => startNbdkit(o)],
    ["nbd-server", () => startNbdServer(o)],
    ["qemu-nbd", () => startQemuNbd(o)],
    ["1x1", () => startTidemark("1x1", o)],
    ["2x3", () => startTidemark("2x3", o)],
  ];
  // The TLS cost targets and the Node.js floor run only when --only names them (usage()).
  const namedOnly: [string, () => Promise<Target>][] = [
    ["nbdkit-tls", async () => startNbdkit(o, await tlsMaterial(o))],
    ["1x1-tls-off", () => startTidemark("1x1", o, "off")],
    ["1x1-tls-on", () => startTidemark("1x1", o, "on")],
    ["node-floor", () => startNodeFloor(o, { asyncIo: false, forwarded: false, journaled: false })],
    ["node-floor-async", () => startNodeFloor(o, { asyncIo: true, forwarded: false, journaled: false })],
    ["node-floor-fwd", () => startNodeFloor(o, { asyncIo: false, forwarded: true, journaled: false })],
    ["node-floor-jnl", () => startNodeFloor(o, { asyncIo: false, forwarded: true, journaled: true })],
    ["node-floor-jnl-async", () => startNodeFloor(o, { asyncIo: true, forwarded: true, journaled: true })],
  ];
  for (const s of namedOnly) if (o.only?.has(s[0])) shapes.push(s);
  // A target that fails (a subsystem that does not start, fio that errors)
  // is reported and the others still run: the table shows what was measured.
  const failures: string[] = [];
  const skipped: string[] = [];
  for (const [key, start] of shapes) {
    if (o.only && !o.only.has(key)) continue;
    if (interrupted) break;
    const missing = peerMissing(key);
    if (missing !== null) {
      skipped.push(`${key}: ${missing}`);
      process.stdout.write(`bench: ${key} skipped: ${missing}\n`);
      continue;
    }
    let t: Target | null = null;
    try {
      t = await start();
      for (const job of jobs) {
        if (interrupted) break;
        const row = await runJob(t, job, o, work);
        rows.push(row);
        // The lag target is stated at half the maximum rate: the same job, rate-limited.
        if (job.name === "randwrite" && t.cluster && !interrupted) {
          const half = { ...job, name: "randwrite-half" as const, rateIops: Math.max(1, Math.round(row.fio.iops / 2)) };
          rows.push(await runJob(t, half, o, work));
        }
      }
    } catch (err) {
      failures.push(`${key}: ${(err as Error).message}`);
      process.stderr.write(`bench: ${key} failed: ${(err as Error).message}\n`);
    } finally {
      if (t) await stopTarget(t);
    }
  }
  if ((!o.only || o.only.has("takeover")) && !interrupted) {
    try {
      takeoverLine = await takeoverBench(o);
    } catch (err) {
      failures.push(`takeover: ${(err as Error).message}`);
      process.stderr.write(`bench: takeover failed: ${(err as Error).message}\n`);
    }
  }
  let text = report(rows, raw, o);
  if (skipped.length > 0) text += `skipped targets:\n  ${skipped.join("\n  ")}\n`;
  if (failures.length > 0) text += `FAILED targets (not in the table):\n  ${failures.join("\n  ")}\n`;
  process.stdout.write(text);
  if (o.json) writeFileSync(o.json, JSON.stringify({ options: { ...o, only: o.only && [...o.only], jobs: o.jobs && [...o.jobs] }, raw, rows, failures, text }, null, 2));
  if (failures.length > 0) process.exitCode = 1;
}

main().then(
  () => {
    cleanupSync();
    process.exit(process.exitCode ?? 0);
  },
  (err: Error) => {
    process.stderr.write(`bench: ${err.message}\n`);
    if (keepDirs) process.stderr.write(`bench: temp dirs kept: ${[...tempDirs].join(" ")}\n`);
    cleanupSync();
    process.exit(1);
  },
);


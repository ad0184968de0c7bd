// The fuzzer against real processes: a 1x1 cluster (primary #1 with p1,
// secondary #2 with s1, group C1) started as the integration tests start one,
// inputs run CONCURRENCY at a time in batches, and after each batch the checks
// of docs/fuzzing.md: same pids, every export answers a real NBD read, every
// control port answers status, RSS and open fds bounded. After the sweep a
// replicated write must reach the secondary and every pair be cmp-identical.
import { readFileSync, readdirSync } from "node:fs";
import { randomBytes } from "node:crypto";
import { TestCluster, cmp, freePort } from "../support/cluster.ts";
import { describeInput, type FuzzInput } from "./input.ts";
import { STALL_EVERY, generateInput, type FuzzTopology } from "./generate.ts";
import { runInput, type Outcome } from "./send.ts";

const VOLUME_MIB = 8;
/** What a process may hold after a batch over what it held before the first: more is a leak. */
export const RSS_GROWTH_MAX_MIB = 192;
/**
 * Peak RSS (VmHWM) allowed for any process over the sweep. An NBD connection
 * may hold IN_FLIGHT_BYTES_MAX (64 MiB) of payloads and replies, and the
 * sweep runs CONCURRENCY connections; inputs send at most 2 MiB each, so reads
 * are what can fill that budget.
 */
export const RSS_PEAK_MAX_MIB = 1024;
/**
 * Open fds a process may keep over its count at start once a batch's
 * connections are gone: the primary holds 4 to 6 more after its first
 * batches (payload segment files, its link to the secondary), flat after. A
 * connection the server refused lingers up to LINK_CLOSE_GRACE_MS (2 s) when
 * the peer does not close its side, so the check waits up to FD_SETTLE_MS.
 */
export const FD_SLACK = 10;
const FD_SETTLE_MS = 10_000;
/** A check (an NBD read, a status) must answer within this, even on a loaded machine. */
const CHECK_DEADLINE_MS = 20_000;

export interface SweepOptions {
  from: number;
  inputs: number;
  concurrency: number;
  batch: number;
  /** After its last byte, the server must close a half-closed connection within this. */
  deadlineMs: number;
  maxFailures: number;
  log: (line: string) => void;
}

export interface Failure {
  kind: "hang" | "crash" | "check" | "reply";
  seeds: number[];
  detail: string;
}

export interface ProcessFigures {
  id: number;
  pid: number;
  rssStartMiB: number;
  rssEndMiB: number;
  rssMaxAfterBatchMiB: number;
  hwmMiB: number;
  fdsStart: number;
  fdsMaxAfterBatch: number;
}

export interface SweepReport {
  inputs: number;
  seconds: number;
  perSecond: number;
  outcomes: Record<Outcome["closedBy"], number>;
  byPort: Record<string, number>;
  bytesSent: number;
  /** Inputs stalled mid-handshake (closed by the server's deadline, or a hang). */
  stalls: number;
  failures: Failure[];
  processes: ProcessFigures[];
}

export function replayCommand(seed: number): string {
  return `npm run fuzz -- --replay ${seed}`;
}

export class FuzzCluster {
  private constructor(
    readonly cluster: TestCluster,
    readonly topology: FuzzTopology,
  ) {}

  static async start(): Promise<FuzzCluster> {
    const ss = async (id: number, volume: string) => ({
      id,
      host: "127.0.0.1",
      replicationPort: await freePort(),
      nbdPort: await freePort(),
      volumes: [{ name: volume, sizeMiB: VOLUME_MIB }],
    });
    const cluster = TestCluster.create(
      {
        clusterKey: "fuzz-cluster-key-0123456789",
        // The fuzzer speaks the frame layer itself, in the clear: link TLS off
        // (allowed on loopback only) so its inputs reach the handshake and the
        // frame decoder rather than stop at the TLS record layer.
        linkTls: { mode: "off" },
        dataDir: "data",
        syncIntervalMs: 20,
        reconnectMs: 100,
        logLevel: "warn",
        subsystems: [await ss(1, "p1"), await ss(2, "s1")],
        groups: [{ name: "C1", pairs: [{ primary: "p1", secondary: "s1" }] }],
      },
      "tidemark-fuzz-",
    );
    const sizeBytes = VOLUME_MIB * 1024 * 1024;
    const maxPayloadBytes = cluster.topo.config.nbdMaxPayloadBytes;
    const volumes = [
      { name: "p1", sizeBytes },
      { name: "s1", sizeBytes },
    ];
    const topology: FuzzTopology = {
      nbd: [
        { subsystem: 1, exports: [{ name: "p1", sizeBytes }], maxPayloadBytes },
        { subsystem: 2, exports: [{ name: "s1", sizeBytes }], maxPayloadBytes },
      ],
      wire: [1, 2].map((subsystem) => ({ subsystem, primaryIds: [1], groups: ["C1"], volumes })),
    };
    await cluster.startAll();
    return new FuzzCluster(cluster, topology);
  }

  endpoint(input: FuzzInput): { host: string; port: number } {
    const s = this.cluster.topo.config.subsystems.find((x) => x.id === input.subsystem)!;
    return { host: s.host, port: input.port === "nbd" ? s.nbdPort : s.replicationPort };
  }

  pid(id: number): number {
    return this.cluster.procs.get(id)!.pid!;
  }

  async destroy(): Promise<void> {
    await this.cluster.destroy();
  }
}

function procStatusMiB(pid: number, field: "VmRSS" | "VmHWM"): number {
  const m = new RegExp(`^${field}:\\s+(\\d+) kB`, "m").exec(readFileSync(`/proc/${pid}/status`, "utf8"));
  return m ? Math.round(Number(m[1]) / 1024) : NaN;
}

function fdCount(pid: number): number {
  return readdirSync(`/proc/${pid}/fd`).length;
}

function within<T>(ms: number, what: string, p: Promise<T>): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const t = new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(`${what}: no answer within ${ms} ms`)), ms)));
  return Promise.race([p, t]).finally(() => clearTimeout(timer));
}

/** The checks after a batch; returns what is wrong (empty when all hold). */
async function checkBatch(fc: FuzzCluster, figures: ProcessFigures[], openStalls: Map<number, number>): Promise<string[]> {
  const problems: string[] = [];
  const c = fc.cluster;
  for (const f of figures) {
    if (!c.alive(f.id) || fc.pid(f.id) !== f.pid) problems.push(`subsystem #${f.id} (pid ${f.pid}) is gone: ${c.unexpectedDeaths().join("; ")}`);
  }
  if (problems.length) return problems;
  for (const name of ["p1", "s1"]) {
    try {
      await within(CHECK_DEADLINE_MS, `NBD read of ${name}`, (async () => {
        const nbd = await c.nbd(name);
        const data = await nbd.read(0, 4096);
        await nbd.close();
        if (data.length !== 4096) throw new Error(`read ${data.length} bytes, not 4096`);
      })());
    } catch (err) {
      problems.push(`export ${name} does not answer: ${(err as Error).message}`);
    }
  }
  for (const f of figures) {
    try {
      await within(CHECK_DEADLINE_MS, `status of #${f.id}`, c.rawStatus(f.id));
    } catch (err) {
      problems.push(`control port of #${f.id} does not answer: ${(err as Error).message}`);
    }
  }
  // Connections the server closes (a reset, a grace period) take a moment to leave the fd table.
  const until = Date.now() + FD_SETTLE_MS;
  for (const f of figures) {
    // A stalled input's connection is still open by design: one fd each.
    const allowed = () => f.fdsStart + FD_SLACK + (openStalls.get(f.id) ?? 0);
    let fds = fdCount(f.pid);
    while (fds > allowed() && Date.now() < until) {
      await new Promise((r) => setTimeout(r, 100));
      fds = fdCount(f.pid);
    }
    f.fdsMaxAfterBatch = Math.max(f.fdsMaxAfterBatch, fds);
    if (fds > allowed()) problems.push(`subsystem #${f.id} holds ${fds} fds after the batch, more than ${f.fdsStart} at start + ${FD_SLACK} + ${openStalls.get(f.id) ?? 0} stalled`);
    const rss = procStatusMiB(f.pid, "VmRSS");
    f.rssEndMiB = rss;
    f.rssMaxAfterBatchMiB = Math.max(f.rssMaxAfterBatchMiB, rss);
    f.hwmMiB = procStatusMiB(f.pid, "VmHWM");
    if (rss > f.rssStartMiB + RSS_GROWTH_MAX_MIB) problems.push(`subsystem #${f.id} RSS ${rss} MiB after the batch, more than ${f.rssStartMiB} at start + ${RSS_GROWTH_MAX_MIB}`);
    if (f.hwmMiB > RSS_PEAK_MAX_MIB) problems.push(`subsystem #${f.id} peak RSS ${f.hwmMiB} MiB, more than ${RSS_PEAK_MAX_MIB}`);
  }
  return problems;
}

export async function runSweep(fc: FuzzCluster, o: SweepOptions): Promise<SweepReport> {
  const c = fc.cluster;
  const figures: ProcessFigures[] = c.ids.map((id) => {
    const pid = fc.pid(id);
    const rss = procStatusMiB(pid, "VmRSS");
    return { id, pid, rssStartMiB: rss, rssEndMiB: rss, rssMaxAfterBatchMiB: rss, hwmMiB: procStatusMiB(pid, "VmHWM"), fdsStart: fdCount(pid), fdsMaxAfterBatch: 0 };
  });
  o.log(
    `fuzz: seeds ${o.from}..${o.from + o.inputs - 1}, ${o.concurrency} at a time, batches of ${o.batch}; bounds: RSS growth ${RSS_GROWTH_MAX_MIB} MiB, ` +
      `peak RSS ${RSS_PEAK_MAX_MIB} MiB, fds +${FD_SLACK}, close within ${o.deadlineMs} ms after the client's FIN; ` +
      figures.map((f) => `#${f.id} pid ${f.pid} RSS ${f.rssStartMiB} MiB fds ${f.fdsStart}`).join(", "),
  );
  const report: SweepReport = { inputs: 0, seconds: 0, perSecond: 0, outcomes: { server: 0, client: 0, hang: 0 }, byPort: {}, bytesSent: 0, stalls: 0, failures: [], processes: figures };
  const started = Date.now();
  const inFlight = new Set<number>();
  // Stalled inputs wait for the server's handshake deadline (up to 40 s) without holding a worker.
  const stalls: Promise<void>[] = [];
  const openStalls = new Map<number, number>();
  let crashed: Failure | null = null;
  const onExit = (id: number) => () => {
    crashed ??= { kind: "crash", seeds: [...inFlight].sort((a, b) => a - b), detail: `subsystem #${id} died while these inputs were in flight: ${c.unexpectedDeaths().join("; ") || "(no stderr)"}` };
  };
  const listeners = c.ids.map((id) => {
    const l = onExit(id);
    c.procs.get(id)!.once("exit", l);
    return [id, l] as const;
  });
  const record = (seed: number, input: FuzzInput, out: Outcome): void => {
    report.inputs++;
    report.outcomes[out.closedBy]++;
    if (input.ending === "stall") report.stalls++;
    report.byPort[input.port] = (report.byPort[input.port] ?? 0) + 1;
    report.bytesSent += input.steps.reduce((n, s) => n + (s.kind === "send" ? s.bytes.length : 0), 0);
    if (out.replyProblem) report.failures.push({ kind: "reply", seeds: [seed], detail: `${out.replyProblem}\n${describeInput(input)}` });
    if (out.connectError && !crashed) report.failures.push({ kind: "check", seeds: [seed], detail: `cannot connect: ${out.connectError}\n${describeInput(input)}` });
    else if (out.closedBy === "hang")
      report.failures.push({
        kind: "hang",
        seeds: [seed],
        detail:
          input.ending === "stall"
            ? `the server kept a connection stalled in its handshake open for ${input.stallMs} ms (received ${out.received} bytes)\n${describeInput(input)}`
            : `the server did not close the connection within ${o.deadlineMs} ms of the client's last byte (${input.ending === "wait" ? "DISC" : "FIN"}; received ${out.received} bytes)\n${describeInput(input)}`,
      });
  };
  const launch = (seed: number): { input: FuzzInput; run: Promise<void> } => {
    const input = generateInput(seed, fc.topology);
    inFlight.add(seed);
    const run = runInput(input, fc.endpoint(input), c.topo.config.clusterKey!, o.deadlineMs).then((out) => {
      inFlight.delete(seed);
      record(seed, input, out);
    });
    return { input, run };
  };
  // Stalled inputs wait for the server's handshake deadline (up to 40 s): a
  // batch's stalls start with the batch, in the background, so none holds a
  // worker. Not all of the sweep's at its start: a long sweep's (2,500 in a
  // million) would fill the servers' per-peer connection limit (every input
  // comes from 127.0.0.1) and every other input would be refused at accept.
  const isStall = (seed: number) => seed % STALL_EVERY === STALL_EVERY - 1;
  const startStalls = (first: number, last: number) => {
    for (let seed = first; seed < last; seed++) {
      if (!isStall(seed)) continue;
      const { input, run } = launch(seed);
      openStalls.set(input.subsystem, (openStalls.get(input.subsystem) ?? 0) + 1);
      stalls.push(run.finally(() => openStalls.set(input.subsystem, openStalls.get(input.subsystem)! - 1)));
    }
  };
  try {
    for (let first = o.from; first < o.from + o.inputs && !crashed && report.failures.length < o.maxFailures; first += o.batch) {
      const last = Math.min(first + o.batch, o.from + o.inputs);
      startStalls(first, last);
      let next = first;
      const worker = async () => {
        while (next < last && !crashed) {
          const seed = next++;
          if (!isStall(seed)) await launch(seed).run;
        }
      };
      await Promise.all(Array.from({ length: o.concurrency }, worker));
      if (crashed) break;
      const problems = await checkBatch(fc, figures, openStalls);
      if (problems.length) report.failures.push({ kind: "check", seeds: range(first, last), detail: problems.join("\n") });
      const secs = (Date.now() - started) / 1000;
      o.log(
        `fuzz: ${report.inputs} inputs in ${secs.toFixed(1)} s (${(report.inputs / secs).toFixed(0)}/s); ` +
          figures.map((f) => `#${f.id} RSS ${f.rssEndMiB} MiB (peak ${f.hwmMiB}) fds ${fdCount(f.pid)}`).join(", ") +
          (problems.length ? `; PROBLEMS: ${problems.join("; ")}` : ""),
      );
      if (problems.some((p) => p.includes("is gone"))) break;
    }
    if (openStalls.size && [...openStalls.values()].some((n) => n > 0)) o.log("fuzz: waiting for the servers to close the stalled handshakes still open");
    await Promise.all(stalls);
  } finally {
    for (const [id, l] of listeners) c.procs.get(id)?.off("exit", l);
  }
  if (crashed) report.failures.push(crashed);
  report.seconds = (Date.now() - started) / 1000;
  report.perSecond = report.inputs / report.seconds;
  return report;
}

function range(from: number, to: number): number[] {
  return Array.from({ length: to - from }, (_, i) => from + i);
}

/** After the sweep: a write through p1 reaches s1 (quiesce through the CLI), every pair is cmp-identical, and no log has an error or fatal line. */
export async function finalCheck(fc: FuzzCluster, seed: number): Promise<string[]> {
  const c = fc.cluster;
  const problems: string[] = [];
  const data = randomBytes(64 * 1024);
  const offset = (seed % (VOLUME_MIB * 16 - 1)) * 64 * 1024;
  try {
    const p = await c.nbd("p1");
    await p.write(offset, data, { fua: true });
    await p.disconnect();
    await c.quiesce("C1", 120_000);
    const s = await c.nbd("s1");
    const back = await s.read(offset, data.length);
    await s.close();
    if (!back.equals(data)) problems.push(`the write of 64 KiB at ${offset} on p1 did not reach s1 after quiesce`);
  } catch (err) {
    problems.push(`replicated write and quiesce failed: ${(err as Error).message}`);
  }
  for (const pair of c.pairFiles()) {
    const diff = await cmp(pair.primary, pair.secondary);
    if (diff !== null) problems.push(`${pair.name} differs: ${diff}`);
  }
  // A refused input is a warning with its peer; an error or fatal line means an input reached a path nobody expected.
  for (const id of c.ids) {
    const bad = c
      .readLog(id)
      .split("\n")
      .filter((l) => /^\{"level":(5|6)\d,/.test(l));
    if (bad.length) problems.push(`subsystem #${id} logged ${bad.length} error or fatal lines, the first: ${bad[0].slice(0, 500)}`);
  }
  return problems;
}

/** A failure with its replay commands; a crash also prints the bytes of each input that was in flight. */
export function formatFailure(f: Failure, topology: FuzzTopology): string {
  const bytes = f.kind === "crash" ? "\n" + f.seeds.slice(0, 16).map((s) => describeInput(generateInput(s, topology))).join("\n") : "";
  const replay = f.seeds.length === 0 ? "  npm run fuzz -- --inputs 1 --slow-drip" : f.seeds.length <= 16 ? f.seeds.map((s) => `  ${replayCommand(s)}`).join("\n") : `  seeds ${f.seeds[0]}..${f.seeds[f.seeds.length - 1]}: npm run fuzz -- --from ${f.seeds[0]} --inputs ${f.seeds.length}`;
  return `FUZZ ${f.kind.toUpperCase()}: ${f.detail}${bytes}\nreplay:\n${replay}`;
}

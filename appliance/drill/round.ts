// One drill round on a running topology, in four steps: (1) hosts write causal chains
// and random load over NBD while (2) processes are killed -9 and restarted and links are cut or
// hung on the round's schedule; (3) the group is taken over and the secondary images are read
// back: every chain must be a prefix and every block intact; (4) the group goes home one of two
// ways. Forward: it is resynced forward (undoing host writes made on the secondaries after the
// takeover) while hosts write again, then writes stop, the group is quiesced, `cmp` must find
// every secondary equal to its primary, and every write a host was told about must be on the
// primary images. Failback (a primary was down through the takeover): hosts keep writing the
// secondaries, the primary returns, `resync --reverse` carries the secondaries' image back (cmp,
// the takeover's chain prefixes and the secondaries' writes on the old primaries), and `swap`
// brings the config's primaries back (cmp again).
// The checks read the images themselves and know nothing of tidemark's timestamps or queues.
import { volumePath, type LoadedTopology } from "../../config/load.ts";
import { askAll } from "../cli/control-client.ts";
import { buildStatus, type SubsystemStatus } from "../cli/status-view.ts";
import { clockReader } from "../primary/clock-source.ts";
import { NbdClient } from "../nbd/client.ts";
import { CHAIN_BLOCK_BYTES } from "./chain-block.ts";
import { tidemarkCli } from "./commands.ts";
import { cmpImages, readRange } from "./images.ts";
import { nonZeroRuns, regions } from "./regions.ts";
import { checkChains, openFileBlockReader, type CheckMode } from "./chain-checker.ts";
import { planChains, type ChainPlan } from "./chain-plan.ts";
import { runChainWorkload, type ChainRecord } from "./chain-workload.ts";
import type { LinkFault } from "./link-fault.ts";
import { LoadModel, runLoad, type LoadResult } from "./load.ts";
import { processName, type DrillProcesses } from "./processes.ts";
import { prng } from "./prng.ts";
import type { GroupChains, GroupResync, GroupTakeover, RoundReport, TurnReport } from "./report.ts";
import { closeTally, groupHealth, newTally, tallySample, type WatchTally } from "./turn-watch.ts";
import { RCM_ID, scheduleRound, type Fault, type RoundSchedule } from "./schedule.ts";
import { askRcm } from "../cli/rcm-client.ts";
import { quiesce } from "../cli/quiesce.ts";
import { liveTopology, liveTopologyFrom } from "../cli/live-topology.ts";
import { DRILL_FAILURE_TIMEOUT_MS, DRILL_RCM_CHECK_INTERVAL_MS } from "./topology.ts";
import type { ProcedureReport } from "../rcm/procedure.ts";
import type { ErrorCode } from "../errors/codes.ts";

/** Chains per group and their longest length: enough dependent writes in flight to catch a reordering, few enough to check in milliseconds. */
export const CHAINS_PER_GROUP = 16;
export const CHAIN_LENGTH_MAX = 1000;
/** Share of a group's chain region the plan may fill; the rest keeps the random draw of blocks easy. */
const CHAIN_REGION_FILL = 0.6;
const LOAD_QUEUE_DEPTH = 2;
const LOAD_WRITE_BYTES_MAX = 64 * 1024;
const LOAD_ZEROES_SHARE = 0.05;
const RECONNECT_PAUSE_MS = 100;
/** A chain retries a position this many times (a killed primary comes back within seconds). */
const CHAIN_RECONNECTS_MAX = 1000;
/** A host write to a volume that hangs this long fails its connection (a finding, not a wait). */
const NBD_REQUEST_TIMEOUT_MS = 30_000;
export const PAIRED_TIMEOUT_MS = 60_000;
export const TAKEOVER_TIMEOUT_MS = 60_000;
const TAKEOVER_ATTEMPTS_MAX = 3;
const RESYNC_ATTEMPTS_MAX = 3;
export const RESYNC_TIMEOUT_MS = 180_000;
export const QUIESCE_TIMEOUT_MS = 60_000;
/** Hosts keep writing this long after the resync returns, before the writes stop. */
const AFTER_RESYNC_WRITE_MS_MAX = 400;
const SECONDARY_WRITE_BYTES_MAX = 64 * 1024;
/** Turn phase: both groups are written this long (plus up to as much again) before the turned group's takeover. */
const TURN_WRITE_MS_MIN = 800;
/** Turn phase: host writes on the turned group's taken-over secondaries. */
const TURN_SECONDARY_WRITES = 8;
/** Turn phase: how often the other group's status is sampled. */
const TURN_WATCH_INTERVAL_MS = 100;
/**
 * Turn phase: the longest a link of the other group may be seen down. Links are shared by every
 * group of two subsystems, and the turned group's fence on a secondary closes its primaries'
 * links there, which then resend the fenced group's frames and are refused until the primary has
 * suspended that group too. Measured: up to 165 ms on 2 busy cores. An outage as long as the
 * RCM's failure timeout is one it would act on (and race 1 left links down for good), so that is
 * the bound; shorter ones are counted and reported. A link the turned group does not use must
 * never go down (a suspension or resync start used to restart every link of the primary).
 */
const TURN_LINK_OUTAGE_MS_MAX = DRILL_FAILURE_TIMEOUT_MS;

/** A group's chains of one write phase, and the prefix lengths its takeover left on the secondaries. */
interface Leg {
  g: GroupPlan;
  records: ChainRecord[];
  prefixLengths: number[];
}

/** Where a failback's results go: the round's report, or its turn phase's. */
interface WayBackOut {
  resyncs: GroupResync[];
  cmpAfterFailback?: { pairs: number; identical: number };
  cmp: { pairs: number; identical: number };
  completeOnPrimaries: { acked: number; ok: boolean };
}

export interface DrillEnv {
  topo: LoadedTopology;
  procs: DrillProcesses;
  /** How to fail the links to each secondary subsystem (link-fault.ts). */
  links: ReadonlyMap<number, LinkFault>;
  volumeBytes: number;
  /** The shape's turn of one group while another is written (topology.ts DrillShape.turn), or null. */
  turn: { group: string; whileWriting: string } | null;
  /** True once the drill is being stopped (Ctrl-C): the round ends at its next step. */
  stopping(): boolean;
}

export class DrillStepError extends Error {
  readonly code = "TM_DRILL_STEP" satisfies ErrorCode;
  constructor(message: string) {
    super(message);
    this.name = "DrillStepError";
  }
}

class Interrupted extends Error {
  constructor() {
    super("the drill was interrupted");
  }
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, Math.max(0, ms)));

const firstLine = (s: string) => s.trim().split("\n").filter(Boolean).slice(-1)[0] ?? "";

/** The JSON a command printed on stdout, or null when it printed none. */
function parseJson(stdout: string): unknown {
  const t = stdout.trim();
  const at = t.indexOf("{");
  if (at < 0) return null;
  try {
    return JSON.parse(t.slice(at));
  } catch {
    return null;
  }
}

/** A round's report before anything happened; the full-disk round fills the same shape. */
export function emptyRoundReport(round: number, seed: number): RoundReport {
  return {
    round,
    seed,
    ok: false,
    elapsedMs: 0,
    events: [],
    kills: { primary: 0, secondary: 0, rcm: 0 },
    linkFaults: { cut: 0, hang: 0 },
    takeovers: [],
    chains: [],
    secondaryWrites: 0,
    load: { writes: 0, bytes: 0 },
    resyncs: [],
    wayBack: "forward",
    cmp: { pairs: 0, identical: 0 },
    completeOnPrimaries: { acked: 0, ok: false },
    violations: [],
    stepsMs: {},
  };
}

/** What `tidemark resync --json` said, in one line: blocks to copy and the generation it paired at. */
function resyncGist(v: unknown): string {
  type Returned = { returning?: { primaries?: { subsystem: number }[] } };
  const r = v as {
    start?: { generation?: number; secondaryBlocks?: number; nothingToDo?: boolean; suspendedFirst?: boolean; primaries?: { remainingBlocks?: number }[]; returning?: Returned["returning"] };
    failback?: Returned;
    swap?: Returned;
  } | null;
  if (!r?.start) return "";
  const back = (r.failback?.returning ?? r.swap?.returning ?? r.start.returning)?.primaries ?? [];
  const tookOver = back.length > 0 ? `took over ${back.map((p) => `#${p.subsystem}`).join(", ")} on ${back.length > 1 ? "their" : "its"} return; ` : "";
  if (tookOver && r.start.nothingToDo) return `${tookOver}nothing to copy`;
  if (r.start.nothingToDo) return "nothing to copy";
  const toCopy = (r.start.primaries ?? []).reduce((n, p) => n + (p.remainingBlocks ?? 0), 0);
  return [
    `${tookOver}paired again at generation ${r.start.generation}`,
    `${toCopy} blocks to copy (${r.start.secondaryBlocks} of them dirty on the secondaries)`,
    r.start.suspendedFirst ? "suspended first" : "",
  ]
    .filter(Boolean)
    .join(", ");
}

interface GroupPlan {
  name: string;
  plan: ChainPlan;
  primaryVolumes: string[];
  pairs: { primary: string; secondary: string }[];
}

function planGroups(env: DrillEnv, seed: number): GroupPlan[] {
  const { chainStartBlock, chainBlocks } = regions(env.volumeBytes);
  return [...env.topo.groups.values()].map((g, gi) => {
    const volumes = g.pairs.map((p) => ({ name: p.primary.name, primaryId: p.primary.subsystemId, sizeBytes: env.volumeBytes }));
    // Chains alternate primaries, so the primary with the fewest volumes bounds the length.
    const perPrimary = g.primaries.map((id) => volumes.filter((v) => v.primaryId === id).length * chainBlocks);
    const length = Math.min(CHAIN_LENGTH_MAX, Math.floor((CHAIN_REGION_FILL * Math.min(...perPrimary) * g.primaries.length) / CHAINS_PER_GROUP));
    if (length < 10) throw new DrillStepError(`group ${g.name}: volumes of ${env.volumeBytes} bytes leave room for chains of ${length} positions only; use larger volumes (--volume-mib)`);
    const plan = planChains({ volumes, chains: CHAINS_PER_GROUP, length, seed: (seed + gi * 0x9e3779b9) >>> 0, regionStartBlock: chainStartBlock, regionBlocks: chainBlocks });
    return { name: g.name, plan, primaryVolumes: volumes.map((v) => v.name), pairs: g.pairs.map((p) => ({ primary: p.primary.name, secondary: p.secondary.name })) };
  });
}

export async function runRound(env: DrillEnv, round: number, seed: number): Promise<RoundReport> {
  const { topo, procs } = env;
  const started = Date.now();
  let t0 = started;
  const report = emptyRoundReport(round, seed);
  const event = (what: string) => report.events.push({ atMs: Date.now() - t0, what });
  const violation = (v: string) => report.violations.push(v);
  const pathOf = (volume: string) => volumePath(topo, topo.volumes.get(volume)!);
  const nbd = (volume: string) => {
    const v = topo.volumes.get(volume)!;
    const ss = topo.config.subsystems.find((s) => s.id === v.subsystemId)!;
    return NbdClient.connect({ host: ss.host, port: ss.nbdPort, exportName: volume, requestTimeoutMs: NBD_REQUEST_TIMEOUT_MS });
  };
  const roleOf = (id: number): "primary" | "secondary" | "rcm" =>
    id === RCM_ID ? "rcm" : [...topo.groups.values()].some((g) => g.primaries.includes(id)) ? "primary" : "secondary";
  const check = () => {
    if (env.stopping()) throw new Interrupted();
    for (const d of procs.takeDeaths()) {
      const lines = (s: string) => s.split("\n").slice(-3).join(" | ");
      violation(`${processName(d.id)} (pid ${d.pid}) died on its own (${d.how})${d.stderr ? `; stderr: ${lines(d.stderr)}` : ""}${d.logTail ? `; log: ${lines(d.logTail)}` : ""}`);
    }
  };
  const kill = async (id: number) => {
    const pid = procs.pid(id);
    await procs.kill(id);
    report.kills[roleOf(id)]++;
    event(`kill -9 ${processName(id)}${pid ? ` (pid ${pid})` : ""}`);
  };
  const restart = async (id: number, why = "") => {
    const t = Date.now();
    await procs.start(id);
    event(`${processName(id)} restarted${why}, ready in ${Date.now() - t} ms`);
  };
  let doing = "preparing";
  let stepStarted = Date.now();
  let stepName = "";
  const endStep = () => {
    if (stepName) report.stepsMs[stepName] = (report.stepsMs[stepName] ?? 0) + Date.now() - stepStarted;
  };
  /** Names the step under way (for a failure's report) and times it. */
  const step = (name: string, what: string) => {
    endStep();
    stepName = stepPrefix + name;
    stepStarted = Date.now();
    doing = what;
    check();
  };

  const rand = prng((seed ^ 0x68e31da4) >>> 0);
  const groups = planGroups(env, seed);
  const schedule = scheduleRound(seed, {
    primaries: [...new Set([...topo.groups.values()].flatMap((g) => g.primaries))],
    secondaries: [...new Set([...topo.groups.values()].flatMap((g) => g.secondaries))],
  });
  report.wayBack = schedule.wayBack;
  const { loadBytes, chainStartBlock, chainBlocks } = regions(env.volumeBytes);
  const workloads: Promise<unknown>[] = [];
  let writing = true;
  /** Hosts write while a flag is on; every flag goes off when the round ends, however it ends. */
  const flags: { on: boolean }[] = [];
  const flag = () => {
    const f = { on: true };
    flags.push(f);
    return f;
  };
  /** Step names get this prefix in the turn phase, so its time shows apart from the round's own steps. */
  let stepPrefix = "";
  /** The model of each primary volume's load region. */
  const models = new Map<string, LoadModel>();

  try {
    // ---- preparation: every pair streaming, the chain region zero on both sides, the load region read into its models.
    step("paired", "waiting for every pair to be paired");
    await waitPaired(env, PAIRED_TIMEOUT_MS);
    step("clear", "clearing the chain region");
    await clearChains(groups);
    for (const g of groups) for (const v of g.primaryVolumes) models.set(v, new LoadModel(0, await readRange(pathOf(v), 0, loadBytes)));

    // ---- step 1 and 2: write, and fail things on the schedule.
    step("write", "writing under faults");
    t0 = Date.now();
    event(`hosts write: ${groups.map((g) => `${g.name}: ${g.plan.chains} chains x ${g.plan.length} over ${g.primaryVolumes.join(" ")}`).join("; ")}; random load on each`);
    const chainRuns = groups.map((g) =>
      runChainWorkload({ plan: g.plan, connect: nbd, until: () => !writing, reconnectAttemptsMax: CHAIN_RECONNECTS_MAX, reconnectPauseMs: RECONNECT_PAUSE_MS }),
    );
    workloads.push(...chainRuns);
    const loads1 = loadOn(models, () => !writing);
    workloads.push(...loads1);
    await runFaults(schedule.faults);
    await sleep(t0 + schedule.takeoverAtMs - Date.now());

    // ---- step 3: take over, read the secondaries back.
    step("takeover", "taking over");
    // The takeover needs every secondary and the RCM; primaries may stay down (that is the disaster).
    for (const id of [...new Set([...topo.groups.values()].flatMap((g) => g.secondaries)), RCM_ID]) {
      if (!procs.alive(id)) await restart(id, " (the takeover needs it)");
    }
    for (const [i, g] of groups.entries()) report.takeovers.push(await takeover(g.name, i === 0 ? schedule.rcmKillDuringTakeoverMs : null));
    writing = false;
    const records = await Promise.all(chainRuns);
    sumLoad(await Promise.all(loads1));
    event("hosts stopped writing");
    check();

    step("check", "checking the chains on the secondaries");
    for (const [i, g] of groups.entries()) {
      const secondaryOf = new Map(g.pairs.map((p) => [p.primary, p.secondary]));
      const r = await checkOn(g.plan, records[i], "prefix", (v) => pathOf(secondaryOf.get(v)!));
      report.chains.push(chainsReport(g, records[i], r.prefixLengths, r.counts));
      for (const v of r.violations) violation(`after the takeover of ${g.name}, on the secondaries: ${v}`);
    }

    if (schedule.wayBack === "failback") {
      const legs = groups.map((g, i) => ({ g, records: records[i], prefixLengths: report.chains[i].prefixLengths }));
      await failBack(legs, report, schedule.resyncKill, schedule.secondaryWrites);
    } else await resyncForward(records);
    check();
    if (env.turn) await turnPhase(env.turn);
    endStep();
    doing = "";
  } catch (err) {
    if (err instanceof Interrupted) violation("the drill was interrupted");
    else violation(`${doing}: ${(err as Error).message}`);
    report.abortedAt = doing;
  } finally {
    writing = false;
    for (const f of flags) f.on = false;
    await Promise.allSettled(workloads);
    check2();
  }
  report.ok = report.violations.length === 0;
  report.elapsedMs = Date.now() - started;
  return report;

  function check2() {
    try {
      check();
    } catch {
      // Interrupted while cleaning up: the report already says so.
    }
  }

  /** Random load on the volumes of `on` (name -> model of its load region) until `until()`. */
  function loadOn(on: Map<string, LoadModel>, until: () => boolean): Promise<LoadResult>[] {
    return [...on].map(([v, model]) =>
      runLoad({
        model,
        connect: () => nbd(v),
        rand: prng(Math.floor(rand() * 2 ** 32)),
        queueDepth: LOAD_QUEUE_DEPTH,
        writeBytesMax: LOAD_WRITE_BYTES_MAX,
        zeroesShare: LOAD_ZEROES_SHARE,
        until,
        sleep,
        reconnectPauseMs: RECONNECT_PAUSE_MS,
      }),
    );
  }

  function sumLoad(rs: LoadResult[]) {
    for (const r of rs) {
      report.load.writes += r.writes;
      report.load.bytes += r.bytes;
    }
  }

  /** The disaster site carries on: hosts write the taken-over secondaries (`loadOnly`: their load regions, recorded in `into`). */
  async function disasterSiteWrites(gs: GroupPlan[], count: number, loadOnly: boolean, into?: Map<string, LoadModel>) {
    step("dr-writes", "writing on the taken-over secondaries");
    const before = report.secondaryWrites;
    for (let i = 0; i < count; i++) {
      const g = gs[Math.floor(rand() * gs.length)];
      const s = g.pairs[Math.floor(rand() * g.pairs.length)].secondary;
      const len = CHAIN_BLOCK_BYTES * (1 + Math.floor(rand() * (SECONDARY_WRITE_BYTES_MAX / CHAIN_BLOCK_BYTES)));
      const span = loadOnly ? loadBytes : env.volumeBytes;
      const off = Math.floor(rand() * ((span - len) / CHAIN_BLOCK_BYTES + 1)) * CHAIN_BLOCK_BYTES;
      const data = Buffer.alloc(len, 0xd5 ^ i);
      const c = await nbd(s);
      try {
        await c.write(off, data);
        into?.get(s)?.ack(off, len, data);
        report.secondaryWrites++;
      } catch (err) {
        into?.get(s)?.lost(off, len);
        violation(`a host write to taken-over secondary ${s} (${len} bytes at ${off}) failed: ${(err as Error).message}`);
      } finally {
        await c.close();
      }
    }
    if (count > 0) event(`${report.secondaryWrites - before} host writes on the taken-over secondaries of ${gs.map((g) => g.name).join(", ")}`);
  }

  /** Links restored and every process started: the way home needs them all (a primary down through the takeover returns here). */
  async function restoreAll(why: string) {
    step("restore", "restoring processes and links");
    for (const link of env.links.values()) {
      const said = link.restore();
      if (said) event(said);
    }
    for (const id of procs.ids) if (!procs.alive(id)) await restart(id, why);
  }

  /** Every secondary image equal to its primary, by cmp; counted in `into`. */
  async function compareImages(gs: GroupPlan[], when: string, into: { pairs: number; identical: number }) {
    for (const g of gs) await quiesceGroup(g.name);
    for (const g of gs) {
      for (const p of g.pairs) {
        into.pairs++;
        const diff = await cmpImages(pathOf(p.primary), pathOf(p.secondary));
        if (diff === null) into.identical++;
        else violation(`${when} of ${g.name}, ${p.secondary} differs from its primary ${p.primary}: ${diff}`);
      }
    }
  }

  /** What `models` says acknowledged load writes left in the load regions, against `pathOf(target(volume))`. */
  async function compareLoad(on: Map<string, LoadModel>, target: (volume: string) => string, when: string) {
    for (const [v, model] of on) {
      const c = model.compare(await readRange(pathOf(target(v)), 0, loadBytes));
      if (c.mismatchedSectors > 0) {
        violation(`${when}: ${target(v)}: ${c.mismatchedSectors} sectors written by acknowledged host writes${target(v) === v ? "" : ` on ${v}`} do not hold what was written (first at byte ${c.firstMismatchOffset})`);
      }
    }
  }

  /** Zeroes what earlier writes left in the chain regions of `gs` (zeroes replicate like any write), then quiesces them. */
  async function clearChains(gs: GroupPlan[]) {
    for (const g of gs) {
      for (const v of g.primaryVolumes) {
        const runs = nonZeroRuns(await readRange(pathOf(v), chainStartBlock * CHAIN_BLOCK_BYTES, chainBlocks * CHAIN_BLOCK_BYTES));
        if (runs.length === 0) continue;
        const c = await nbd(v);
        try {
          for (const [first, count] of runs) await c.writeZeroes((chainStartBlock + first) * CHAIN_BLOCK_BYTES, count * CHAIN_BLOCK_BYTES);
        } finally {
          await c.close();
        }
      }
    }
    for (const g of gs) await quiesceGroup(g.name);
  }

  /**
   * The turn phase (two-group shapes, after the round's own steps): hosts write both groups'
   * chains and load; then `turn.group` alone is taken over, failed back with `resync --reverse`
   * and swapped back, with the checks a failback round makes, while hosts keep writing
   * `turn.whileWriting` at full rate and its `status` is sampled. The turn changes roles on
   * subsystems that keep serving the other group, which must not notice: no write of it fails,
   * it stays active with its links up, and after it is quiesced its chains, pairs and load hold.
   */
  async function turnPhase(turn: NonNullable<DrillEnv["turn"]>) {
    const begun = Date.now();
    stepPrefix = "turn-";
    // Chains of a run of their own: the round's chains are cleared first, so only this phase's count.
    const plans = planGroups(env, (seed ^ 0x2f7a91c3) >>> 0);
    const a = plans.find((g) => g.name === turn.group)!;
    const b = plans.find((g) => g.name === turn.whileWriting)!;
    const out: TurnReport = {
      group: a.name,
      takeover: null,
      chains: null,
      resyncs: [],
      cmp: { pairs: 0, identical: 0 },
      completeOnPrimaries: { acked: 0, ok: false },
      other: { group: b.name, chains: null, load: { writes: 0, bytes: 0 }, writeFailures: 0, samples: 0, notActive: 0, linkDown: 0, unanswered: 0, linkOutages: 0, longestLinkOutageMs: 0, cmp: { pairs: 0, identical: 0 }, completeOnPrimaries: false },
      elapsedMs: 0,
    };
    report.turn = out;
    step("clear", `clearing the chain regions of ${a.name} and ${b.name} for the turn`);
    await clearChains([a, b]);
    const modelsOf = async (g: GroupPlan) => new Map(await Promise.all(g.primaryVolumes.map(async (v) => [v, new LoadModel(0, await readRange(pathOf(v), 0, loadBytes))] as const)));
    const [loadModelsA, loadModelsB] = [await modelsOf(a), await modelsOf(b)];

    step("write", `writing ${a.name} and ${b.name} before the turn of ${a.name}`);
    event(`turn: hosts write ${a.name} and ${b.name}: 2 x ${a.plan.chains} chains over ${[...a.primaryVolumes, ...b.primaryVolumes].join(" ")}; random load on each`);
    const [writingA, writingB] = [flag(), flag()];
    const failuresB: string[] = [];
    const chainsA = runChainWorkload({ plan: a.plan, connect: nbd, until: () => !writingA.on, reconnectAttemptsMax: CHAIN_RECONNECTS_MAX, reconnectPauseMs: RECONNECT_PAUSE_MS });
    const chainsB = runChainWorkload({
      plan: b.plan,
      connect: nbd,
      until: () => !writingB.on,
      reconnectAttemptsMax: CHAIN_RECONNECTS_MAX,
      reconnectPauseMs: RECONNECT_PAUSE_MS,
      onError: (chain, pos, err) => failuresB.push(`chain ${chain} position ${pos}: ${err.message}`),
    });
    const [loadsA, loadsB] = [loadOn(loadModelsA, () => !writingA.on), loadOn(loadModelsB, () => !writingB.on)];
    workloads.push(chainsA, chainsB, ...loadsA, ...loadsB);
    // Chains end at their plan's length; the load goes on. The report says when they ended, to read beside the turn's steps.
    void chainsB.then(
      () => writingB.on && event(`${b.name}'s chains all reached their end (the load goes on)`),
      () => undefined,
    );
    const watching = watchGroup(b, () => writingB.on);
    workloads.push(watching);
    await sleep(TURN_WRITE_MS_MIN * (1 + rand()));

    step("takeover", `taking over ${a.name} alone`);
    out.takeover = await takeover(a.name, null);
    writingA.on = false;
    const recordsA = await chainsA;
    sumLoad(await Promise.all(loadsA));
    event(`hosts stopped writing ${a.name}`);
    check();
    step("check", `checking the chains of ${a.name} on its secondaries`);
    const secondaryOf = new Map(a.pairs.map((p) => [p.primary, p.secondary]));
    const ra = await checkOn(a.plan, recordsA, "prefix", (v) => pathOf(secondaryOf.get(v)!));
    out.chains = chainsReport(a, recordsA, ra.prefixLengths, ra.counts);
    for (const v of ra.violations) violation(`turn: after the takeover of ${a.name}, on the secondaries: ${v}`);
    await failBack([{ g: a, records: recordsA, prefixLengths: ra.prefixLengths }], out, null, TURN_SECONDARY_WRITES);

    step("other", `stopping and checking ${b.name}`);
    writingB.on = false;
    const recordsB = await chainsB;
    const loadB = await Promise.all(loadsB);
    sumLoad(loadB);
    const tally = await watching;
    event(`hosts stopped writing ${b.name}`);
    check();
    judgeOther(a.name, b.name, loadB, failuresB, tally, out.other);
    await checkOther(b, recordsB, loadModelsB, out.other);
    stepPrefix = "";
    out.elapsedMs = Date.now() - begun;
  }

  /** What the group written during the turn went through: failed writes, its states and its links in the status samples. */
  function judgeOther(turned: string, other: string, loads: LoadResult[], failures: string[], tally: WatchTally, into: TurnReport["other"]) {
    for (const r of loads) if (r.errors > 0) failures.push(`${r.errors} load write(s) failed; last: ${r.lastError ?? "?"}`);
    into.load = { writes: loads.reduce((n, r) => n + r.writes, 0), bytes: loads.reduce((n, r) => n + r.bytes, 0) };
    into.writeFailures = failures.length;
    Object.assign(into, {
      samples: tally.samples,
      notActive: tally.notActive,
      linkDown: tally.linkDown,
      linkOutages: tally.linkOutages,
      longestLinkOutageMs: tally.longestLinkOutageMs,
      unanswered: tally.unanswered,
    });
    if (failures.length > 0) violation(`turn of ${turned}: ${failures.length} host write(s) to ${other} failed or were refused; first: ${failures.slice(0, 3).join("; ")}`);
    if (tally.samples === 0) violation(`turn of ${turned}: ${other}'s status was never sampled`);
    if (tally.notActive + tally.unanswered > 0) {
      violation(`turn of ${turned}: ${other} was not active everywhere, or a subsystem of it was silent, in ${tally.notActive + tally.unanswered} of ${tally.samples} status samples: ${tally.first.join("; ")}`);
    }
    if (tally.longestLinkOutageMs >= TURN_LINK_OUTAGE_MS_MAX) {
      violation(`turn of ${turned}: a link of ${other} was down for ${tally.longestLinkOutageMs} ms (at most ${TURN_LINK_OUTAGE_MS_MAX} ms allowed): ${tally.linkFirst.join("; ")}`);
    }
    const linksOf = (g: string) => new Set(topo.pairs.filter((p) => p.group === g).map((p) => `#${p.primary.subsystemId} -> #${p.secondary.subsystemId}`));
    const shared = linksOf(turned);
    const own = [...linksOf(other)].filter((l) => !shared.has(l) && tally.everDown.has(l));
    if (own.length > 0) violation(`turn of ${turned}: ${other}'s link(s) ${own.join(", ")}, which ${turned} does not use, went down: ${tally.linkFirst.join("; ")}`);
    if (tally.linkOutages > 0) event(`${other}'s links reconnected ${tally.linkOutages} time(s) during the turn, the longest outage seen ${tally.longestLinkOutageMs} ms: ${tally.linkFirst.slice(0, 2).join("; ")}`);
  }

  /** The group written during the turn, once quiesced: its chains on its secondaries, cmp, and every acknowledged write on its primaries. */
  async function checkOther(b: GroupPlan, records: ChainRecord[], loadModels: Map<string, LoadModel>, into: TurnReport["other"]) {
    step("compare", `quiescing and checking ${b.name}`);
    await quiesceGroup(b.name);
    const secondaryOf = new Map(b.pairs.map((p) => [p.primary, p.secondary]));
    const rs = await checkOn(b.plan, records, "prefix", (v) => pathOf(secondaryOf.get(v)!));
    into.chains = chainsReport(b, records, rs.prefixLengths, rs.counts);
    for (const v of rs.violations) violation(`turn: ${b.name}, written during the turn, on its secondaries after quiesce: ${v}`);
    await compareImages([b], `after the turn, ${b.name} quiesced`, into.cmp);
    const rp = await checkOn(b.plan, records, "complete", pathOf);
    for (const v of rp.violations) violation(`turn: on the primaries of ${b.name}, written during the turn: ${v}`);
    into.completeOnPrimaries = rp.ok;
    await compareLoad(loadModels, (v) => v, `after the turn, ${b.name}`);
  }

  /** Samples the status of `g`'s subsystems while `on()`; the tally says how often it was not as it should be. */
  async function watchGroup(g: GroupPlan, on: () => boolean): Promise<WatchTally> {
    const tally = newTally();
    const pairs = g.pairs.map((p) => {
      const [pv, sv] = [topo.volumes.get(p.primary)!, topo.volumes.get(p.secondary)!];
      return { primary: { subsystemId: pv.subsystemId, name: p.primary }, secondary: { subsystemId: sv.subsystemId, name: p.secondary } };
    });
    const ids = [...new Set(pairs.flatMap((p) => [p.primary.subsystemId, p.secondary.subsystemId]))];
    while (on() && !env.stopping()) {
      // Timed when asked: on busy cores an answer can take longer than the outage it reports.
      const at = Date.now() - t0;
      const answers = await askAll<SubsystemStatus>(topo, ids, { op: "status" });
      // The last sample may land after the writes stopped; it still counts.
      tallySample(tally, groupHealth(g.name, pairs, answers), at);
      await sleep(TURN_WATCH_INTERVAL_MS);
    }
    return closeTally(tally);
  }

  /**
   * Step 4, forward: everything back, resync forward (undoing the writes made on the secondaries)
   * while hosts write the primaries, stop, quiesce, compare; every acknowledged write is on the primaries.
   */
  async function resyncForward(records: ChainRecord[][]) {
    await disasterSiteWrites(groups, schedule.secondaryWrites, false);
    await restoreAll(" (the resync needs it)");
    step("resync", "resyncing");
    const resyncWriting = flag();
    const loads2 = loadOn(models, () => !resyncWriting.on);
    workloads.push(...loads2);
    for (const [i, g] of groups.entries()) report.resyncs.push(await resync(g.name, i === 0 ? schedule.resyncKill : null, "resync"));
    await sleep(rand() * AFTER_RESYNC_WRITE_MS_MAX);
    resyncWriting.on = false;
    sumLoad(await Promise.all(loads2));
    event("hosts stopped writing");
    check();

    step("compare", "quiescing and comparing");
    await compareImages(groups, "after the resync and quiesce", report.cmp);
    let completeOk = true;
    for (const [i, g] of groups.entries()) {
      const r = await checkOn(g.plan, records[i], "complete", pathOf);
      report.completeOnPrimaries.acked += records[i].reduce((n, x) => n + x.acked, 0);
      for (const v of r.violations) violation(`on the primaries of ${g.name}: ${v}`);
      completeOk &&= r.ok;
    }
    report.completeOnPrimaries.ok = completeOk;
    await compareLoad(models, (v) => v, "after the resync");
  }

  /**
   * Step 4, failback (a primary was down through the takeover): hosts keep writing the
   * secondaries' load regions; every process returns, the returning primary included;
   * `tidemark resync --reverse` (which takes it over first) carries the secondaries' image
   * back while hosts write them; then cmp, and the old primaries must hold exactly the chain
   * prefixes the takeover left and every load write made on the secondaries. `tidemark swap`
   * brings the config's primaries back; hosts write them, cmp again.
   */
  async function failBack(legs: Leg[], out: WayBackOut, fault: RoundSchedule["resyncKill"], secondaryWrites: number) {
    const gs = legs.map((l) => l.g);
    const onSecondaries = new Map<string, LoadModel>();
    for (const g of gs) for (const p of g.pairs) onSecondaries.set(p.secondary, new LoadModel(0, await readRange(pathOf(p.secondary), 0, loadBytes)));
    const primaryOf = new Map(gs.flatMap((g) => g.pairs.map((p) => [p.secondary, p.primary] as const)));
    await disasterSiteWrites(gs, secondaryWrites, true, onSecondaries);
    await restoreAll(" (back after the takeover)");

    step("failback", "failing back with resync --reverse");
    const resyncWriting = flag();
    const loads2 = loadOn(onSecondaries, () => !resyncWriting.on);
    workloads.push(...loads2);
    for (const [i, g] of gs.entries()) out.resyncs.push(await resync(g.name, i === 0 ? fault : null, "resync --reverse"));
    await sleep(rand() * AFTER_RESYNC_WRITE_MS_MAX);
    resyncWriting.on = false;
    sumLoad(await Promise.all(loads2));
    event("hosts stopped writing");
    check();

    step("compare", "quiescing and comparing after the failback");
    out.cmpAfterFailback = { pairs: 0, identical: 0 };
    await compareImages(gs, "after the reverse resync and quiesce", out.cmpAfterFailback);
    await expectTakeoverPrefixes(legs, "after the reverse resync");
    await compareLoad(onSecondaries, (v) => primaryOf.get(v)!, "after the reverse resync");

    step("swap", "swapping back");
    for (const g of gs) out.resyncs.push(await swapBack(g.name));
    const swapModels = new Map<string, LoadModel>();
    for (const g of gs) for (const v of g.primaryVolumes) swapModels.set(v, new LoadModel(0, await readRange(pathOf(v), 0, loadBytes)));
    const swapWriting = flag();
    const loads3 = loadOn(swapModels, () => !swapWriting.on);
    workloads.push(...loads3);
    await sleep(rand() * AFTER_RESYNC_WRITE_MS_MAX);
    swapWriting.on = false;
    sumLoad(await Promise.all(loads3));
    event("hosts stopped writing");
    check();

    step("compare", "quiescing and comparing after the swap");
    await compareImages(gs, "after the swap back and quiesce", out.cmp);
    out.completeOnPrimaries = { acked: legs.reduce((n, l) => n + l.prefixLengths.reduce((m, k) => m + k, 0), 0), ok: await expectTakeoverPrefixes(legs, "after the swap back") };
    await compareLoad(swapModels, (v) => v, "after the swap back");
  }

  /** The chains on the config's primaries are exactly the prefixes the takeover left on the secondaries: no more, no less. */
  async function expectTakeoverPrefixes(legs: Leg[], when: string): Promise<boolean> {
    let ok = true;
    for (const { g, records, prefixLengths: want } of legs) {
      const r = await checkOn(g.plan, records, "prefix", pathOf);
      for (const v of r.violations) violation(`${when}, on the primaries of ${g.name}: ${v}`);
      const differ = r.prefixLengths.flatMap((k, c) => (k === want[c] ? [] : [`chain ${c}: ${k} (takeover: ${want[c]})`]));
      if (differ.length > 0) violation(`${when}, on the primaries of ${g.name}: chains are not the takeover's prefixes: ${differ.slice(0, 5).join(", ")}`);
      ok &&= r.violations.length === 0 && differ.length === 0;
    }
    return ok;
  }

  /** `tidemark swap`: no fault is scheduled in it, so a failure is a finding. */
  async function swapBack(group: string): Promise<GroupResync> {
    const begun = Date.now();
    event(`tidemark swap --group ${group}`);
    const r = await tidemarkCli(["swap", "--config", topo.file, "--group", group, "--json"], RESYNC_TIMEOUT_MS);
    check();
    if (r.code !== 0) throw new DrillStepError(`tidemark swap --group ${group} failed (${r.timedOut ? `no end within ${RESYNC_TIMEOUT_MS} ms` : `exit ${r.code}`}: ${firstLine(r.stderr)})`);
    event(`swap ${group} done`);
    return { group, command: "swap", elapsedMs: Date.now() - begun, said: resyncGist(parseJson(r.stdout)) || firstLine(r.stdout) };
  }

  /** What `tidemark quiesce` does, in-process (a command's start-up would double the step's time). */
  async function quiesceGroup(group: string) {
    try {
      // The roles of the moment: a failback turns them.
      await quiesce(await liveTopology(topo), group, QUIESCE_TIMEOUT_MS);
    } catch (err) {
      throw new DrillStepError(`quiesce ${group} failed: ${(err as Error).message}`);
    }
  }

  /** Runs the schedule's faults: actions on one process or link in order, different ones at once. */
  async function runFaults(faults: Fault[]) {
    const lanes = new Map<string, Promise<void>>();
    const at = (key: string, ms: number, f: () => Promise<void> | void) => {
      const prev = lanes.get(key) ?? Promise.resolve();
      lanes.set(
        key,
        prev.then(async () => {
          await sleep(t0 + ms - Date.now());
          if (!env.stopping()) await f();
        }),
      );
    };
    for (const f of faults) {
      if (f.kind === "kill") {
        at(`p${f.target}`, f.atMs, () => kill(f.target));
        if (f.restartAtMs !== null) at(`p${f.target}`, f.restartAtMs, () => restart(f.target));
      } else {
        const link = env.links.get(f.secondary)!;
        at(`l${f.secondary}`, f.atMs, () => {
          event(link.fail(f.kind, f.restoreAtMs === null));
          report.linkFaults[f.kind]++;
        });
        if (f.restoreAtMs !== null) {
          at(`l${f.secondary}`, f.restoreAtMs, () => {
            const said = link.restore();
            if (said) event(said);
          });
        }
      }
    }
    await Promise.all(lanes.values());
  }

  /**
   * The takeover, asked of the RCM exactly as `tidemark takeover` asks it (in-process, so a kill
   * `killRcmAfterMs` after the request lands inside the procedure rather than in a CLI's start-up).
   * A failed run is run again, as docs/takeover.md tells an admin to.
   */
  async function takeover(group: string, killRcmAfterMs: number | null): Promise<GroupTakeover> {
    const ask = () => askRcm<ProcedureReport>(topo, { op: "takeover", group, dryRun: false, by: `tidemark drill (pid ${process.pid})` }, TAKEOVER_TIMEOUT_MS);
    const begun = Date.now();
    event(`takeover ${group} asked of the RCM`);
    let first: ProcedureReport | null = null;
    let attempts = 0;
    for (;;) {
      attempts++;
      const asked = ask();
      if (killRcmAfterMs !== null && attempts === 1) {
        // Caught here, reported below: the procedure's outcome depends on when the kill landed.
        const outcome = asked.then(
          (r) => ({ ok: true as const, r }),
          (e: Error) => ({ ok: false as const, e }),
        );
        await sleep(killRcmAfterMs);
        await kill(RCM_ID);
        const o = await outcome;
        event(`the takeover under the killed RCM ${o.ok ? "had already finished" : `failed (${o.e.message})`}`);
        if (o.ok) first = o.r;
        await restart(RCM_ID);
        continue;
      }
      try {
        const rep = await asked;
        check();
        // Idempotent: a rerun after a completed run must reach the same Ts.
        if (first && first.ts !== rep.ts) violation(`takeover ${group}: a rerun reached Ts ${rep.ts}, the completed run before it Ts ${first.ts}`);
        event(`takeover ${group} done: Ts ${rep.ts}, generation ${rep.generation}`);
        return { group, ts: rep.ts, generation: rep.generation, attempts, elapsedMs: Date.now() - begun, primariesDown: rep.primaries.filter((p) => !p.reached).map((p) => p.subsystem) };
      } catch (err) {
        if (err instanceof Interrupted) throw err;
        event(`takeover ${group} failed: ${(err as Error).message}`);
        if (attempts >= TAKEOVER_ATTEMPTS_MAX) throw new DrillStepError(`takeover ${group} failed ${attempts} times; last: ${(err as Error).message}`);
        await sleep(500);
      }
    }
  }

  /**
   * `tidemark resync`, while `killAt` (the schedule's resync fault, for the first group) kills a
   * process and restarts it. A run that fails because of that fault is run again, as an admin
   * would; a run that fails without one is a finding.
   */
  async function resync(group: string, fault: RoundSchedule["resyncKill"], command: "resync" | "resync --reverse"): Promise<GroupResync> {
    const begun = Date.now();
    let lane: Promise<void> = Promise.resolve();
    let faulted = false;
    if (fault) {
      lane = (async () => {
        await sleep(fault.afterMs);
        if (env.stopping()) return;
        faulted = true;
        await kill(fault.target);
        await sleep(fault.restartAfterMs);
        if (!env.stopping()) await restart(fault.target);
      })();
    }
    for (let attempt = 1; ; attempt++) {
      event(`tidemark resync --group ${group}${command === "resync --reverse" ? " --reverse" : ""}${attempt > 1 ? ` (attempt ${attempt})` : ""}`);
      const r = await tidemarkCli(["resync", "--config", topo.file, "--group", group, ...(command === "resync --reverse" ? ["--reverse"] : []), "--json"], RESYNC_TIMEOUT_MS);
      check();
      if (r.code === 0) {
        event(`${command} ${group} done`);
        await lane;
        // A kill that landed after the resync ended can outlast the RCM's failure
        // timeout: the group is then suspended again, and an admin resyncs again.
        if (faulted && attempt < RESYNC_ATTEMPTS_MAX) {
          // Long enough for the RCM's monitor to have acted on the fault.
          await sleep(DRILL_FAILURE_TIMEOUT_MS + 4 * DRILL_RCM_CHECK_INTERVAL_MS);
          try {
            await waitPaired(env, 1000);
          } catch {
            event(`group ${group} no longer paired after the fault (automatic suspension): resyncing again`);
            continue;
          }
        }
        return { group, command, elapsedMs: Date.now() - begun, said: resyncGist(parseJson(r.stdout)) || firstLine(r.stdout) };
      }
      const why = `${r.timedOut ? `no end within ${RESYNC_TIMEOUT_MS} ms` : `exit ${r.code}`}: ${firstLine(r.stderr)}`;
      event(`${command} ${group} failed (${why})`);
      if (!faulted || attempt >= RESYNC_ATTEMPTS_MAX) throw new DrillStepError(`tidemark ${command} --group ${group} failed (${why})`);
      // Run it again once the killed process is back, as docs/resync.md tells an admin to.
      await lane;
    }
  }
}

/** The chain check on the images `pathOf` names (files or loop devices), read directly. */
async function checkOn(plan: ChainPlan, records: ChainRecord[], mode: CheckMode, pathOf: (volume: string) => string) {
  const reader = openFileBlockReader(pathOf);
  try {
    return await checkChains({ plan, records, mode, readBlock: reader.readBlock });
  } finally {
    await reader.close();
  }
}

function chainsReport(g: GroupPlan, records: ChainRecord[], prefixLengths: number[], counts: GroupChains["counts"]): GroupChains {
  return {
    group: g.name,
    chains: g.plan.chains,
    length: g.plan.length,
    acked: records.reduce((n, r) => n + r.acked, 0),
    issued: records.reduce((n, r) => n + r.issued, 0),
    onSecondaries: prefixLengths.reduce((n, k) => n + k, 0),
    prefixLengths,
    counts,
  };
}

/** Waits until every pair of every group is paired (links up, group active on both sides). */
export async function waitPaired(env: DrillEnv, timeoutMs: number): Promise<void> {
  const { topo } = env;
  const deadline = Date.now() + timeoutMs;
  let last = "";
  for (;;) {
    if (env.stopping()) throw new Interrupted();
    const answers = await askAll<SubsystemStatus>(
      topo,
      topo.config.subsystems.map((s) => s.id),
      { op: "status" },
    );
    // The roles of the moment: after a failback the config's secondaries are primary.
    const doc = buildStatus(liveTopologyFrom(topo, answers.values() as Iterable<{ ok: boolean; value?: SubsystemStatus }>, true), answers, clockReader(topo.config.clock)());
    const waiting = doc.pairs.filter((p) => p.state !== "paired");
    if (waiting.length === 0) return;
    last = waiting.map((p) => `${p.primary.volume}->${p.secondary.volume} ${p.state}${p.reason ? ` (${p.reason})` : ""}`).join(", ");
    if (Date.now() > deadline) throw new DrillStepError(`pairs not paired after ${timeoutMs} ms: ${last}`);
    await sleep(100);
  }
}

// The seeded simulator (STYLE.md item 3, after TigerBeetle's VOPR): N
// primaries, M secondaries, their hosts and the remote copy manager in one
// process, over simulated links (ordered per pair, random delays, partitions
// that hold or drop) and simulated disks (durable state survives kill -9,
// memory does not), driven by one tick loop and one seeded PRNG. The product's
// pure modules do the arithmetic: StampClock, PendingRcrs/syncTime,
// time-parameters, synchronizedTime, splitAtSynchronizedTime/rcrOrder,
// blockSpan. The glue around them mirrors appliance/primary/primary.ts,
// sender.ts, appliance/secondary/secondary.ts and appliance/rcm/procedure.ts.
// Invariants are checked at every tick; after the takeover the secondaries'
// images are compared with the log of every write as of Ts. With `resync`, a
// history goes on after the first suspension or takeover: a forward resync
// (docs/resync.md: the secondaries hold 112 at T_old, the primaries copy their
// bitmaps under the range lock, COPIED and the barrier), crashes and power
// cuts during it, and a second suspension or takeover at a chosen step of it,
// cut by the product's resyncCut; then a resync to the end, compared block by
// block with the primaries once host writes stop. Pure: no I/O, no timers, no
// Math.random; a seed replays exactly.
import { prng } from "../../appliance/drill/prng.ts";
import { PendingRcrs, syncTime } from "../../appliance/primary/pending.ts";
import { StampClock } from "../../appliance/primary/stamp-clock.ts";
import {
  barrierOf,
  initialTimes,
  mayApply,
  minFirst,
  onCopied,
  onSync,
  startHold,
  withPrimaries,
  type GroupTimes,
  type SyncOutcome,
} from "../../appliance/secondary/time-parameters.ts";
import { CutConflict, procedureCut, synchronizedTime, type ResyncReport } from "../../appliance/rcm/synchronized-time.ts";
import { rcrOrder, splitAtSynchronizedTime, type QueuedRcr } from "../../appliance/secondary/synchronized-apply.ts";
import { BITMAP_BLOCK_BYTES, blockSpan } from "../../appliance/resync/blocks.ts";

const GROUP = "C1";
/** Blocks (4 KiB) per simulated volume; each holds the id of its last write. */
export const BLOCKS_PER_VOLUME = 16;
/** One tick is one millisecond of simulated time. */
export const TICK_NS = 1_000_000n;
/**
 * appliance/primary/primary.ts persists the exact stamp floor (the greatest
 * stamp journaled or announced). It once led it by 2 s, which this simulator
 * caught: after a kill -9 a primary stamped ahead of the shared clock and a
 * dependent write on another primary got a smaller stamp. The old lead stays
 * as a negative control (LEADING_FLOOR_NS).
 */
export const PRODUCT_FLOOR_LEAD_NS = 0n;
/** The 2 s lead primary.ts had before the fix: must make seeds fail. */
export const LEADING_FLOOR_NS = 2_000_000_000n;
/** A link that delivers nothing for this long is dropped by the sender's liveness check. */
const LINK_TIMEOUT_TICKS = 40;
/** RCR frames in flight per link (the product bounds bytes; entries are enough here). */
const INFLIGHT_ENTRIES_MAX = 24;
/** A control call the RCM gets no answer to within this many ticks has failed. */
const CALL_TIMEOUT_TICKS = 60;
const APPLY_CALL_TIMEOUT_TICKS = 400;
/** After the first takeover: no more faults, everything restarted, then the rerun. */
const QUIESCE_TICKS = 150;
const TICKS_MAX = 20_000;
/** With resyncs a history has up to four procedures and two or three resyncs. */
const RESYNC_TICKS_MAX = 30_000;
/** Blocks per copy run (the product's is 1 MiB: 256 blocks; scaled to the 16-block volumes). */
export const SIM_COPY_RUN_BLOCKS = 4;
/** The RCM polls a resync's progress this often (watchResync). */
const RESYNC_POLL_TICKS = 15;
/** Extra resyncs the final stage may need (bits a power cut marked after the copy ended). */
const FINAL_RESYNCS_MAX = 4;
/** Seqs leased per durable commit (journal.ts SEQ_LEASE_SPAN, scaled). */
const SEQ_LEASE = 64;
/**
 * Activity-log region in the simulation: 4 blocks of a 16-block volume. The
 * product's is 4 MiB (journal.ts ACTIVITY_REGION_BYTES), which would make
 * every simulated volume one region; scaled down, writes land in cold
 * regions too, which is where a missing mark shows.
 */
export const SIM_REGION_BLOCKS = 4;

export interface SimOptions {
  seed: number;
  /** Force the clock mode; otherwise the seed picks it. */
  clock?: "monotonic" | "realtime";
  /** Persisted stamp floor lead on restart (default: the product's, primary.ts:32). */
  floorLeadNs?: bigint;
  /** Negative control (a): SYNC carries the bare clock reading instead of syncTime. */
  bareClockSync?: boolean;
  /** Negative control (b): secondaries answer a fence but keep taking old-generation frames. */
  noFence?: boolean;
  /** Negative control (c): realtime clocks with per-process origins and no commit wait. */
  noCommitWait?: boolean;
  /**
   * Only the checks made after the takeover (images, chains, bitmaps, same
   * Ts): shows that a broken rule also breaks the outcome, not just a
   * per-step invariant.
   */
  outcomeChecksOnly?: boolean;
  /**
   * Power cuts: a primary, a secondary or the whole host loses every write
   * not yet durable (volume blocks not fdatasynced, SQLite commits after the
   * last synced one), restarts on a new boot and recovers as the product does.
   */
  powerCuts?: boolean;
  /** Negative control (power cuts): no activity log (hot regions not put in the bitmap after a power cut). */
  noActivityLog?: boolean;
  /** Negative control (power cuts): the secondary's RCR queue commit is NORMAL, so acks go out before it is durable. */
  normalQueueCommit?: boolean;
  /**
   * Negative control (power cuts): the product before the fixes this model
   * asked for (docs/simulation.md, Findings 2-3): no durable seq lease, and
   * the after-failure procedure's state changes in NORMAL commits.
   */
  noPowerCutFixes?: boolean;
  /**
   * Resyncs (docs/resync.md): after the first suspension or takeover (and
   * host writes on the secondaries after a takeover), a forward resync with
   * crashes and power cuts during it, a second suspension or takeover at a
   * step of it the seed picks, then a resync to the end with host writes
   * stopped, and every secondary image compared with its primary.
   */
  resync?: boolean;
  /** Force the step of the resync the second procedure interrupts (otherwise the seed picks). */
  interruptAt?: InterruptPhase;
  /** Negative control (resync): secondaries ignore the hold, 112 = min 111 during a resync. */
  noBarrier?: boolean;
  /** Negative control (resync): the copier clears a block's bit before the copy's journal row is durable. */
  clearBitBeforeJournal?: boolean;
  /** Negative control (resync): a copy is stamped, then read without the range lock (a host write lands between). */
  copyOutsideLock?: boolean;
  /**
   * Control (resync): the copier as first written (primary.ts copyGroup
   * before it waited per link): C_k once every link of the group's volumes
   * acknowledged the primary's last seq, rather than once every copy is
   * acknowledged. Acks are per link, so a link whose last entry is older
   * never gets there once host writes stop, and the resync never ends.
   */
  copiedWaitsForLastSeq?: boolean;
  /**
   * Control (resync): withPrimaries as it was before the simulation's Finding
   * 5: a secondary's restart recomputes 112 = max(112, min 111), lifting it
   * above a cut at T_old.
   */
  restartLifts112?: boolean;
  /** One line per notable event, for replaying a seed by eye. */
  log?: (line: string) => void;
}

/**
 * Steps of a resync at which the second suspension or takeover starts:
 * before the resync begins, while the secondaries begin, while copying,
 * between the copies finishing and the barrier, while the secondaries apply
 * after the barrier, after the resync is complete; "none": no interruption.
 */
export const INTERRUPT_PHASES = ["before", "begin", "copying", "copied", "apply", "after", "none"] as const;
export type InterruptPhase = (typeof INTERRUPT_PHASES)[number];

export interface SimResult {
  seed: number;
  ok: boolean;
  failure?: string;
  n: number;
  m: number;
  clock: "monotonic" | "realtime";
  ticks: number;
  writes: number;
  ts: bigint | null;
  procedureRuns: number;
  crashes: number;
  rcmCrashes: number;
  partitions: number;
  powerCuts: number;
  /** RCRs applied at the secondaries, and RCRs dropped into their bitmaps at Ts. */
  applied: number;
  dropped: number;
  /** Resync histories: copies made, resyncs completed (every secondary passed the barrier), and the interruption (step it started at, procedure, cut). */
  copies: number;
  resyncsCompleted: number;
  interrupt: { phase: InterruptPhase; mode: "suspend" | "takeover"; cut: "floor" | "ts" } | null;
}

export class SimFailure extends Error {
  constructor(message: string) {
    super(message);
    this.name = "SimFailure";
  }
}

function check(cond: unknown, message: string): asserts cond {
  if (!cond) throw new SimFailure(message);
}

const skipCheck = (_cond: unknown, _message: string) => {};

/** The sweep script's flags that select these options (the seed aside). */
export function flagsOf(o: Omit<SimOptions, "seed">): string {
  const f: string[] = [];
  if (o.clock) f.push(`--clock ${o.clock}`);
  if (o.floorLeadNs !== undefined && o.floorLeadNs !== PRODUCT_FLOOR_LEAD_NS) f.push(`--floor-lead-ns ${o.floorLeadNs}`);
  if (o.bareClockSync) f.push("--bare-clock-sync");
  if (o.noFence) f.push("--no-fence");
  if (o.noCommitWait) f.push("--no-commit-wait");
  if (o.outcomeChecksOnly) f.push("--outcome-checks-only");
  if (o.powerCuts) f.push("--power-cuts");
  if (o.noActivityLog) f.push("--no-activity-log");
  if (o.normalQueueCommit) f.push("--normal-queue-commit");
  if (o.noPowerCutFixes) f.push("--no-power-cut-fixes");
  if (o.resync) f.push("--resync");
  if (o.interruptAt) f.push(`--interrupt-at ${o.interruptAt}`);
  if (o.noBarrier) f.push("--no-barrier");
  if (o.clearBitBeforeJournal) f.push("--clear-bit-before-journal");
  if (o.copyOutsideLock) f.push("--copy-outside-lock");
  if (o.copiedWaitsForLastSeq) f.push("--copied-waits-for-last-seq");
  if (o.restartLifts112) f.push("--restart-lifts-112");
  return f.join(" ");
}

/** What replays one seed with its event log. */
export function replayCommand(seed: number, o: Omit<SimOptions, "seed"> = {}): string {
  const flags = flagsOf(o);
  return `node --import tsx scripts/sim-sweep.ts --seed ${seed}${flags ? " " + flags : ""} --verbose`;
}

/**
 * "cut": journaled, then its journal commit was lost in a power cut (it may
 * still have reached its secondary, which then holds it).
 */
type WriteState = "stamped" | "committed" | "lost" | "unreplicated" | "refused" | "cut";

interface Write {
  id: number;
  k: number;
  s: number;
  vol: number;
  block: number;
  blocks: number;
  ts: bigint | null;
  seq: number;
  chain: Chain | null;
  state: WriteState;
  /** NBD FUA: acknowledged only once the journal and the volume are durable. */
  fua: boolean;
  /** A resync's copy: per block, the id of the write the primary volume held when it was read. */
  copy: number[] | null;
  /**
   * Per block, the position in the primary volume's history of this write's
   * volume write (or of the content a copy read): the chain check compares
   * positions, so an overwritten or copied write still counts as held.
   */
  pos: number[] | null;
  /** The epoch (time between two procedures) it was stamped or written in. */
  epoch: number;
  /** Its primary's generation when it was stamped (frames carry it). */
  gen: number;
}

interface Rcr extends QueuedRcr {
  write: Write;
}

interface Volume {
  id: number;
  name: string;
  k: number;
  s: number;
  /** Primary volume and secondary volume: block -> id of the last write (0: never written). */
  primary: number[];
  secondary: number[];
  /** Power cuts: the primary volume's blocks as of its last fdatasync, and what was written since (page cache). */
  primaryDurable: number[];
  primaryDirty: Map<number, number[]>;
  /** Per block: the greatest write id the host was told is durable (FUA). */
  flushed: number[];
  /** Per block: how many times the primary block changed, and the position of what the secondary block holds (-1: a host write to the secondary). */
  primaryPos: number[];
  secondaryPos: number[];
}

/** One SQLite commit since the last durable one: how to take it back if a power cut loses it. */
type Undo = (() => void)[];

interface Entry {
  seq: number;
  ts: bigint;
  write: Write;
}

interface Sender {
  ackedSeq: number;
  sentSeq: number;
  nextConnectAt: number;
}

type PrimaryState = "active" | "copying" | "suspended" | "fenced" | "taken-over";
/** primary.ts replicating(): host writes stream as RCRs. */
const replicatingP = (s: PrimaryState) => s === "active" || s === "copying";
type SecondaryState = "active" | "resyncing" | "suspended" | "takeover";
/** secondary.ts replicating(): the group takes its primaries' frames. */
const replicatingS = (s: SecondaryState) => s === "active" || s === "resyncing";

interface Primary {
  k: number;
  up: boolean;
  restartAt: number;
  // Durable (SQLite, volumes): survives kill -9.
  journal: Entry[][];
  tsFloor: bigint;
  seqFloor: number;
  state: PrimaryState;
  generation: number;
  bitmap: Map<string, Set<number>>;
  /** Activity log: hot regions ("vol:region"), durable before their first write. */
  activity: Set<string>;
  /** SQLite commits since the last durable one (power cuts). */
  wal: Undo[];
  /** The last stop was a power cut: the restart is on a new boot. */
  powerLost: boolean;
  /** Seqs below this were leased by a FULL commit. */
  seqLease: number;
  /** C_k of the last completed copy (sent as COPIED while active). */
  copiedTs: bigint | null;
  // Memory: lost at kill -9.
  clock: StampClock;
  /** primary.ts regionSeq: highest seq and last write tick per hot region. */
  regionSeq: Map<string, { vol: number; region: number; link: number; seq: number; at: number }>;
  trimmedSeq: number[];
  nextTrimAt: number;
  pending: PendingRcrs;
  seq: number;
  persistedFloor: bigint;
  appending: Entry[];
  commitAt: number;
  acking: Write[];
  senders: Sender[];
  lastSync: bigint | null;
  nextSyncAt: number;
  /** Copier: blocks ("vol:block") whose copy is stamped but not journaled yet. */
  copyInFlight: Set<string>;
  /** --copied-waits-for-last-seq: the seq the copier waits for once its runs are done. */
  copyUpTo: number;
}

interface Secondary {
  s: number;
  up: boolean;
  restartAt: number;
  // Durable.
  times: GroupTimes;
  queue: Rcr[];
  lastSeq: number[];
  generation: number;
  state: SecondaryState;
  synchronizedTs: bigint | null;
  bitmap: Map<string, Set<number>>;
  received: Set<number>;
  applied: Set<number>;
  lastApplied: Rcr | null;
  /** The last epoch whose RCRs it applied (for the order of host writes to it). */
  epochApplied: number;
  wal: Undo[];
  powerLost: boolean;
  // Memory.
  work: ({ kind: "rcr"; k: number; conn: number; records: Rcr[] } | { kind: "sync" | "copied"; k: number; t: bigint; gen: number })[];
  commitAt: number;
  drainWaiters: { call: number; run: number; ts: bigint }[];
}

type Down = { kind: "rcr"; at: number; gen: number; records: Rcr[] } | { kind: "sync" | "copied"; at: number; gen: number; t: bigint };
type Up = { kind: "ack"; at: number; seq: number } | { kind: "refuse"; at: number };

interface Link {
  k: number;
  s: number;
  conn: number;
  mode: "ok" | "hold" | "drop";
  healAt: number;
  heldSince: number;
  /** The secondary refused a frame: it reads nothing more on this connection. */
  refusing: boolean;
  down: Down[];
  up: Up[];
}

interface Chain {
  id: number;
  lastK: number;
  nextAt: number;
  inflight: Write | null;
  writes: Write[];
  ended: boolean;
}

type Op =
  | { op: "status" }
  | { op: "fence"; gen: number }
  | { op: "primary"; gen: number; takeover: boolean }
  | { op: "apply-ts"; gen: number; ts: bigint }
  | { op: "takeover"; gen: number }
  | { op: "resync-begin"; gen: number }
  | { op: "primary-resync"; gen: number; blocks: Map<string, number[]> }
  | { op: "primary-status" };

/** What a subsystem answers: a secondary's times and resync report, or a primary's state. */
interface TimesReport {
  generation: number;
  state: string;
  first: ReadonlyMap<number, bigint>;
  synchronizedTs: bigint | null;
  /** secondary.ts resyncReport(): the hold's floor and barrier, or the synchronized time it rests at. */
  resync: ResyncReport;
  /** resync-begin: the secondary's dirty blocks per volume. */
  bitmap?: Map<string, number[]>;
  /** A primary's blocks still to copy. */
  remaining?: number;
}

interface Call {
  id: number;
  to: { kind: "p" | "s"; i: number };
  op: Op;
  deadline: number;
  done: boolean;
  error: string | null;
  reply: TimesReport | null;
}

interface Run {
  id: number;
  mode: "suspend" | "takeover" | "resync";
  step: "status" | "fence" | "primaries" | "apply" | "takeover" | "rstatus" | "begin" | "pbegin" | "watch";
  gen: number;
  ts: bigint | null;
  calls: Call[];
  fenceReports: Call[];
  /** A suspension a resync asked for (the group did not rest at one synchronized time). */
  thenResync?: boolean;
  nextPollAt?: number;
}

/** The time between two procedures: the secondaries rest at `floor` with `base` (or hold it through a resync). */
interface Epoch {
  id: number;
  /** The generation of the procedure that brought the group to rest at `floor`. */
  gen: number;
  floor: bigint;
  /** The secondary images when the epoch began, with the host writes to the secondaries before they applied anything of the epoch. */
  base: number[][];
  /** Host writes to a secondary after it applied RCRs of the epoch (after a takeover's apply): "vol:block" -> id. */
  late: Map<string, number>;
}

interface CtrlMsg {
  at: number;
  call: number;
  run: number;
  to: { kind: "p" | "s" | "rcm"; i: number };
  op: Op | null;
  reply: { error: string | null; report: TimesReport | null } | null;
}

export function simulate(o: SimOptions): SimResult {
  const rnd = prng(o.seed);
  const int = (a: number, b: number) => a + Math.floor(rnd() * (b - a + 1));
  const chance = (p: number) => rnd() < p;
  const log = o.log ?? (() => {});
  /** Per-step invariants; the after-takeover checks always use check(). */
  const stepCheck: (cond: unknown, message: string) => void = o.outcomeChecksOnly ? skipCheck : check;

  // Topology and knobs, all from the seed.
  const N = int(1, 4);
  const M = int(1, 4);
  const clockMode = o.clock ?? (o.noCommitWait ? "realtime" : chance(0.5) ? "monotonic" : "realtime");
  const maxOffsetNs = clockMode === "realtime" ? BigInt(int(1, 4)) * TICK_NS : 0n;
  const skew = Array.from({ length: N }, () => (clockMode === "realtime" ? BigInt(Math.floor(rnd() * Number(maxOffsetNs))) : 0n));
  const commitWaitNs = o.noCommitWait ? 0n : maxOffsetNs;
  const floorLeadNs = o.floorLeadNs ?? PRODUCT_FLOOR_LEAD_NS;
  const maxDelay = int(0, 8);
  const syncInterval = int(2, 15);
  const writeRate = 0.1 + rnd() * 0.6;
  const chainCount = int(1, 4);
  const failAt = int(100, 1500);
  const pPartition = chance(0.7) ? 0.004 : 0;
  const pPrimaryCrash = chance(0.5) ? 0.0015 : 0;
  const pSecondaryCrash = chance(0.5) ? 0.0015 : 0;
  const pRcmCrash = chance(0.5) ? 0.02 : 0;
  const plannedSuspendFirst = chance(0.25);
  // Power cuts (drawn only in that mode, so the other seeds replay as before).
  const cuts = o.powerCuts === true;
  /** The product's fixes: a durable seq lease; the procedure's state changes durable (FULL) before they are reported. */
  const fixes = cuts && o.noPowerCutFixes !== true;
  const pPowerCut = cuts ? [0.0008, 0.0015, 0.003][int(0, 2)] : 0;
  const pFua = cuts ? [0, 0.05, 0.3][int(0, 2)] : 0;
  /** primary.ts trims every max(20 ms, sync interval); regions cool 5 s after their last write (scaled). */
  const trimInterval = cuts ? int(2, 20) : 0;
  const coolIdleTicks = cuts ? int(5, 300) : 0;
  let powerCuts = 0;
  // Resyncs (drawn only in that mode, so the other seeds replay as before).
  const resync =
    o.resync === true || o.noBarrier === true || o.clearBitBeforeJournal === true || o.copyOutsideLock === true || o.copiedWaitsForLastSeq === true || o.restartLifts112 === true;
  /** The first procedure: a suspension or a takeover (then hosts write the secondaries). */
  const p1Mode: "suspend" | "takeover" = resync && chance(0.45) ? "suspend" : "takeover";
  const interruptPhase: InterruptPhase = !resync ? "none" : (o.interruptAt ?? INTERRUPT_PHASES[int(0, INTERRUPT_PHASES.length - 1)]);
  const interruptMode: "suspend" | "takeover" = resync && chance(0.35) ? "suspend" : "takeover";
  const copyRate = resync ? 0.2 + rnd() * 0.7 : 0;
  const ticksMax = resync ? RESYNC_TICKS_MAX : TICKS_MAX;

  const vols: Volume[] = [];
  for (let k = 0; k < N; k++) {
    for (let i = int(1, 2); i > 0; i--) {
      const id = vols.length;
      vols.push({
        id,
        name: `v${id}`,
        k,
        s: int(0, M - 1),
        primary: new Array(BLOCKS_PER_VOLUME).fill(0),
        secondary: new Array(BLOCKS_PER_VOLUME).fill(0),
        primaryDurable: new Array(BLOCKS_PER_VOLUME).fill(0),
        primaryDirty: new Map(),
        flushed: new Array(BLOCKS_PER_VOLUME).fill(0),
        primaryPos: new Array(BLOCKS_PER_VOLUME).fill(0),
        secondaryPos: new Array(BLOCKS_PER_VOLUME).fill(0),
      });
    }
  }
  const primaryIds = Array.from({ length: N }, (_, k) => k);

  let tick = 0;
  // True time in ns. Every clock read moves it on by 1 ns, so causally ordered
  // events always see increasing time, as on real hardware.
  let ns = 0n;
  const readClock = (k: number) => () => {
    ns += 1n;
    return ns + skew[k];
  };

  const writes: Write[] = [];
  /** Per primary, per secondary: stamped writes in stamp order (for the 112 check). */
  const stamped: Write[][][] = Array.from({ length: N }, () => Array.from({ length: M }, () => []));
  const cursor: number[][] = Array.from({ length: M }, () => new Array(N).fill(0));
  const lastStampEver: bigint[] = new Array(N).fill(0n);
  let maxAckedTs = 0n;
  /** The epoch the group is in: between two procedures, resting at (or holding) `floor`. */
  let epoch: Epoch = { id: 0, gen: 0, floor: 0n, base: vols.map(() => new Array<number>(BLOCKS_PER_VOLUME).fill(0)), late: new Map() };
  let copies = 0;
  /** Per resync generation, the secondaries that passed its barrier (a resync is complete when all have). */
  const barriersPassed = new Map<number, Set<number>>();
  /** Cuts applied by a fenced secondary at generation gen: RCRs of older generations stamped above ts are abandoned (dropped, or bitmap blocks). */
  const appliedCuts: { gen: number; ts: bigint }[] = [];
  const abandoned = (w: Write) => appliedCuts.some((c) => w.gen < c.gen && w.ts! > c.ts);
  /** Host writes to taken-over secondaries: ids of their own, far from the primaries' write ids. */
  let secondaryWriteIds = 1_000_000_000;
  let crashes = 0;
  let partitions = 0;
  let dropped = 0;

  const newSenders = (): Sender[] => Array.from({ length: M }, () => ({ ackedSeq: 0, sentSeq: 0, nextConnectAt: 0 }));
  const primaries: Primary[] = primaryIds.map((k) => ({
    k,
    up: true,
    restartAt: 0,
    journal: Array.from({ length: M }, () => []),
    tsFloor: 0n,
    seqFloor: 0,
    state: "active",
    generation: 0,
    bitmap: new Map(),
    activity: new Set(),
    wal: [],
    powerLost: false,
    seqLease: 0,
    copiedTs: null,
    regionSeq: new Map(),
    trimmedSeq: new Array(M).fill(0),
    nextTrimAt: 0,
    clock: new StampClock(readClock(k), 0n),
    pending: new PendingRcrs(),
    seq: 0,
    persistedFloor: 0n,
    appending: [],
    commitAt: -1,
    acking: [],
    senders: newSenders(),
    lastSync: null,
    nextSyncAt: int(1, syncInterval),
    copyInFlight: new Set(),
    copyUpTo: 0,
  }));
  const secondaries: Secondary[] = Array.from({ length: M }, (_, s) => ({
    s,
    up: true,
    restartAt: 0,
    times: initialTimes(primaryIds),
    queue: [],
    lastSeq: new Array(N).fill(0),
    generation: 0,
    state: "active",
    synchronizedTs: null,
    bitmap: new Map(),
    received: new Set(),
    applied: new Set(),
    lastApplied: null,
    epochApplied: 0,
    wal: [],
    powerLost: false,
    work: [],
    commitAt: -1,
    drainWaiters: [],
  }));
  const secondFloor: bigint[] = new Array(M).fill(0n);
  const links: Link[] = [];
  for (let k = 0; k < N; k++) {
    for (let s = 0; s < M; s++) links.push({ k, s, conn: 0, mode: "ok", healAt: 0, heldSince: 0, refusing: false, down: [], up: [] });
  }
  const linkOf = (k: number, s: number) => links[k * M + s];
  let connIds = 0;


  // ---- durability (power cuts) ----
  /**
   * One SQLite commit. synchronous=FULL syncs the WAL, which makes it and
   * every earlier commit durable; NORMAL leaves it (with its undo) among the
   * commits a power cut may lose. WAL frames are ordered, so a cut keeps a
   * prefix of them.
   */
  const commitTx = (wal: Undo[], full: boolean, undo: Undo) => {
    if (!cuts) return;
    if (full) wal.length = 0;
    else if (undo.length > 0) wal.push(undo);
  };
  /** A power cut: a random prefix of the commits since the last durable one survives. */
  const loseCommits = (wal: Undo[]): number => {
    const keep = int(0, wal.length);
    const lost = wal.length - keep;
    for (let i = wal.length - 1; i >= keep; i--) for (let j = wal[i].length - 1; j >= 0; j--) wal[i][j]();
    wal.length = 0;
    return lost;
  };
  /** mark() inside a transaction: records how to take the new marks back. */
  const markU = (bitmap: Map<string, Set<number>>, volume: string, offset: number, length: number, undo: Undo) => {
    let set = bitmap.get(volume);
    if (!set) bitmap.set(volume, (set = new Set()));
    const s2 = set;
    const { first, last } = blockSpan(offset, length);
    for (let b = first; b <= last; b++) {
      if (s2.has(b)) continue;
      s2.add(b);
      if (cuts) undo.push(() => s2.delete(b));
    }
  };
  /** A write into the primary volume's page cache; returns the block's position in its history. */
  const writePrimary = (v: Volume, b: number, id: number): number => {
    if (v.primary[b] !== id) v.primaryPos[b]++;
    v.primary[b] = id;
    if (!cuts) return v.primaryPos[b];
    let l = v.primaryDirty.get(b);
    if (!l) v.primaryDirty.set(b, (l = []));
    l.push(id);
    return v.primaryPos[b];
  };
  /** fdatasync of a primary volume. */
  const syncPrimary = (v: Volume) => {
    if (v.primaryDirty.size === 0) return;
    for (const b of v.primaryDirty.keys()) v.primaryDurable[b] = v.primary[b];
    v.primaryDirty.clear();
  };
  /**
   * A power cut: the page cache writes back in any order, so each block
   * written since the last fdatasync holds its durable content or any one of
   * the contents it had since (a 2-block write may be torn).
   */
  const cutPrimaryVolume = (v: Volume) => {
    for (const [b, l] of v.primaryDirty) {
      const i = int(0, l.length);
      const id = i === 0 ? v.primaryDurable[b] : l[i - 1];
      if (v.primary[b] !== id) v.primaryPos[b]++;
      v.primary[b] = v.primaryDurable[b] = id;
    }
    v.primaryDirty.clear();
  };
  const regionKey = (vol: number, region: number) => `${vol}:${region}`;

  // ---- links ----
  const deliverAt = (q: { at: number }[]) => Math.max(q.length ? q[q.length - 1].at : 0, tick + int(0, maxDelay));

  const closeLink = (l: Link, why: string) => {
    if (l.conn === 0) return;
    log(`t${tick} link P${l.k}->S${l.s} closed (${why})`);
    l.conn = 0;
    l.refusing = false;
    l.down = [];
    l.up = [];
    const p = primaries[l.k];
    p.senders[l.s].nextConnectAt = tick + int(1, 10);
  };

  const connect = (l: Link) => {
    const p = primaries[l.k];
    const sec = secondaries[l.s];
    l.conn = ++connIds;
    l.refusing = false;
    const snd = p.senders[l.s];
    // sender.ts: resend everything not acknowledged; the secondary drops duplicates.
    snd.sentSeq = snd.ackedSeq;
    // secondary.ts attach: tell the primary what is already held.
    const held = sec.lastSeq[l.k];
    if (held > 0) l.up.push({ kind: "ack", at: deliverAt(l.up), seq: held });
    if (held > p.seq) log(`t${tick} link P${l.k}->S${l.s}: S${l.s} already holds seq ${held}, above P${l.k}'s highest ${p.seq}`);
  };

  // ---- primaries ----
  /** primary.ts suspend(): unacknowledged journal entries become bitmap blocks; the journal of the group goes. */
  const suspendPrimary = (p: Primary, to: Exclude<PrimaryState, "active">, gen: number | null) => {
    const was = p.state;
    // In-flight writes finish first (the product waits for inflight == 0).
    commitJournal(p);
    const undo: Undo = [];
    if (cuts) {
      const state0 = p.state;
      const gen0 = p.generation;
      const journal0 = p.journal.slice();
      undo.push(() => {
        p.state = state0;
        p.generation = gen0;
        p.journal = journal0;
      });
    }
    p.state = was === "taken-over" ? "taken-over" : to === "fenced" && was === "suspended" ? "suspended" : to;
    if (gen !== null && gen > p.generation) p.generation = gen;
    // The group's volumes are fdatasynced first, then one transaction (NORMAL).
    for (const v of vols) if (v.k === p.k) syncPrimary(v);
    for (let s = 0; s < M; s++) {
      for (const e of p.journal[s]) {
        if (e.seq > p.senders[s].ackedSeq) markU(p.bitmap, vols[e.write.vol].name, e.write.block * BITMAP_BLOCK_BYTES, e.write.blocks * BITMAP_BLOCK_BYTES, undo);
      }
      p.journal[s] = [];
    }
    commitTx(p.wal, fixes, undo);
    p.pending.dropGroup(GROUP);
    p.lastSync = null;
    p.copyUpTo = 0;
    for (let s = 0; s < M; s++) closeLink(linkOf(p.k, s), `primary P${p.k} ${p.state}`);
    if (was !== p.state) log(`t${tick} P${p.k} ${was} -> ${p.state} (gen ${p.generation})`);
  };

  /** The regions of a write's blocks (activity log). */
  const regionsOf = (w: Write) => {
    const out: number[] = [];
    for (let r = Math.floor(w.block / SIM_REGION_BLOCKS); r <= Math.floor((w.block + w.blocks - 1) / SIM_REGION_BLOCKS); r++) out.push(r);
    return out;
  };

  /** primary.ts noteRegions(): the highest seq and the last write time per region, in memory. */
  const noteRegions = (p: Primary, w: Write, seq: number) => {
    for (const r of regionsOf(w)) {
      const key = regionKey(w.vol, r);
      const cur = p.regionSeq.get(key);
      if (cur) {
        cur.seq = seq;
        cur.at = tick;
      } else p.regionSeq.set(key, { vol: w.vol, region: r, link: w.s, seq, at: tick });
    }
  };

  /** FLUSH/FUA: every journal commit so far is durable (one FULL commit), and the volume is fdatasynced. */
  const flushPrimary = (p: Primary, v: Volume) => {
    commitTx(p.wal, true, []);
    syncPrimary(v);
  };

  /**
   * Journal group commit (journal.ts commit()): entries, floors and newly hot
   * regions in one transaction, FULL when a region turns hot (the WAL up to
   * here becomes durable), NORMAL otherwise. Then the volume writes (page
   * cache), FUA flushes, and the host acks.
   */
  const commitJournal = (p: Primary) => {
    if (p.appending.length === 0) {
      p.commitAt = -1;
      return;
    }
    const batch = p.appending;
    const undo: Undo = [];
    let newRegion = false;
    if (cuts) {
      const lists = p.journal.slice();
      const lens = lists.map((l) => l.length);
      const ts0 = p.tsFloor;
      const seq0 = p.seqFloor;
      undo.push(() => {
        for (let s = 0; s < M; s++) {
          p.journal[s] = lists[s];
          lists[s].length = lens[s];
        }
        p.tsFloor = ts0;
        p.seqFloor = seq0;
        for (const e of batch) if (e.write.state === "committed") e.write.state = "cut";
      });
      for (const e of batch) {
        for (const r of regionsOf(e.write)) {
          const key = regionKey(e.write.vol, r);
          if (p.activity.has(key)) continue;
          p.activity.add(key);
          newRegion = true;
          undo.push(() => p.activity.delete(key));
        }
      }
    }
    for (const e of batch) {
      const w = e.write;
      p.journal[w.s].push(e);
      if (e.ts > p.tsFloor) p.tsFloor = e.ts;
      if (e.ts > lastStampEver[p.k]) lastStampEver[p.k] = e.ts;
      if (e.seq > p.seqFloor) p.seqFloor = e.seq;
    }
    commitTx(p.wal, newRegion, undo);
    for (const e of batch) {
      const w = e.write;
      const v = vols[w.vol];
      w.state = "committed";
      // A copy reads the volume; it never writes it.
      if (w.copy !== null) continue;
      w.pos = [];
      for (let b = w.block; b < w.block + w.blocks; b++) w.pos.push(writePrimary(v, b, w.id));
      if (w.chain) w.chain.writes.push(w);
      if (w.fua) flushPrimary(p, v);
      p.acking.push(w);
    }
    p.appending = [];
    p.commitAt = -1;
    // Copies: (--copy-outside-lock) a late read, after host writes stamped later landed; then,
    // the journal rows committed, their bits leave the bitmap (copyDone, NORMAL).
    const cleared: Undo = [];
    for (const e of batch) {
      const w = e.write;
      if (w.copy === null) continue;
      if (w.copy.length === 0) readCopy(w);
      const set = p.bitmap.get(vols[w.vol].name);
      for (let b = w.block; b < w.block + w.blocks; b++) {
        p.copyInFlight.delete(blockKey(w.vol, b));
        if (!o.clearBitBeforeJournal && set?.delete(b) && cuts) cleared.push(() => set.add(b));
      }
    }
    commitTx(p.wal, false, cleared);
  };

  const hostAck = (w: Write) => {
    if (w.ts !== null && w.ts > maxAckedTs) maxAckedTs = w.ts;
    if (w.fua) {
      const v = vols[w.vol];
      for (let b = w.block; b < w.block + w.blocks; b++) if (w.id > v.flushed[b]) v.flushed[b] = w.id;
    }
    const c = w.chain;
    if (c && c.inflight === w) {
      c.inflight = null;
      c.lastK = w.k;
      c.nextAt = tick + (chance(0.5) ? 0 : int(1, 3));
    }
  };

  const hostWrite = (vol: Volume, chain: Chain | null): "accepted" | "down" | "refused" => {
    const p = primaries[vol.k];
    if (!p.up) return "down";
    const blocks = chance(0.2) && BLOCKS_PER_VOLUME > 1 ? 2 : 1;
    const block = int(0, BLOCKS_PER_VOLUME - blocks);
    const fua = cuts ? chance(pFua) : false;
    const w: Write = { id: writes.length + 1, k: vol.k, s: vol.s, vol: vol.id, block, blocks, ts: null, seq: 0, chain, state: "stamped", fua, copy: null, pos: null, epoch: epoch.id, gen: p.generation };
    if (p.state === "taken-over") {
      w.state = "refused";
      return "refused";
    }
    writes.push(w);
    if (chain) chain.inflight = w;
    if (!replicatingP(p.state)) {
      // primary.ts writeUnreplicated: bitmap first (BitmapWriter: a FULL commit
      // when a block is newly marked), then the volume; no stamp.
      const undo: Undo = [];
      markU(p.bitmap, vol.name, block * BITMAP_BLOCK_BYTES, blocks * BITMAP_BLOCK_BYTES, undo);
      commitTx(p.wal, fixes && undo.length > 0, undo);
      w.pos = [];
      for (let b = block; b < block + blocks; b++) w.pos.push(writePrimary(vol, b, w.id));
      if (fua) flushPrimary(p, vol);
      w.state = "unreplicated";
      if (chain) chain.writes.push(w);
      hostAck(w);
      return "accepted";
    }
    // Stamping and registering as pending are one synchronous step.
    const ts = p.clock.stamp();
    const seq = ++p.seq;
    if (fixes && seq > p.seqLease) {
      // Proposed fix: a seq is never reused after a power cut. Leases of SEQ_LEASE seqs, one FULL commit each.
      p.seqLease = seq + SEQ_LEASE;
      commitTx(p.wal, true, []);
    }
    p.pending.add(GROUP, vol.s, seq, ts);
    w.ts = ts;
    w.seq = seq;
    if (cuts) noteRegions(p, w, seq);
    // Strictly above every stamp of this primary that can matter: journaled
    // ones and announced SYNC times (a stamp lost with the process, never
    // journaled, may be handed out again).
    stepCheck(ts > lastStampEver[p.k], `P${p.k}: stamp ${ts} not above its earlier journaled stamp or SYNC time ${lastStampEver[p.k]}`);
    stepCheck(
      ts > maxAckedTs,
      `P${p.k}: stamp ${ts} of write #${w.id} is not above ${maxAckedTs}, a stamp already acknowledged to a host (dependent writes would be reordered)`,
    );
    stamped[p.k][vol.s].push(w);
    p.appending.push({ seq, ts, write: w });
    if (p.commitAt < 0) p.commitAt = tick + int(0, 2);
    return "accepted";
  };

  // ---- the copier (primary.ts copyGroup/copyRun, docs/resync.md steps 4-5) ----
  const blockKey = (vol: number, b: number) => `${vol}:${b}`;
  /** The range lock: a replicated host write holds its blocks from stamping until its volume write (in the journal commit here). */
  const lockedByHostWrite = (p: Primary, vol: number, b: number) =>
    p.appending.some((e) => e.write.copy === null && e.write.vol === vol && b >= e.write.block && b < e.write.block + e.write.blocks);

  /**
   * What the primary volume holds now, for a copy. docs/resync.md: a copy
   * holds exactly the writes stamped before it, so no write stamped before it
   * may still be on its way to the volume, and none stamped after it there.
   */
  const readCopy = (w: Write) => {
    const v = vols[w.vol];
    const p = primaries[w.k];
    w.copy = [];
    w.pos = [];
    for (let b = w.block; b < w.block + w.blocks; b++) {
      const holder = v.primary[b] > 0 ? writes[v.primary[b] - 1] : null;
      stepCheck(
        holder === null || holder.ts === null || holder.ts < w.ts!,
        `P${w.k}: copy #${w.id} (ts ${w.ts}) of ${v.name} block ${b} reads write #${holder?.id}, stamped after it (ts ${holder?.ts})`,
      );
      const early = p.appending.find((e) => e.write.copy === null && e.write.vol === w.vol && b >= e.write.block && b < e.write.block + e.write.blocks && e.ts < w.ts!);
      stepCheck(!early, `P${w.k}: copy #${w.id} (ts ${w.ts}) of ${v.name} block ${b} misses write #${early?.write.id} (ts ${early?.ts}), stamped before it and not yet on the volume`);
      w.copy.push(v.primary[b]);
      w.pos.push(v.primaryPos[b]);
    }
  };

  /**
   * One copy run: under the range lock, stamp and register pending (one
   * synchronous step), read, and journal (group commit); the bits go once
   * the journal row is committed. In the simulation a copy is atomic with
   * respect to host writes on its blocks: it runs only when no host write
   * holds them.
   */
  const copyRun = (p: Primary, v: Volume, first: number, n: number) => {
    const ts = p.clock.stamp();
    const seq = ++p.seq;
    if (fixes && seq > p.seqLease) {
      p.seqLease = seq + SEQ_LEASE;
      commitTx(p.wal, true, []);
    }
    p.pending.add(GROUP, v.s, seq, ts);
    const w: Write = { id: writes.length + 1, k: p.k, s: v.s, vol: v.id, block: first, blocks: n, ts, seq, chain: null, state: "stamped", fua: false, copy: [], pos: [], epoch: epoch.id, gen: p.generation };
    writes.push(w);
    copies++;
    stepCheck(ts > lastStampEver[p.k], `P${p.k}: copy stamp ${ts} not above its earlier journaled stamp or SYNC time ${lastStampEver[p.k]}`);
    stepCheck(ts > maxAckedTs, `P${p.k}: copy stamp ${ts} of #${w.id} is not above ${maxAckedTs}, a stamp already acknowledged to a host`);
    stamped[p.k][v.s].push(w);
    // --copy-outside-lock: the read is not ordered with host writes: now (a write stamped earlier has not landed) or after the commit (a later one has).
    if (!o.copyOutsideLock || chance(0.5)) readCopy(w);
    for (let b = first; b < first + n; b++) p.copyInFlight.add(blockKey(v.id, b));
    if (o.clearBitBeforeJournal) {
      // The control: the bits go before the journal row is durable (or even committed).
      const set = p.bitmap.get(v.name)!;
      const undo: Undo = [];
      for (let b = first; b < first + n; b++) if (set.delete(b) && cuts) undo.push(() => set.add(b));
      commitTx(p.wal, false, undo);
    }
    p.appending.push({ seq, ts, write: w });
    if (p.commitAt < 0) p.commitAt = tick + int(0, 2);
    log(`t${tick} P${p.k} copies ${v.name} blocks ${first}+${n} at ${ts} (#${w.id}: ${w.copy!.length > 0 ? w.copy!.join(",") : "read later"})`);
  };

  const stepCopier = (p: Primary) => {
    if (p.state !== "copying" || !chance(copyRate)) return;
    let runs = int(1, 2);
    for (const v of vols) {
      if (v.k !== p.k || runs === 0) continue;
      const set = p.bitmap.get(v.name);
      if (!set || set.size === 0) continue;
      const blocks = [...set].sort((a, b) => a - b);
      const free = (b: number) => !p.copyInFlight.has(blockKey(v.id, b)) && (o.copyOutsideLock === true || !lockedByHostWrite(p, v.id, b));
      let i = 0;
      while (i < blocks.length && runs > 0) {
        if (!free(blocks[i])) {
          i++;
          continue;
        }
        let j = i + 1;
        while (j < blocks.length && blocks[j] === blocks[j - 1] + 1 && j - i < SIM_COPY_RUN_BLOCKS && free(blocks[j])) j++;
        copyRun(p, v, blocks[i], j - i);
        runs--;
        i = j;
      }
    }
  };

  /**
   * Step 5: the bitmap is empty and every copy acknowledged: one more stamp
   * C_k, durable with the state (FULL), and COPIED goes out with the next
   * announcements.
   */
  const maybeCopied = (p: Primary) => {
    if (p.state !== "copying" || p.copyInFlight.size > 0) return;
    for (const v of vols) {
      if (v.k === p.k && (p.bitmap.get(v.name)?.size ?? 0) > 0) {
        p.copyUpTo = 0;
        return;
      }
    }
    if (o.copiedWaitsForLastSeq) {
      // The copier as first written: every link of the group's volumes must ack the primary's last seq.
      if (p.copyUpTo === 0) p.copyUpTo = p.seq;
      for (const v of vols) if (v.k === p.k && p.senders[v.s].ackedSeq < p.copyUpTo) return;
    } else {
      for (let s = 0; s < M; s++) for (const e of p.journal[s]) if (e.write.copy !== null && e.seq > p.senders[s].ackedSeq) return;
    }
    const c = p.clock.stamp();
    stepCheck(c > lastStampEver[p.k], `P${p.k}: C_k ${c} not above its earlier stamps ${lastStampEver[p.k]}`);
    if (c > lastStampEver[p.k]) lastStampEver[p.k] = c;
    p.state = "active";
    p.copiedTs = c;
    if (c > p.tsFloor) p.tsFloor = c;
    commitTx(p.wal, true, []);
    p.copyUpTo = 0;
    log(`t${tick} P${p.k} copy complete and acknowledged: C_k ${c} (gen ${p.generation})`);
  };

  const crashPrimary = (p: Primary) => {
    log(`t${tick} P${p.k} kill -9`);
    crashes++;
    p.up = false;
    p.restartAt = tick + int(5, 120);
    for (const e of p.appending) e.write.state = "lost";
    for (const e of p.appending) if (e.write.chain) e.write.chain.ended = true;
    // Acknowledgements never sent: those hosts saw an error, their chains end.
    for (const w of p.acking) if (w.chain) w.chain.ended = true;
    p.appending = [];
    p.acking = [];
    for (let s = 0; s < M; s++) closeLink(linkOf(p.k, s), "primary crashed");
  };

  /** A power cut on the primary's host: the process dies, and what was not durable is gone. */
  const powerCutPrimary = (p: Primary) => {
    if (p.up) crashPrimary(p);
    const lost = loseCommits(p.wal);
    for (const v of vols) if (v.k === p.k) cutPrimaryVolume(v);
    p.powerLost = true;
    log(`t${tick} P${p.k} power cut (${lost} SQLite commits lost)`);
  };

  /** Every block the host was told is durable (FUA) is still on the primary volume. */
  const checkFlushed = (v: Volume, chk: (cond: unknown, message: string) => void) => {
    for (let b = 0; b < BLOCKS_PER_VOLUME; b++) {
      chk(v.primary[b] >= v.flushed[b], `${v.name} block ${b} on P${v.k} holds write #${v.primary[b]}, but write #${v.flushed[b]} was acknowledged as durable (FUA)`);
    }
  };

  const restartPrimary = (p: Primary) => {
    log(`t${tick} P${p.k} restart (floor ${p.tsFloor})`);
    p.up = true;
    if (cuts) {
      // primary.ts start(): the journal is replayed onto the volumes, which are then fdatasynced.
      p.regionSeq = new Map();
      p.trimmedSeq = new Array(M).fill(0);
      const entries = p.journal.flat().sort((a, b) => a.seq - b.seq);
      for (const e of entries) {
        const w = e.write;
        // primary.ts start() replays copies too (their data is what the block held at their seq).
        for (let b = w.block; b < w.block + w.blocks; b++) writePrimary(vols[w.vol], b, w.copy !== null ? w.copy[b - w.block] : w.id);
        if (w.copy === null) noteRegions(p, w, e.seq);
      }
      for (const v of vols) if (v.k === p.k) syncPrimary(v);
      if (p.powerLost) {
        // markHotRegionsDirty(): a hot region may hold volume writes whose journal entries were lost.
        if (!o.noActivityLog) {
          const undo: Undo = [];
          for (const key of p.activity) {
            const [vol, region] = key.split(":").map(Number);
            markU(p.bitmap, vols[vol].name, region * SIM_REGION_BLOCKS * BITMAP_BLOCK_BYTES, SIM_REGION_BLOCKS * BITMAP_BLOCK_BYTES, undo);
          }
          commitTx(p.wal, false, undo);
        }
        p.powerLost = false;
        for (const v of vols) if (v.k === p.k) checkFlushed(v, stepCheck);
      }
      p.nextTrimAt = tick + trimInterval;
    }
    p.clock = new StampClock(readClock(p.k), p.tsFloor);
    p.persistedFloor = p.tsFloor;
    p.seq = fixes ? Math.max(p.seqFloor, p.seqLease) : p.seqFloor;
    p.pending = new PendingRcrs();
    for (let s = 0; s < M; s++) for (const e of p.journal[s]) p.pending.add(GROUP, s, e.seq, e.ts);
    p.senders = newSenders();
    p.commitAt = -1;
    p.lastSync = null;
    p.nextSyncAt = tick + int(1, syncInterval);
    p.copyInFlight = new Set();
    p.copyUpTo = 0;
  };

  const announce = (p: Primary) => {
    if (!replicatingP(p.state)) return;
    // COPIED is repeated with every announcement: a secondary away when the copy ended still learns it.
    if (p.state === "active" && p.copiedTs !== null) {
      for (let s = 0; s < M; s++) {
        const l = linkOf(p.k, s);
        if (l.conn !== 0) l.down.push({ kind: "copied", at: deliverAt(l.down), gen: p.generation, t: p.copiedTs });
      }
    }
    const t = o.bareClockSync ? p.clock.stamp() : syncTime(p.pending.oldest(GROUP), () => p.clock.stamp());
    if (p.lastSync !== null && t < p.lastSync) return;
    p.lastSync = t;
    if (t > lastStampEver[p.k]) lastStampEver[p.k] = t;
    for (let s = 0; s < M; s++) {
      const l = linkOf(p.k, s);
      if (l.conn !== 0) l.down.push({ kind: "sync", at: deliverAt(l.down), gen: p.generation, t });
    }
    // primary.ts announce(): the persisted floor leads the stamps handed out (one NORMAL commit).
    if (p.clock.lastStamp > p.persistedFloor) {
      p.persistedFloor = p.clock.lastStamp + floorLeadNs;
      if (p.persistedFloor > p.tsFloor) {
        const ts0 = p.tsFloor;
        p.tsFloor = p.persistedFloor;
        commitTx(p.wal, false, [() => (p.tsFloor = ts0)]);
      }
    }
  };

  /**
   * primary.ts trim(): entries acknowledged by their secondary leave the
   * journal once the volumes are fdatasynced (NORMAL commit); regions whose
   * writes are all trimmed and idle for a while cool (NORMAL commit).
   */
  const trimPrimary = (p: Primary) => {
    let work = false;
    for (let s = 0; s < M; s++) if (p.senders[s].ackedSeq > p.trimmedSeq[s]) work = true;
    if (work) {
      for (const v of vols) if (v.k === p.k) syncPrimary(v);
      const journal0 = p.journal.slice();
      let changed = false;
      for (let s = 0; s < M; s++) {
        const upTo = p.senders[s].ackedSeq;
        const list = p.journal[s];
        let i = 0;
        while (i < list.length && list[i].seq <= upTo) i++;
        if (i > 0) {
          p.journal[s] = list.slice(i);
          changed = true;
        }
        if (upTo > p.trimmedSeq[s]) p.trimmedSeq[s] = upTo;
      }
      if (changed) commitTx(p.wal, false, [() => (p.journal = journal0)]);
    }
    const undo: Undo = [];
    for (const [key, r] of p.regionSeq) {
      if (r.seq <= p.trimmedSeq[r.link] && r.at < tick - coolIdleTicks) {
        p.regionSeq.delete(key);
        if (p.activity.delete(key)) undo.push(() => p.activity.add(key));
      }
    }
    commitTx(p.wal, false, undo);
  };

  const pump = (p: Primary, l: Link) => {
    const snd = p.senders[l.s];
    const list = p.journal[l.s];
    let i = 0;
    while (i < list.length && list[i].seq <= snd.sentSeq) i++;
    while (i < list.length && snd.sentSeq - snd.ackedSeq < INFLIGHT_ENTRIES_MAX) {
      const records: Rcr[] = [];
      for (let n = int(1, 4); n > 0 && i < list.length; n--, i++) {
        const e = list[i];
        const w = e.write;
        records.push({ ts: e.ts, primaryId: p.k, seq: e.seq, volume: vols[w.vol].name, offset: w.block * BITMAP_BLOCK_BYTES, length: w.blocks * BITMAP_BLOCK_BYTES, write: w });
        snd.sentSeq = e.seq;
      }
      l.down.push({ kind: "rcr", at: deliverAt(l.down), gen: p.generation, records });
    }
  };

  const onUp = (p: Primary, l: Link, m: Up) => {
    const snd = p.senders[l.s];
    if (m.kind === "ack") {
      if (m.seq <= snd.ackedSeq) return;
      if (m.seq > p.seq) {
        // sender.ts: an ack above any seq issued here is not ours; the link is dropped.
        log(`t${tick} S${l.s} acks seq ${m.seq} to P${p.k}, above its highest seq ${p.seq}`);
        closeLink(l, "ack beyond any seq issued here");
        return;
      }
      if (m.seq > snd.sentSeq) snd.sentSeq = m.seq;
      snd.ackedSeq = m.seq;
      p.pending.ackUpTo(l.s, m.seq);
      if (cuts) return; // trimPrimary() runs on its own timer.
      // Acknowledged and (kill -9 model) durable on the volume: trimmed.
      const list = p.journal[l.s];
      let i = 0;
      while (i < list.length && list[i].seq <= m.seq) i++;
      if (i > 0) p.journal[l.s] = list.slice(i);
    } else {
      log(`t${tick} S${l.s} refused P${p.k} (stale generation)`);
      // (primary.ts onRefused fences only an active group; a copying one, which replicates too, keeps journaling.)
      if (replicatingP(p.state)) suspendPrimary(p, "fenced", null);
      closeLink(l, "refused");
    }
  };

  // ---- secondaries ----
  /**
   * The 112 the secondary applies up to: its times' second time parameter,
   * or under --no-barrier min 111 while a hold is set (the control ignores it).
   */
  const second112 = (sec: Secondary): bigint => {
    const t = sec.times;
    if (!o.noBarrier || !t.hold) return t.second;
    const m = minFirst(t.first);
    return m > t.second ? m : t.second;
  };

  const onDown = (sec: Secondary, l: Link, m: Down) => {
    if (l.refusing) return;
    if (!o.noFence && (m.gen !== sec.generation || !replicatingS(sec.state))) {
      // Fencing: a suspended group takes nothing more, SYNC included.
      l.refusing = true;
      l.down = [];
      l.up.push({ kind: "refuse", at: deliverAt(l.up) });
      return;
    }
    if (m.kind === "rcr") sec.work.push({ kind: "rcr", k: l.k, conn: l.conn, records: m.records });
    else sec.work.push({ kind: m.kind, k: l.k, t: m.t, gen: m.gen });
    if (sec.commitAt < 0) sec.commitAt = tick + int(0, 2);
  };

  /** secondary.ts commit(): one transaction for everything received, then acks. */
  const commitSecondary = (sec: Secondary) => {
    const ackTo = new Map<number, number>();
    // FULL before the acks (NORMAL under the --normal-queue-commit control); an
    // empty transaction writes nothing and syncs nothing.
    const undo: Undo = [];
    let wrote = false;
    const receivedNow: number[] = [];
    if (cuts && o.normalQueueCommit) {
      const q0 = sec.queue;
      const len0 = q0.length;
      const last0 = sec.lastSeq.slice();
      const times0 = sec.times;
      const state0 = sec.state;
      const bitmap0 = sec.bitmap;
      undo.push(() => {
        sec.queue = q0;
        q0.length = len0;
        sec.lastSeq = last0;
        sec.times = times0;
        sec.state = state0;
        sec.bitmap = bitmap0;
        for (const id of receivedNow) sec.received.delete(id);
      });
    }
    for (const w of sec.work) {
      if (w.kind === "rcr") {
        wrote = true;
        let last = sec.lastSeq[w.k];
        for (const r of w.records) {
          if (r.seq <= last) continue;
          stepCheck(
            r.ts > second112(sec) || !replicatingS(sec.state),
            `S${sec.s}: RCR ts ${r.ts} (P${r.primaryId} seq ${r.seq}) arrives with 112 already at ${second112(sec)}`,
          );
          sec.queue.push(r);
          sec.received.add(r.write.id);
          receivedNow.push(r.write.id);
          last = r.seq;
        }
        sec.lastSeq[w.k] = last;
        ackTo.set(w.k, w.conn);
      } else {
        if (!o.noFence && (w.gen !== sec.generation || !replicatingS(sec.state))) continue;
        const out: SyncOutcome = w.kind === "sync" ? onSync(sec.times, w.k, w.t) : onCopied(sec.times, w.k, w.t);
        if (out.kind === "raised") {
          sec.times = out.times;
          wrote = true;
          if (out.lifted) {
            // The barrier is passed (secondary.ts endResync, in the same transaction):
            // every copy sits at or below 112, the group replicates, the bitmap goes.
            sec.state = "active";
            sec.bitmap = new Map();
            if (!barriersPassed.has(sec.generation)) barriersPassed.set(sec.generation, new Set());
            barriersPassed.get(sec.generation)!.add(sec.s);
            log(`t${tick} S${sec.s} passes the barrier: 112 ${sec.times.second}, hold lifted, bitmap cleared`);
          }
        }
      }
    }
    if (wrote) commitTx(sec.wal, !o.normalQueueCommit, undo);
    sec.work = [];
    sec.commitAt = -1;
    for (const [k, conn] of ackTo) {
      const l = linkOf(k, sec.s);
      if (l.conn === conn && !l.refusing) l.up.push({ kind: "ack", at: deliverAt(l.up), seq: sec.lastSeq[k] });
    }
  };

  const dueRows = (sec: Secondary, upTo: bigint) => sec.queue.filter((r) => r.ts <= upTo).sort(rcrOrder);

  /** The applier: a few rows of the disk request queue, in (ts, primary, seq) order. */
  const applySome = (sec: Secondary, max: number) => {
    const second = second112(sec);
    const due = dueRows(sec, second);
    const n = Math.min(max, due.length);
    const lastApplied0 = sec.lastApplied;
    for (let i = 0; i < n; i++) {
      const r = due[i];
      stepCheck((o.noBarrier || mayApply(sec.times, r.ts)) && r.ts <= second, `S${sec.s}: applying RCR ts ${r.ts} above its 112 ${second}`);
      stepCheck(
        sec.lastApplied === null || rcrOrder(sec.lastApplied, r) < 0,
        `S${sec.s}: RCR (${r.ts}, P${r.primaryId}, ${r.seq}) applied after (${sec.lastApplied?.ts}, P${sec.lastApplied?.primaryId}, ${sec.lastApplied?.seq})`,
      );
      const w = r.write;
      const v = vols[w.vol];
      for (let b = w.block; b < w.block + w.blocks; b++) {
        v.secondary[b] = w.copy !== null ? w.copy[b - w.block] : w.id;
        v.secondaryPos[b] = w.pos![b - w.block];
      }
      sec.applied.add(w.id);
      sec.lastApplied = r;
      if (w.epoch > sec.epochApplied) sec.epochApplied = w.epoch;
    }
    if (n > 0) {
      // The volumes are fdatasynced, then the rows leave the queue (NORMAL).
      const q0 = sec.queue;
      const last0 = lastApplied0;
      const gone = new Set(due.slice(0, n));
      sec.queue = sec.queue.filter((r) => !gone.has(r));
      commitTx(sec.wal, false, [
        () => {
          sec.queue = q0;
          sec.lastApplied = last0;
        },
      ]);
    }
  };

  const crashSecondary = (sec: Secondary) => {
    log(`t${tick} S${sec.s} kill -9`);
    crashes++;
    sec.up = false;
    sec.restartAt = tick + int(5, 120);
    sec.work = [];
    sec.commitAt = -1;
    sec.drainWaiters = [];
    for (let k = 0; k < N; k++) closeLink(linkOf(k, sec.s), "secondary crashed");
  };

  /** A power cut on the secondary's host. Its volumes hold nothing unsynced (the applier fdatasyncs before deleting rows). */
  const powerCutSecondary = (sec: Secondary) => {
    if (sec.up) crashSecondary(sec);
    const lost = loseCommits(sec.wal);
    sec.powerLost = true;
    log(`t${tick} S${sec.s} power cut (${lost} SQLite commits lost)`);
  };

  const restartSecondary = (sec: Secondary) => {
    log(`t${tick} S${sec.s} restart`);
    sec.up = true;
    // secondary.ts load(): a primary new to the group would start at 112.
    sec.times = withPrimaries(sec.times, primaryIds);
    if (o.restartLifts112 && !sec.times.hold && minFirst(sec.times.first) > sec.times.second) sec.times = { ...sec.times, second: minFirst(sec.times.first) };
  };

  /** secondary.ts timesReport() with resyncReport(): the hold's floor and barrier, or the synchronized time it rests at. */
  const report = (sec: Secondary): TimesReport => {
    const hold = sec.times.hold;
    const resync: ResyncReport = hold ? { floor: hold.floor, barrier: barrierOf(sec.times.first, hold) } : { floor: sec.synchronizedTs, barrier: null };
    return { generation: sec.generation, state: sec.state, first: new Map(sec.times.first), synchronizedTs: sec.synchronizedTs, resync };
  };
  const primaryReport = (p: Primary): TimesReport => {
    let remaining = 0;
    for (const v of vols) if (v.k === p.k) remaining += p.bitmap.get(v.name)?.size ?? 0;
    return { generation: p.generation, state: p.state, first: new Map(), synchronizedTs: null, resync: { floor: null, barrier: null }, remaining };
  };

  /** A host write to a taken-over secondary volume (secondary.ts hostWrite): bitmap first (FULL when new), then the volume. */
  const secondaryHostWrite = (v: Volume) => {
    const sec = secondaries[v.s];
    const blocks = chance(0.2) ? 2 : 1;
    const block = int(0, BLOCKS_PER_VOLUME - blocks);
    const id = ++secondaryWriteIds;
    const undo: Undo = [];
    markU(sec.bitmap, v.name, block * BITMAP_BLOCK_BYTES, blocks * BITMAP_BLOCK_BYTES, undo);
    commitTx(sec.wal, fixes && undo.length > 0, undo);
    // Simplification: written through (a power cut may lose it, but its block is already in the bitmap).
    for (let b = block; b < block + blocks; b++) {
      v.secondary[b] = id;
      v.secondaryPos[b] = -1;
      if (sec.epochApplied === epoch.id) epoch.late.set(`${v.id}:${b}`, id);
      else epoch.base[v.id][b] = id;
    }
  };

  // ---- the RCM and the control channel ----
  const ctrl: CtrlMsg[] = [];
  let callIds = 0;
  let runIds = 0;
  let rcmUp = true;
  let rcmRestartAt = 0;
  let run: Run | null = null;
  let nextRunAt = failAt;
  let wantMode: "suspend" | "takeover" | "resync" = p1Mode === "suspend" ? "suspend" : plannedSuspendFirst ? "suspend" : "takeover";
  let runsStarted = 0;
  let rcmCrashes = 0;
  const computedTs: bigint[] = [];
  let takeoverDoneAt = -1;
  let firstImages: { ts: bigint; images: string } | null = null;
  let finished = false;
  let postTakeoverCutAt = -1;
  let postTakeoverCutWhat = 0;

  const sendCall = (r: Run, to: { kind: "p" | "s"; i: number }, op: Op, timeout = CALL_TIMEOUT_TICKS): Call => {
    const c: Call = { id: ++callIds, to, op, deadline: tick + timeout, done: false, error: null, reply: null };
    r.calls.push(c);
    ctrl.push({ at: tick + int(0, 5), call: c.id, run: r.id, to, op, reply: null });
    return c;
  };
  const replyTo = (m: CtrlMsg, error: string | null, rep: TimesReport | null) => {
    ctrl.push({ at: tick + int(0, 5), call: m.call, run: m.run, to: { kind: "rcm", i: 0 }, op: null, reply: { error, report: rep } });
  };

  const onCtrlAtSecondary = (sec: Secondary, m: CtrlMsg, op: Op) => {
    if (op.op === "status") return replyTo(m, null, report(sec));
    if (op.op === "fence") {
      // secondary.ts fence(): commit what was received, durably raise the generation, then report 111.
      if (!o.noFence) {
        commitSecondary(sec);
        if (op.gen > sec.generation) {
          const gen0 = sec.generation;
          const state0 = sec.state;
          commitTx(sec.wal, fixes, [
            () => {
              sec.generation = gen0;
              sec.state = state0;
            },
          ]);
          sec.generation = op.gen;
          if (replicatingS(sec.state)) sec.state = "suspended";
          for (let k = 0; k < N; k++) closeLink(linkOf(k, sec.s), "fenced");
        }
      } else if (op.gen > sec.generation) {
        // The broken secondary records the fence but keeps its links and frames flowing.
        sec.generation = op.gen;
        if (replicatingS(sec.state)) sec.state = "suspended";
      }
      log(`t${tick} S${sec.s} fenced at gen ${op.gen}: 111 ${[...sec.times.first.values()].join(",")}`);
      return replyTo(m, null, report(sec));
    }
    if (op.op === "apply-ts") {
      if (replicatingS(sec.state) || op.gen !== sec.generation) return replyTo(m, `S${sec.s} not fenced at ${op.gen}`, null);
      if (sec.synchronizedTs !== null && sec.synchronizedTs !== op.ts) {
        return replyTo(m, `TM_TS_CONFLICT: S${sec.s} was brought to ${sec.synchronizedTs}, not ${op.ts}`, null);
      }
      if (sec.synchronizedTs === null) {
        stepCheck(second112(sec) <= op.ts, `S${sec.s}: 112 ${second112(sec)} above Ts ${op.ts}`);
        const split = splitAtSynchronizedTime(sec.queue, op.ts);
        // One transaction (NORMAL): bitmap marks, the dropped rows, 112 = Ts, synchronized_ts.
        const undo: Undo = [];
        if (cuts) {
          const q0 = sec.queue;
          const times0 = sec.times;
          undo.push(() => {
            sec.queue = q0;
            sec.times = times0;
            sec.synchronizedTs = null;
          });
        }
        for (const r of split.drop) markU(sec.bitmap, r.volume, r.offset, r.length, undo);
        commitTx(sec.wal, fixes, undo);
        for (const [v, blocks] of split.bitmap) for (const b of blocks) check(sec.bitmap.get(v)?.has(b), `S${sec.s}: bitmap block ${v}:${b} of a dropped RCR missing`);
        sec.queue = split.apply;
        dropped += split.drop.length;
        // A resync's hold ends here: the group rests at this cut.
        sec.times = { first: sec.times.first, second: op.ts, hold: null };
        sec.synchronizedTs = op.ts;
        if (!appliedCuts.some((c) => c.gen === op.gen && c.ts === op.ts)) appliedCuts.push({ gen: op.gen, ts: op.ts });
        log(`t${tick} S${sec.s} brought to Ts ${op.ts}: ${split.apply.length} to apply, ${split.drop.length} dropped`);
      }
      sec.drainWaiters.push({ call: m.call, run: m.run, ts: op.ts });
      return;
    }
    if (op.op === "takeover") {
      if (sec.synchronizedTs === null || op.gen !== sec.generation) return replyTo(m, `S${sec.s} not synchronized at ${op.gen}`, null);
      if (sec.state !== "takeover") {
        const state0 = sec.state;
        commitTx(sec.wal, fixes, [() => (sec.state = state0)]);
      }
      sec.state = "takeover";
      return replyTo(m, null, report(sec));
    }
    if (op.op === "resync-begin") {
      // secondary.ts resyncBegin(): host writes stop, 112 is held at the synchronized time, frames of the new generation are taken.
      const begun = sec.state === "resyncing" && sec.generation === op.gen;
      if (!begun) {
        if (replicatingS(sec.state) || sec.synchronizedTs === null) return replyTo(m, `TM_NOT_SYNCHRONIZED: S${sec.s} is ${sec.state}, not resting at a synchronized time`, null);
        if (op.gen <= sec.generation) return replyTo(m, `TM_GENERATION: S${sec.s} is at generation ${sec.generation}, not below ${op.gen}`, null);
        const floor = sec.synchronizedTs;
        const gen0 = sec.generation;
        const state0 = sec.state;
        const times0 = sec.times;
        commitTx(sec.wal, true, [
          () => {
            sec.generation = gen0;
            sec.state = state0;
            sec.times = times0;
            sec.synchronizedTs = floor;
          },
        ]);
        sec.generation = op.gen;
        sec.state = "resyncing";
        sec.times = startHold(sec.times, floor);
        sec.synchronizedTs = null;
        log(`t${tick} S${sec.s} resync begins at gen ${op.gen}: 112 held at ${floor}, bitmap ${[...sec.bitmap].map(([v, b]) => `${v}:${[...b].sort((x, y) => x - y).join(",")}`).join(" ")}`);
      }
      const bitmap = new Map([...sec.bitmap].map(([v, b]) => [v, [...b].sort((x, y) => x - y)]));
      return replyTo(m, null, { ...report(sec), bitmap });
    }
  };

  const onCtrlAtPrimary = (p: Primary, m: CtrlMsg, op: Op) => {
    if (op.op === "primary-status") return replyTo(m, null, primaryReport(p));
    if (op.op === "primary-resync") {
      // primary.ts resync(): the secondaries' blocks join the bitmap (durably), host writes replicate again, the copier starts.
      const begun = p.state === "copying" && p.generation === op.gen;
      if (!begun) {
        if (replicatingP(p.state)) return replyTo(m, `TM_NOT_SYNCHRONIZED: P${p.k} is ${p.state}`, null);
        if (op.gen <= p.generation) return replyTo(m, `TM_GENERATION: P${p.k} is at generation ${p.generation}, not below ${op.gen}`, null);
        p.state = "copying";
        p.generation = op.gen;
        p.copiedTs = null;
        p.copyUpTo = 0;
      }
      let merged = 0;
      for (const [name, blocks] of op.blocks) {
        let set = p.bitmap.get(name);
        if (!set) p.bitmap.set(name, (set = new Set()));
        for (const b of blocks) if (!set.has(b)) {
          set.add(b);
          merged++;
        }
      }
      commitTx(p.wal, true, []);
      if (!begun) log(`t${tick} P${p.k} resync begins at gen ${op.gen}: ${merged} blocks merged, copying`);
      return replyTo(m, null, primaryReport(p));
    }
    if (op.op !== "primary") return;
    suspendPrimary(p, op.takeover ? "taken-over" : "suspended", op.gen);
    replyTo(m, null, null);
  };

  const deliverCtrl = () => {
    if (ctrl.length === 0) return;
    const now: CtrlMsg[] = [];
    for (let i = 0; i < ctrl.length; ) {
      if (ctrl[i].at <= tick) now.push(ctrl.splice(i, 1)[0]);
      else i++;
    }
    for (const m of now) {
      if (m.to.kind === "rcm") {
        if (!rcmUp || !run || run.id !== m.run) continue;
        const c = run.calls.find((x) => x.id === m.call);
        if (!c || c.done) continue;
        c.done = true;
        c.error = m.reply!.error;
        c.reply = m.reply!.report;
      } else if (m.to.kind === "s") {
        const sec = secondaries[m.to.i];
        if (sec.up) onCtrlAtSecondary(sec, m, m.op!);
      } else {
        const p = primaries[m.to.i];
        if (p.up) onCtrlAtPrimary(p, m, m.op!);
      }
    }
  };

  const failRun = (why: string) => {
    log(`t${tick} RCM: ${run?.mode === "resync" ? "resync run" : "procedure"} stopped: ${why}`);
    run = null;
    nextRunAt = tick + int(10, 60);
  };

  const imagesKey = () => vols.map((v) => v.secondary.join(",")).join("|");

  // ---- resync histories: stages, the interruption, the end ----
  /** p1: up to the first procedure; quiesce: before a rerun; epoch: a resync (and maybe its interruption); final: host writes stopped. */
  let stage: "p1" | "quiesce" | "epoch" | "final" = "p1";
  let healAt = -1;
  /** Main procedures completed and rerun (the first, then the interruption). */
  let mainDone = 0;
  let rerun: { ts: bigint; images: string } | null = null;
  let faultsUntil = 0;
  let interruptState: "pending" | "armed" | "started" | "done" = interruptPhase === "none" ? "done" : "pending";
  let interruptAt = -1;
  let interruptInfo: SimResult["interrupt"] = null;
  /** The generation of the resync the RCM began last (for the phase the interruption watches). */
  let resyncGen = -1;
  /** The resync under way is to run to its end (no interruption to come); host writes stop during it. */
  let finalResync = false;
  let stopWritesAt = -1;
  let writesStopped = false;
  let finalSince = -1;
  let finalResyncs = 0;

  const PHASE_RANK: Record<InterruptPhase, number> = { before: 0, begin: 1, copying: 2, copied: 3, apply: 4, after: 5, none: 6 };
  /** How long after its step is first seen the interruption may start. */
  const PHASE_DELAY: Record<InterruptPhase, number> = { before: 0, begin: 2, copying: 12, copied: 3, apply: 2, after: 40, none: 0 };
  /** The step the resync of generation resyncGen is at, seen from outside (the subsystems' durable states). */
  const observePhase = (): InterruptPhase => {
    const g = resyncGen;
    if (g < 0 || !secondaries.some((sec) => sec.generation === g && replicatingS(sec.state))) return "before";
    if (!primaries.every((p) => p.generation === g && replicatingP(p.state))) return "begin";
    if (primaries.some((p) => p.state === "copying")) return "copying";
    if (secondaries.every((sec) => sec.state === "resyncing")) return "copied";
    // The apply: a secondary still holds, or one that passed the barrier C has rows up to C left.
    const c = primaries.reduce((m, p) => (p.copiedTs !== null && p.copiedTs > m ? p.copiedTs : m), 0n);
    if (secondaries.some((sec) => sec.state === "resyncing" || dueRows(sec, second112(sec) < c ? second112(sec) : c).length > 0)) return "apply";
    return "after";
  };

  /**
   * The checks of a cut no rerun follows (a suspension a resync asked for):
   * only once every secondary is up and drained to it (a power cut can bring
   * back rows the applier had deleted), and the bitmap check only once every
   * primary took the suspension (one it could not reach turns its journal
   * into bitmap blocks only when refused).
   */
  const checkSettledCut = (cut: bigint) => {
    if (!secondaries.every((sec) => sec.up && dueRows(sec, cut).length === 0)) return;
    checkCut(cut, primaries.every((p) => p.up && !replicatingP(p.state)));
  };

  const newEpoch = (cut: bigint, gen: number) => {
    // The base is the image the secondaries hold (or, still draining, will hold) at the cut.
    epoch = { id: epoch.id + 1, gen, floor: cut, base: expectedImages(cut), late: new Map() };
    computedTs.length = 0;

    log(`t${tick} epoch ${epoch.id}: the group rests at ${cut}`);
  };

  /** A suspension or takeover of a resync history is complete (its cut applied everywhere). */
  const procedureDoneResync = (r: Run) => {
    const cut = r.ts!;
    // A primary the procedure could not reach turns its journal into bitmap blocks only once it is
    // refused; main procedures are checked after their rerun, when everything has been reached.
    if (r.thenResync || (stage === "p1" && r.mode === "suspend" && p1Mode === "takeover")) checkSettledCut(cut);
    if (r.thenResync) {
      // A resync asked for this suspension: the resync starts from here (unless the interruption is due).
      newEpoch(cut, r.gen);
      wantMode = interruptState === "started" ? interruptMode : "resync";
      nextRunAt = tick;
      return;
    }
    if (stage === "p1" && r.mode === "suspend" && p1Mode === "takeover") {
      newEpoch(cut, r.gen);
      wantMode = "takeover";
      nextRunAt = tick + int(5, 100);
      return;
    }
    if (rerun === null) {
      // Everything restarts and heals, then the procedure runs again: the same cut and images.
      rerun = { ts: cut, images: imagesKey() };
      if (takeoverDoneAt < 0) takeoverDoneAt = tick;
      if (interruptState === "started" && interruptInfo) interruptInfo.cut = cut === epoch.floor ? "floor" : "ts";
      stage = "quiesce";
      healAt = tick + 1;
      wantMode = r.mode;
      nextRunAt = tick + QUIESCE_TICKS;
      if (cuts && chance(0.3)) {
        postTakeoverCutAt = tick + int(2, QUIESCE_TICKS - 30);
        postTakeoverCutWhat = int(0, 2);
      }
      return;
    }
    check(cut === rerun.ts, `${r.mode} rerun reached ${cut}, the first run ${rerun.ts}`);
    check(imagesKey() === rerun.images, `${r.mode} rerun changed the secondary images`);
    checkCut(cut, true);
    rerun = null;
    newEpoch(cut, r.gen);
    mainDone++;
    stage = "epoch";
    if (mainDone === 1) {
      faultsUntil = tick + 3000;
      if (interruptPhase === "before") {
        interruptState = "started";
        wantMode = interruptMode;
      } else {
        wantMode = "resync";
        finalResync = interruptPhase === "none";
      }
      nextRunAt = tick + int(20, 300);
    } else {
      if (interruptState === "started") interruptState = "done";
      faultsUntil = tick + 2000;
      wantMode = "resync";
      finalResync = true;
      nextRunAt = tick + int(20, 200);
    }
  };

  /** A resync run saw every secondary replicate again (or there was nothing to do). */
  const resyncDone = (r: Run, nothing: boolean) => {
    log(`t${tick} RCM: resync run ${r.id} ${nothing ? "found nothing to do" : `complete at gen ${r.gen}`}`);
    run = null;
    nextRunAt = Infinity;
    if (finalResync && stage !== "final") {
      stage = "final";
      finalSince = tick;
      writesStopped = true;
      healAt = tick + 1;
    }
    if (stage === "final") finalSince = tick;
  };

  /** Resync histories, at every tick: arm and start the interruption; at the end, drain and compare. */
  const stepStages = () => {
    if (stage === "epoch" && interruptState === "pending") {
      const ph = observePhase();
      if (ph !== "before" && PHASE_RANK[ph] >= PHASE_RANK[interruptPhase]) {
        interruptState = "armed";
        interruptAt = tick + int(0, PHASE_DELAY[interruptPhase]);
      }
    }
    if (interruptState === "armed" && tick >= interruptAt) {
      interruptState = "started";
      if (run !== null && run.mode === "resync") {
        log(`t${tick} RCM: resync run ${run.id} abandoned for the ${interruptMode}`);
        run = null;
      }
      if (run === null || run.mode === "resync") {
        wantMode = interruptMode;
        nextRunAt = tick;
      }
    }
    if (tick === stopWritesAt) writesStopped = true;
    if (stage !== "final" || run !== null || !rcmUp || nextRunAt !== Infinity) return;
    // The end: host writes stopped, everything replicated and applied, nothing left to copy.
    const quiet =
      primaries.every((p) => p.up && p.state === "active" && p.appending.length === 0 && p.acking.length === 0 && p.pending.size === 0) &&
      secondaries.every((sec) => sec.up && sec.state === "active" && !sec.times.hold && sec.queue.length === 0 && sec.work.length === 0);
    const dirty = primaries.some((p) => [...p.bitmap.values()].some((b) => b.size > 0)) || secondaries.some((sec) => [...sec.bitmap.values()].some((b) => b.size > 0));
    if (quiet && !dirty) {
      finalEquality();
      finished = true;
      return;
    }
    // Blocks a power cut marked after a copy ended, or a group left suspended: the operator runs the resync again.
    if ((quiet && dirty) || tick - finalSince > 400) {
      check(finalResyncs < FINAL_RESYNCS_MAX, `the final resync does not converge after ${finalResyncs} more runs (${stuckState()})`);
      finalResyncs++;
      wantMode = "resync";
      nextRunAt = tick;
    }
  };

  const stuckState = () =>
    `stage ${stage}, run ${run ? `${run.mode}@${run.step}` : "-"}; ` +
    primaries.map((p) => `P${p.k} ${p.up ? "" : "down "}${p.state}@${p.generation} bits ${[...p.bitmap.values()].reduce((n, b) => n + b.size, 0)} pending ${p.pending.size}`).join(", ") +
    "; " +
    secondaries.map((sec) => `S${sec.s} ${sec.up ? "" : "down "}${sec.state}@${sec.generation} 112 ${sec.times.second}${sec.times.hold ? ` hold ${sec.times.hold.floor} C ${barrierOf(sec.times.first, sec.times.hold)}` : ""} queue ${sec.queue.length}`).join(", ");

  /** The resync procedure's steps (appliance/rcm/resync.ts startResync, then watchResync). */
  const stepResyncRun = (r: Run, calls: Call[], failed: Call[]) => {
    switch (r.step) {
      case "rstatus": {
        if (failed.length > 0) return failRun(`${failed.map((c) => `${c.to.kind.toUpperCase()}${c.to.i}`).join(", ")} unreachable; a resync needs every subsystem; nothing was changed`);
        const sr = calls.filter((c) => c.to.kind === "s").map((c) => c.reply!);
        const pr = calls.filter((c) => c.to.kind === "p").map((c) => c.reply!);
        const gens = new Set(sr.map((x) => x.generation));
        const running = sr.every((x) => x.state === "resyncing") && gens.size === 1 && pr.every((x) => x.generation === sr[0].generation && (x.state === "copying" || x.state === "active"));
        if (running) {
          r.gen = sr[0].generation;
          resyncGen = r.gen;
          r.step = "watch";
          r.nextPollAt = tick;
          log(`t${tick} RCM: resync at gen ${r.gen} already under way`);
          return;
        }
        const allActive = sr.every((x) => x.state === "active") && pr.every((x) => x.state === "active");
        if (allActive && pr.every((x) => x.remaining === 0)) return resyncDone(r, true);
        const resting =
          sr.every((x) => (x.state === "suspended" || x.state === "takeover") && x.synchronizedTs !== null) && gens.size === 1 && new Set(sr.map((x) => x.synchronizedTs)).size === 1;
        if (resting && sr[0].generation !== epoch.gen) {
          // A suspension brought the group to its cut, but the RCM died before it saw the run
          // complete (the secondaries may still be draining up to the cut: resync-begin holds 112 there).
          const cut = sr[0].synchronizedTs!;
          checkSettledCut(cut);
          newEpoch(cut, sr[0].generation);
        }
        if (!resting) {
          log(`t${tick} RCM: the group does not rest at one synchronized time; suspending it first`);
          run = { id: ++runIds, mode: "suspend", step: "status", gen: 0, ts: null, calls: [], fenceReports: [], thenResync: true };
          runsStarted++;
          for (let s = 0; s < M; s++) sendCall(run, { kind: "s", i: s }, { op: "status" });
          return;
        }
        r.gen = Math.max(...sr.map((x) => x.generation), ...pr.map((x) => x.generation)) + 1;
        resyncGen = r.gen;
        r.step = "begin";
        log(`t${tick} RCM: resync at gen ${r.gen} from ${sr[0].synchronizedTs}: secondaries begin`);
        for (let s = 0; s < M; s++) sendCall(r, { kind: "s", i: s }, { op: "resync-begin", gen: r.gen });
        return;
      }
      case "begin": {
        if (failed.length > 0) return failRun(`resync-begin failed on ${failed.map((c) => `S${c.to.i} (${c.error})`).join(", ")}`);
        // Per primary, the blocks its pairs' secondary volumes reported (volumes keep one name on both sides here).
        const blocks = primaries.map(() => new Map<string, number[]>());
        for (const c of calls) {
          for (const [name, bl] of c.reply!.bitmap!) {
            const v = vols.find((x) => x.name === name)!;
            blocks[v.k].set(name, bl);
          }
        }
        r.step = "pbegin";
        for (let k = 0; k < N; k++) sendCall(r, { kind: "p", i: k }, { op: "primary-resync", gen: r.gen, blocks: blocks[k] });
        return;
      }
      case "pbegin": {
        if (failed.length > 0) return failRun(`primary-resync failed on ${failed.map((c) => `P${c.to.i} (${c.error})`).join(", ")}`);
        r.step = "watch";
        r.nextPollAt = tick + RESYNC_POLL_TICKS;
        return;
      }
      case "watch": {
        if (calls.length === 0) {
          if (tick < r.nextPollAt!) return;
          for (let s = 0; s < M; s++) sendCall(r, { kind: "s", i: s }, { op: "status" });
          for (let k = 0; k < N; k++) sendCall(r, { kind: "p", i: k }, { op: "primary-status" });
          return;
        }
        r.nextPollAt = tick + RESYNC_POLL_TICKS;
        const sr = calls.filter((c) => c.to.kind === "s" && c.reply !== null).map((c) => c.reply!);
        const pr = calls.filter((c) => c.to.kind === "p" && c.reply !== null).map((c) => c.reply!);
        if (sr.some((x) => x.generation > r.gen || (x.generation === r.gen && (x.state === "suspended" || x.state === "takeover")))) {
          return failRun(`TM_RESYNC_INTERRUPTED: the group was suspended or taken over during the resync at gen ${r.gen}`);
        }
        const done = failed.length === 0 && pr.every((x) => x.state !== "copying") && sr.every((x) => x.state === "active" && x.generation === r.gen);
        if (done) return resyncDone(r, false);
        return;
      }
    }
  };

  const stepRcm = () => {
    if (resync) stepStages();
    if (!rcmUp) {
      if (tick >= rcmRestartAt) {
        rcmUp = true;
        nextRunAt = resync && nextRunAt === Infinity ? Infinity : tick;
      }
      return;
    }
    if (!run) {
      if (tick < nextRunAt || finished) return;
      // The interruption is due: it runs before any resync (an RCM restarted meanwhile too).
      if (resync && interruptState === "started" && mainDone === 1 && wantMode === "resync") wantMode = interruptMode;
      run = { id: ++runIds, mode: wantMode, step: wantMode === "resync" ? "rstatus" : "status", gen: 0, ts: null, calls: [], fenceReports: [] };
      runsStarted++;
      log(`t${tick} RCM: ${wantMode} run ${run.id}`);
      if (wantMode === "resync" && finalResync && stopWritesAt < 0) stopWritesAt = tick + int(0, 400);
      for (let s = 0; s < M; s++) sendCall(run, { kind: "s", i: s }, { op: "status" });
      if (wantMode === "resync") for (let k = 0; k < N; k++) sendCall(run, { kind: "p", i: k }, { op: "primary-status" });
      return;
    }
    const r: Run = run;
    for (const c of r.calls) {
      if (!c.done && tick >= c.deadline) {
        c.done = true;
        c.error = "timed out";
      }
    }
    if (r.calls.some((c) => !c.done)) return;
    const calls = r.calls;
    r.calls = [];
    const failed = calls.filter((c) => c.error !== null);
    if (r.mode === "resync") return stepResyncRun(r, calls, failed);
    switch (r.step) {
      case "status": {
        if (failed.length > 0) return failRun(`secondaries unreachable (${failed.map((c) => `S${c.to.i}: ${c.error}`).join("; ")}); nothing was changed`);
        const gens = calls.map((c) => c.reply!.generation);
        const allFenced = calls.every((c) => c.reply!.state === "suspended" || c.reply!.state === "takeover") && new Set(gens).size === 1;
        r.gen = allFenced ? gens[0] : Math.max(0, ...gens) + 1;
        r.step = "fence";
        if (resync && interruptState === "started" && interruptInfo === null && !r.thenResync && mainDone === 1) {
          interruptInfo = { phase: observePhase(), mode: interruptMode, cut: "floor" };
          log(`t${tick} RCM: the ${interruptMode} interrupts the resync at step '${interruptInfo.phase}'`);
        }
        for (let s = 0; s < M; s++) sendCall(r, { kind: "s", i: s }, { op: "fence", gen: r.gen });
        return;
      }
      case "fence": {
        r.fenceReports = calls;
        r.step = "primaries";
        for (let k = 0; k < N; k++) sendCall(r, { kind: "p", i: k }, { op: "primary", gen: r.gen, takeover: r.mode === "takeover" });
        return;
      }
      case "primaries": {
        const bad = r.fenceReports.filter((c) => c.error !== null);
        if (bad.length > 0) return failRun(`fencing failed on ${bad.map((c) => `S${c.to.i}`).join(", ")}; run it again`);
        const reports = r.fenceReports.map((c) => c.reply!);
        const computed = synchronizedTime(new Map(r.fenceReports.map((c) => [c.to.i, c.reply!.first])));
        // The product's cut (procedure.ts): a secondary resting at a synchronized time fixes it;
        // otherwise resyncCut: Ts, or the resync's floor T_old until its barrier is passed.
        let ts: bigint;
        try {
          ts = procedureCut(computed, reports);
        } catch (err) {
          check(!(err instanceof CutConflict), `RCM: ${(err as Error).message}`);
          throw err;
        }
        log(`t${tick} RCM: Ts ${ts}${ts !== computed ? ` (computed ${computed}; ${reports.map((x) => `floor ${x.resync.floor} C ${x.resync.barrier}`).join(", ")})` : ""} (gen ${r.gen})`);
        check(computedTs.every((t) => t === ts), `RCM: procedure run ${r.id} reached Ts ${ts}, an earlier run reached ${computedTs[0]}`);
        computedTs.push(ts);
        r.ts = ts;
        r.step = "apply";
        for (let s = 0; s < M; s++) sendCall(r, { kind: "s", i: s }, { op: "apply-ts", gen: r.gen, ts }, APPLY_CALL_TIMEOUT_TICKS);
        return;
      }
      case "apply": {
        if (failed.length > 0) return failRun(`applying Ts failed on ${failed.map((c) => `S${c.to.i} (${c.error})`).join(", ")}; run it again`);
        if (r.mode === "takeover") {
          r.step = "takeover";
          for (let s = 0; s < M; s++) sendCall(r, { kind: "s", i: s }, { op: "takeover", gen: r.gen });
          return;
        }
        break;
      }
      case "takeover": {
        if (failed.length > 0) return failRun(`takeover failed on ${failed.map((c) => `S${c.to.i} (${c.error})`).join(", ")}; run it again`);
        break;
      }
    }
    // The run is complete.
    log(`t${tick} RCM: ${r.mode} complete at Ts ${r.ts}`);
    run = null;
    if (resync) return procedureDoneResync(r);
    if (r.mode === "suspend") {
      wantMode = "takeover";
      nextRunAt = tick + int(5, 100);
    } else if (takeoverDoneAt < 0) {
      takeoverDoneAt = tick;
      healAt = tick + 1;
      firstImages = { ts: r.ts!, images: imagesKey() };
      nextRunAt = tick + QUIESCE_TICKS;
      if (cuts && chance(0.3)) {
        postTakeoverCutAt = tick + int(2, QUIESCE_TICKS - 30);
        postTakeoverCutWhat = int(0, 2);
      }
    } else {
      check(r.ts === firstImages!.ts, `takeover rerun reached Ts ${r.ts}, the first ${firstImages!.ts}`);
      check(imagesKey() === firstImages!.images, "takeover rerun changed the secondary images");
      finished = true;
    }
  };

  // ---- hosts ----
  let chainIds = 0;
  const newChain = (): Chain => ({ id: ++chainIds, lastK: -1, nextAt: tick + int(0, 20), inflight: null, writes: [], ended: false });
  const chains: Chain[] = Array.from({ length: chainCount }, newChain);
  const allChains: Chain[] = [...chains];

  const stepHosts = () => {
    if (writesStopped) return;
    for (let i = 0; i < chains.length; i++) {
      let c = chains[i];
      if (c.ended) {
        c = chains[i] = newChain();
        allChains.push(c);
      }
      if (c.inflight || tick < c.nextAt) continue;
      // Dependent writes cross primaries whenever there is another one.
      const others = vols.filter((v) => v.k !== c.lastK);
      const vol = others.length > 0 && chance(0.9) ? others[int(0, others.length - 1)] : vols[int(0, vols.length - 1)];
      const out = hostWrite(vol, c);
      if (out === "down") c.nextAt = tick + int(1, 10);
      else if (out === "refused") c.ended = true;
    }
    if (chance(writeRate)) hostWrite(vols[int(0, vols.length - 1)], null);
    // After a takeover, hosts write the secondaries (until a resync begins).
    if (resync && stage === "epoch" && chance(writeRate / 2)) {
      const open = vols.filter((v) => secondaries[v.s].up && secondaries[v.s].state === "takeover");
      if (open.length > 0) secondaryHostWrite(open[int(0, open.length - 1)]);
    }
  };

  // ---- faults ----
  const faultsOn = () =>
    !resync ? takeoverDoneAt < 0 && tick < failAt + 3000 : stage === "p1" ? tick < failAt + 3000 : stage === "epoch" && tick < faultsUntil;
  const stepFaults = () => {
    if (!faultsOn()) return;
    if (pPartition > 0 && chance(pPartition)) {
      const l = links[int(0, links.length - 1)];
      if (l.mode === "ok") {
        partitions++;
        l.mode = chance(0.5) ? "hold" : "drop";
        l.healAt = tick + int(5, 200);
        l.heldSince = tick;
        log(`t${tick} partition P${l.k}-S${l.s} (${l.mode}) until t${l.healAt}`);
        if (l.mode === "drop") closeLink(l, "partition");
      }
    }
    // Resyncs: crashes come more often while a primary copies, mostly to a copying one.
    const copying = resync ? primaries.filter((p) => p.up && p.state === "copying") : [];
    if (pPrimaryCrash > 0 && chance(copying.length > 0 ? pPrimaryCrash * 8 : pPrimaryCrash)) {
      const p = copying.length > 0 && chance(0.7) ? copying[int(0, copying.length - 1)] : primaries[int(0, N - 1)];
      if (p.up) crashPrimary(p);
    }
    const inProcedure = run !== null;
    if (pSecondaryCrash > 0 && chance(inProcedure ? pSecondaryCrash * 5 : pSecondaryCrash)) {
      const sec = secondaries[int(0, M - 1)];
      if (sec.up) crashSecondary(sec);
    }
    if (pPowerCut > 0 && chance(copying.length > 0 ? pPowerCut * 6 : inProcedure ? pPowerCut * 3 : pPowerCut)) powerCut(int(0, 2));
    // run may have ended in this tick's power cut of the whole host.
    if (inProcedure && run !== null && pRcmCrash > 0 && rcmCrashes < (resync ? 8 : 3) && chance(pRcmCrash)) {
      rcmCrashes++;
      crashes++;
      log(`t${tick} RCM kill -9 during run ${run!.id} (${run!.step})`);
      rcmUp = false;
      run = null;
      rcmRestartAt = tick + int(1, 50);
    }
  };

  /** 0: one primary's host, 1: one secondary's host, 2: the whole host (every process, the RCM too). */
  const powerCut = (what: number) => {
    powerCuts++;
    if (what === 0) powerCutPrimary(primaries[int(0, N - 1)]);
    else if (what === 1) powerCutSecondary(secondaries[int(0, M - 1)]);
    else {
      log(`t${tick} power cut of the whole host`);
      for (const p of primaries) powerCutPrimary(p);
      for (const sec of secondaries) powerCutSecondary(sec);
      if (rcmUp) {
        rcmUp = false;
        run = null;
        rcmRestartAt = tick + int(5, 120);
      }
    }
  };

  const healAll = () => {
    for (const p of primaries) if (!p.up) restartPrimary(p);
    for (const sec of secondaries) if (!sec.up) restartSecondary(sec);
    for (const l of links) l.mode = "ok";
  };

  // ---- invariants checked at every tick ----
  const checkStep = () => {
    const firstBySecondary = new Map(secondaries.map((sec) => [sec.s, sec.times.first]));
    const tsNow = synchronizedTime(firstBySecondary);
    for (const sec of secondaries) {
      const second = second112(sec);
      check(second >= secondFloor[sec.s], `S${sec.s}: 112 fell from ${secondFloor[sec.s]} to ${second}`);
      check(second <= tsNow, `S${sec.s}: 112 ${second} above the group's synchronized time ${tsNow}`);
      secondFloor[sec.s] = second;
      // Every RCR at or below 112 is already queued (or applied) here: nothing can arrive below it later.
      for (let k = 0; k < N; k++) {
        const list = stamped[k][sec.s];
        let i = cursor[sec.s][k];
        while (i < list.length && list[i].ts! <= second) {
          const w = list[i];
          check(
            w.state === "lost" || w.state === "cut" || sec.received.has(w.id) || abandoned(w),
            `S${sec.s}: 112 is ${second} but write #${w.id} (P${k}, ts ${w.ts}, ${w.state}) is not queued there`,
          );
          i++;
        }
        cursor[sec.s][k] = i;
      }
    }
  };

  // ---- the tick loop ----
  let outcome: SimResult["ok"] = true;
  let failure: string | undefined;
  try {
    for (tick = 1; !finished; tick++) {
      if (!resync) check(tick < TICKS_MAX, `no completed takeover and rerun after ${TICKS_MAX} ticks (run ${(run as Run | null)?.id ?? "-"} at ${(run as Run | null)?.step ?? "-"})`);
      else check(tick < ticksMax, `no end of the resync history after ${ticksMax} ticks (${stuckState()})`);
      const base = BigInt(tick) * TICK_NS;
      if (ns < base) ns = base;

      stepFaults();
      if (tick === healAt) healAll();
      // A power cut after the takeover completed: the rerun must still find the same Ts and images.
      if (tick === postTakeoverCutAt) powerCut(postTakeoverCutWhat);
      for (const p of primaries) if (!p.up && tick >= p.restartAt) restartPrimary(p);
      for (const sec of secondaries) if (!sec.up && tick >= sec.restartAt) restartSecondary(sec);

      // Links: heal, liveness, connect, deliver.
      for (const l of links) {
        if (l.mode !== "ok" && tick >= l.healAt) l.mode = "ok";
        if (l.mode === "hold" && l.conn !== 0 && tick - l.heldSince > LINK_TIMEOUT_TICKS) closeLink(l, "silent past the link timeout");
        const p = primaries[l.k];
        const sec = secondaries[l.s];
        if (l.conn === 0 && p.up && sec.up && l.mode === "ok" && tick >= p.senders[l.s].nextConnectAt) connect(l);
        if (l.conn === 0 || l.mode === "hold") continue;
        const conn = l.conn;
        while (l.conn === conn && l.down.length > 0 && l.down[0].at <= tick) onDown(sec, l, l.down.shift()!);
        while (l.conn === conn && l.up.length > 0 && l.up[0].at <= tick) onUp(p, l, l.up.shift()!);
      }
      deliverCtrl();

      for (const sec of secondaries) {
        if (!sec.up) continue;
        if (sec.commitAt >= 0 && tick >= sec.commitAt) commitSecondary(sec);
        if (chance(0.7)) applySome(sec, int(1, 6));
        if (sec.drainWaiters.length > 0 && dueRows(sec, second112(sec)).length === 0) {
          for (const wtr of sec.drainWaiters.splice(0)) {
            ctrl.push({ at: tick + int(0, 5), call: wtr.call, run: wtr.run, to: { kind: "rcm", i: 0 }, op: null, reply: { error: null, report: report(sec) } });
          }
        }
      }

      for (const p of primaries) {
        if (!p.up) continue;
        if (p.commitAt >= 0 && tick >= p.commitAt) commitJournal(p);
        if (resync) {
          stepCopier(p);
          maybeCopied(p);
        }
        // Commit wait (primary.ts commitWait): the ack waits until the clock passed ts + the offset.
        if (p.acking.length > 0) {
          const still: Write[] = [];
          for (const w of p.acking) {
            if (commitWaitNs === 0n || p.clock.now() > w.ts! + commitWaitNs) hostAck(w);
            else still.push(w);
          }
          p.acking = still;
        }
        if (tick >= p.nextSyncAt) {
          announce(p);
          p.nextSyncAt = tick + syncInterval;
        }
        if (cuts && tick >= p.nextTrimAt) {
          trimPrimary(p);
          p.nextTrimAt = tick + trimInterval;
        }
        for (let s = 0; s < M; s++) {
          const l = linkOf(p.k, s);
          if (l.conn !== 0 && !l.refusing) pump(p, l);
        }
      }

      stepHosts();
      stepRcm();
      if (!o.outcomeChecksOnly) checkStep();
    }
    finalChecks();
  } catch (err) {
    outcome = false;
    failure = err instanceof Error ? `${err.name}: ${err.message}` : String(err);
    log(`t${tick} FAILED: ${failure}`);
  }

  function finalChecks() {
    if (!resync) checkCut(firstImages!.ts);
  }

  /**
   * After a suspension or takeover: every secondary rests at the cut, holds
   * exactly the real RCRs (host writes and copies) of this epoch up to it, and
   * its image is the epoch's base (the image it rested at, with the host
   * writes to it since a takeover) with those applied in timestamp order.
   * Causal chains are prefixes; blocks that differ from the primary are in a
   * bitmap; FUA writes are on the primaries.
   */
  /** A write whose journal commit a power cut took back exists only if its secondary had queued it. */
  function real(w: Write) {
    return w.state === "committed" || (w.state === "cut" && secondaries[w.s].received.has(w.id));
  }

  /** The secondary images as of a cut: the epoch's base, its real RCRs up to the cut in timestamp order, then late host writes. */
  function expectedImages(ts: bigint): number[][] {
    const expected = epoch.base.map((b) => b.slice());
    const bestTs = vols.map(() => new Array<bigint>(BLOCKS_PER_VOLUME).fill(-1n));
    for (const w of writes) {
      if (w.epoch !== epoch.id || w.ts === null || !real(w) || w.ts > ts || abandoned(w)) continue;
      for (let b = w.block; b < w.block + w.blocks; b++) {
        if (w.ts > bestTs[w.vol][b]) {
          bestTs[w.vol][b] = w.ts;
          expected[w.vol][b] = w.copy !== null ? w.copy[b - w.block] : w.id;
        }
      }
    }
    // Host writes to a secondary after its takeover applied RCRs of this epoch come last.
    for (const [key, id] of epoch.late) {
      const [vol, b] = key.split(":").map(Number);
      expected[vol][b] = id;
    }
    return expected;
  }

  function checkCut(ts: bigint, bitmapTruth = true) {
    for (const sec of secondaries) {
      check(sec.synchronizedTs === ts, `S${sec.s}: synchronized at ${sec.synchronizedTs}, not Ts ${ts}`);
      check(sec.times.second === ts, `S${sec.s}: 112 ${sec.times.second} after takeover, not Ts ${ts}`);
      check(!sec.times.hold, `S${sec.s}: still holds 112 for a resync after it was brought to ${ts}`);
      check(sec.queue.length === 0, `S${sec.s}: ${sec.queue.length} RCRs still queued after takeover`);
    }
    // Every write with ts <= Ts is applied on its secondary, none after.
    for (const w of writes) {
      if (w.epoch !== epoch.id || w.ts === null) continue;
      const sec = secondaries[w.s];
      const has = sec.applied.has(w.id);
      const what = w.copy !== null ? "copy" : "write";
      // (An RCR of a generation a fence abandoned above its cut never arrives: a copy carries its block.)
      if (real(w) && w.ts <= ts && !abandoned(w)) check(has, `${what} #${w.id} (P${w.k}, ts ${w.ts}) <= Ts ${ts} is missing on S${w.s}`);
      else check(!has, `${what} #${w.id} (P${w.k}, ts ${w.ts}, ${w.state}) is on S${w.s} but not <= Ts ${ts}`);
      // Dropped RCRs: their blocks are in the secondary's bitmap.
      if (sec.received.has(w.id) && w.ts > ts) {
        for (let b = w.block; b < w.block + w.blocks; b++) check(sec.bitmap.get(vols[w.vol].name)?.has(b), `S${w.s}: dropped ${what} #${w.id} block ${b} not in the bitmap`);
      }
    }
    // Images: every block holds the last write with ts <= Ts (the log of writes, not the appliance's word), over the epoch's base.
    const expected = expectedImages(ts);
    for (const v of vols) {
      for (let b = 0; b < BLOCKS_PER_VOLUME; b++) {
        check(v.secondary[b] === expected[v.id][b], `${v.name} block ${b} on S${v.s} holds write #${v.secondary[b]}, as of Ts ${ts} it is #${expected[v.id][b]}`);
      }
    }
    // Causal chains: what the secondaries hold of each chain is a prefix of it.
    // A write lost in a power cut before it was durable (no FUA) was never promised: it leaves the chain.
    for (const c of allChains) {
      let gap = -1;
      c.writes.filter((w) => w.state !== "cut" || real(w)).forEach((w, i, cw) => {
        let present: boolean;
        if (!resync) present = secondaries[w.s].applied.has(w.id);
        else {
          // Resyncs: a write is held when every block of it holds it or what the primary block held
          // later (a later write, or a copy read after it). A block a host wrote on the secondary tells nothing.
          const v = vols[w.vol];
          let judged = true;
          present = true;
          for (let b = w.block; b < w.block + w.blocks; b++) {
            if (v.secondaryPos[b] < 0) judged = false;
            else if (v.secondaryPos[b] < w.pos![b - w.block]) present = false;
          }
          if (!judged) return;
        }
        if (!present && gap < 0) gap = i;
        check(!present || gap < 0, `chain ${c.id}: write ${i} (#${w.id}, P${w.k}, ts ${w.ts}) is on S${w.s} but write ${gap} (#${cw[gap]?.id}, ts ${cw[gap]?.ts}) is not`);
      });
    }
    // Resync: every block where a primary and its secondary differ is in one of the bitmaps.
    for (const v of bitmapTruth ? vols : []) {
      const pb = primaries[v.k].bitmap.get(v.name);
      const sb = secondaries[v.s].bitmap.get(v.name);
      for (let b = 0; b < BLOCKS_PER_VOLUME; b++) {
        if (v.primary[b] !== v.secondary[b]) {
          check(pb?.has(b) || sb?.has(b), `${v.name} block ${b} differs with nothing to show it (primary #${v.primary[b]}, secondary #${v.secondary[b]}, in no bitmap)`);
        }
      }
    }
    // Every write the host was told is durable (FUA) is on its primary volume.
    for (const v of vols) checkFlushed(v, check);
  }

  /** After the last resync, host writes stopped, everything applied: each secondary image is its primary's. */
  function finalEquality() {
    for (const v of vols) {
      for (let b = 0; b < BLOCKS_PER_VOLUME; b++) {
        check(
          v.secondary[b] === v.primary[b],
          `after the resync with host writes stopped, ${v.name} block ${b} differs: P${v.k} holds #${v.primary[b]}, S${v.s} holds #${v.secondary[b]}`,
        );
      }
      checkFlushed(v, check);
    }
    log(`t${tick} resync history complete: every secondary image equals its primary`);
  }

  return {
    seed: o.seed,
    ok: outcome,
    failure,
    n: N,
    m: M,
    clock: clockMode,
    ticks: tick,
    writes: writes.length,
    ts: (firstImages as { ts: bigint } | null)?.ts ?? null,
    procedureRuns: runsStarted,
    crashes,
    rcmCrashes,
    partitions,
    powerCuts,
    applied: secondaries.reduce((n, sec) => n + sec.applied.size, 0),
    dropped,
    copies,
    resyncsCompleted: [...barriersPassed.values()].filter((passed) => passed.size === M).length,
    interrupt: interruptInfo,
  };
}

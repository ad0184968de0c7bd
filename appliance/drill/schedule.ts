// What one drill round does and when, drawn from its seed: how long hosts write before the
// takeover, which processes die and when they come back, which links are cut or hang, whether
// the RCM dies in the middle of the takeover, how many host writes land on the secondaries
// after it, and the way home (a forward resync, or a failback and a swap back). Pure: no I/O,
// no clock, no Math.random; the same seed and shape give the same schedule, so a failing round's
// report names a seed that replays what it did.
// Invariants: a process is never killed while it is already down, a link never gets a second
// fault while one is open, and every time lies inside the round's write phase.
import { prng } from "./prng.ts";
import type { ErrorCode } from "../errors/codes.ts";

/** The processes and links a round can fail; subsystem ids from the topology. */
export interface RoundShape {
  primaries: number[];
  secondaries: number[];
}

/** The RCM's id among the processes, as in `tidemark up`. */
export const RCM_ID = 0;

export type Fault =
  /** kill -9; `restartAtMs` null: it stays down until the drill needs it (secondaries and the RCM before the takeover, primaries before the resync). */
  | { kind: "kill"; target: number; role: "primary" | "secondary" | "rcm"; atMs: number; restartAtMs: number | null }
  /** Every primary's link to this secondary; `restoreAtMs` null: restored after the takeover. */
  | { kind: "cut" | "hang"; secondary: number; atMs: number; restoreAtMs: number | null };

export interface RoundSchedule {
  seed: number;
  /** Hosts write for this long, then the takeover starts (faults happen inside it). */
  takeoverAtMs: number;
  faults: Fault[];
  /** Kill -9 the RCM this long after asking it for the takeover, then restart it and ask again; null: no. */
  rcmKillDuringTakeoverMs: number | null;
  /** Random host writes on the taken-over secondaries, which the forward resync must undo. */
  secondaryWrites: number;
  /** A process killed -9 while the resync (forward or reverse) runs, restarted after `restartAfterMs`; null: none. */
  resyncKill: { target: number; role: "primary" | "secondary" | "rcm"; afterMs: number; restartAfterMs: number } | null;
  /**
   * How the group goes home after the takeover: `forward`, a resync that undoes
   * the writes made on the secondaries; `failback`, only when a primary was
   * down through the takeover: once it is back, `resync --reverse` (which
   * takes it over first) keeps them, and `swap` brings the primaries back.
   */
  wayBack: "forward" | "failback";
}

/** Bounds of a round's write phase: long enough for faults to land mid-stream, short enough that a round takes seconds. */
export const WRITE_PHASE_MS_MIN = 800;
export const WRITE_PHASE_MS_MAX = 3000;
export const FAULTS_MAX = 4;
/** Nothing is scheduled in the first and last moments of the write phase: the workload must be running, and the takeover must see it. */
const EDGE_MS = 100;
/** How long a killed process or a failed link stays so when it comes back before the takeover. */
const OUTAGE_MS_MIN = 100;
const OUTAGE_MS_MAX = 2500;
const SECONDARY_WRITES_MAX = 32;
/** The takeover procedure takes 0.1-1 s here: a kill within this lands in any of its steps, or just after. */
export const TAKEOVER_KILL_MS_MAX = 300;
/** A resync of a round's dirty blocks takes about a second; a kill within this lands in its copy or its barrier. */
export const RESYNC_KILL_MS_MAX = 1000;
/** Shorter than the RCM's failure timeout mostly, so the resync usually rides the outage out (when not, it is run again). */
const RESYNC_OUTAGE_MS_MAX = 2000;
/** Of the rounds with a primary down through the takeover, the share that fails back rather than resyncing forward. */
export const FAILBACK_SHARE = 0.5;

export class ScheduleError extends Error {
  readonly code = "TM_DRILL_CONFIG" satisfies ErrorCode;
  constructor(message: string) {
    super(message);
    this.name = "ScheduleError";
  }
}

export function scheduleRound(seed: number, shape: RoundShape): RoundSchedule {
  if (shape.primaries.length === 0 || shape.secondaries.length === 0) {
    throw new ScheduleError(`a drill round needs primaries and secondaries (got ${shape.primaries.length} and ${shape.secondaries.length})`);
  }
  // Another stream than the chain plan's (which uses the plain seed), so the two do not correlate.
  const rand = prng((seed ^ 0x2545f491) >>> 0);
  const between = (lo: number, hi: number) => lo + Math.floor(rand() * (hi - lo + 1));
  const pick = <T>(xs: T[]): T => xs[Math.floor(rand() * xs.length)];

  const takeoverAtMs = between(WRITE_PHASE_MS_MIN, WRITE_PHASE_MS_MAX);
  // Mostly one to three faults; sometimes none (a clean takeover is a case too), sometimes four.
  const count = pick([0, 1, 1, 2, 2, 2, 3, 3, FAULTS_MAX]);
  const starts = Array.from({ length: count }, () => between(EDGE_MS, takeoverAtMs - EDGE_MS)).sort((a, b) => a - b);

  // Until when each process or link is unavailable for a new fault (Infinity: down until the drill restores it).
  const busyUntil = new Map<string, number>();
  const free = (key: string, at: number) => (busyUntil.get(key) ?? -1) < at;
  const faults: Fault[] = [];
  for (const atMs of starts) {
    const options: (() => Fault | null)[] = [
      () => {
        const target = pick(shape.primaries);
        if (!free(`p${target}`, atMs)) return null;
        // A primary that stays down through the takeover is the disaster case itself.
        const restartAtMs = rand() < 0.35 ? null : atMs + between(OUTAGE_MS_MIN, OUTAGE_MS_MAX);
        busyUntil.set(`p${target}`, restartAtMs ?? Infinity);
        return { kind: "kill", target, role: "primary", atMs, restartAtMs };
      },
      () => {
        const target = pick(shape.secondaries);
        if (!free(`s${target}`, atMs)) return null;
        const restartAtMs = rand() < 0.2 ? null : atMs + between(OUTAGE_MS_MIN, OUTAGE_MS_MAX);
        busyUntil.set(`s${target}`, restartAtMs ?? Infinity);
        return { kind: "kill", target, role: "secondary", atMs, restartAtMs };
      },
      () => {
        if (!free("rcm", atMs)) return null;
        const restartAtMs = rand() < 0.2 ? null : atMs + between(OUTAGE_MS_MIN, OUTAGE_MS_MAX);
        busyUntil.set("rcm", restartAtMs ?? Infinity);
        return { kind: "kill", target: RCM_ID, role: "rcm", atMs, restartAtMs };
      },
      () => {
        const secondary = pick(shape.secondaries);
        if (!free(`l${secondary}`, atMs)) return null;
        const restoreAtMs = rand() < 0.3 ? null : atMs + between(OUTAGE_MS_MIN, OUTAGE_MS_MAX);
        busyUntil.set(`l${secondary}`, restoreAtMs ?? Infinity);
        return { kind: rand() < 0.5 ? "cut" : "hang", secondary, atMs, restoreAtMs };
      },
    ];
    // Primaries and links fail most often: they are what a consistency group is about.
    const weights = [3, 2, 1, 3];
    let roll = rand() * weights.reduce((a, b) => a + b, 0);
    let i = 0;
    while (roll >= weights[i]) roll -= weights[i++];
    const f = options[i]();
    if (f) faults.push(f);
  }
  // A restart scheduled after the takeover is left to the drill's own restore steps.
  for (const f of faults) {
    if (f.kind === "kill" && f.restartAtMs !== null && f.restartAtMs >= takeoverAtMs) f.restartAtMs = null;
    if (f.kind !== "kill" && f.restoreAtMs !== null && f.restoreAtMs >= takeoverAtMs) f.restoreAtMs = null;
  }
  const rcmKillDuringTakeoverMs = rand() < 0.25 ? between(0, TAKEOVER_KILL_MS_MAX) : null;
  const secondaryWrites = between(0, SECONDARY_WRITES_MAX);
  let resyncKill: RoundSchedule["resyncKill"] = null;
  if (rand() < 0.4) {
    const roll = rand();
    const [role, pool] = roll < 0.45 ? (["primary", shape.primaries] as const) : roll < 0.9 ? (["secondary", shape.secondaries] as const) : (["rcm", [RCM_ID]] as const);
    resyncKill = { target: pick([...pool]), role, afterMs: between(0, RESYNC_KILL_MS_MAX), restartAfterMs: between(OUTAGE_MS_MIN, RESYNC_OUTAGE_MS_MAX) };
  }
  // Drawn last, so every earlier draw stays what it was for a seed.
  const primaryDown = faults.some((f) => f.kind === "kill" && f.role === "primary" && f.restartAtMs === null);
  const wayBack = primaryDown && rand() < FAILBACK_SHARE ? "failback" : "forward";
  return { seed, takeoverAtMs, faults, rcmKillDuringTakeoverMs, secondaryWrites, resyncKill, wayBack };
}

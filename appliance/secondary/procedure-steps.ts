// The steps the RCM drives on a secondary (docs/takeover.md, docs/resync.md):
// fence, preview, bring a group to the synchronized time, take over, begin a
// resync, and end one once its barrier is passed. Invariants: each state
// change is the group-state table's, and what the RCM is told is done is
// durable first (durableBarrier before the reply); 112 never rises above Ts.
import type { Logger } from "pino";
import { durableBarrier, type Db } from "../state/database.ts";
import type { BitmapWriter } from "../state/bitmap-writer.ts";
import type { PayloadCache } from "../state/payload-cache.ts";
import type { PayloadSegments } from "../state/payload-segments.ts";
import type { Runtime } from "../runtime/runtime.ts";
import { assert } from "../invariant.ts";
import { tmError } from "../errors/codes.ts";
import { barrierOf, startHold } from "./time-parameters.ts";
import { splitAtSynchronizedTime } from "./synchronized-apply.ts";
import { fenceEvent, replicating, resyncBeginEvent, secondaryGroupOutcome, secondaryGroupTransition } from "./group-state.ts";
import { transition, type GroupState, type SecondaryBinding } from "./engine-state.ts";
import { OP_VERIFY, type QueueStatements } from "./rcr-queue.ts";

/** What the procedure steps use of the engine that owns them (secondary.ts), its receiver and its applier. */
export interface StepContext {
  id: number;
  logger: Logger;
  runtime: Runtime;
  db: Db;
  stmts: Pick<QueueStatements, "del" | "setSecond" | "oldestSeg">;
  bitmap: BitmapWriter;
  segments: PayloadSegments;
  /** Payloads of rows just queued: dropped rows' ids may be issued again. */
  recent: PayloadCache<bigint>;
  groups: ReadonlyMap<string, GroupState>;
  volumes: ReadonlyMap<string, SecondaryBinding>;
  /** The receiver: until everything received so far is committed and durable. */
  flushCommits(): Promise<void>;
  /** The receiver: closes the links of the primaries `which` names. */
  closeLinks(which: (primaryId: number) => boolean): void;
  /** The applier: resolves once nothing with ts <= `ts` is left in the group's queue. */
  drainedThrough(group: string, ts: bigint): Promise<void>;
  /** The host writes in flight (after a takeover) finishing, or null when there are none. */
  hostsIdle(): Promise<void> | null;
}

/** A volume's dirty blocks as [first, count] runs: a resync's bitmap crosses the RCM this way. */
export type BlockRuns = [number, number][];

export function toRuns(blocks: readonly number[]): BlockRuns {
  const runs: BlockRuns = [];
  for (const b of blocks) {
    const last = runs[runs.length - 1];
    if (last && last[0] + last[1] === b) last[1]++;
    else runs.push([b, 1]);
  }
  return runs;
}

function group(c: StepContext, name: string): GroupState {
  const g = c.groups.get(name);
  if (!g) throw tmError("TM_NO_GROUP", `group '${name}' has no secondary volume on subsystem #${c.id}`, { group: name, subsystem: c.id });
  return g;
}

function volumesOf(c: StepContext, group: string): string[] {
  return [...c.volumes.values()].filter((b) => b.group === group).map((b) => b.volume.name);
}

/**
 * Step 1 (fencing): durably raise the group's generation and stop taking
 * frames of older ones; only then report 111. Everything received before
 * is committed first, so no SYNC lifts 111 after the RCM has read it.
 */
export async function fence(c: StepContext, name: string, generation: number, by: string, reason: string) {
  const g = group(c, name);
  await c.flushCommits();
  const event = fenceEvent(generation, g.generation);
  // Null for a generation not above the group's: nothing changes, 111 and 112 are reported again.
  const state = secondaryGroupTransition(g.state, event);
  if (state !== null) {
    // The first suspension's cause is what an admin needs; a re-fence keeps it.
    if (replicating(g.state)) {
      g.reason = reason;
      g.suspendedBy = by;
    }
    c.db
      .prepare("UPDATE grp SET generation = ?, state = ?, reason = ?, suspended_by = ?, changed_at_ms = ? WHERE name = ?")
      .run(generation, state, g.reason, g.suspendedBy, c.runtime.nowMs(), name);
    // The RCM reads 111 only after the raise is durable, power cuts included.
    durableBarrier(c.db);
    g.generation = generation;
    transition(g, event);
    c.logger.warn({ group: name, generation, by, reason }, "group fenced: frames of older generations are refused");
    c.closeLinks((p) => g.times.first.has(p));
  }
  return timesReport(c, g);
}

function timesReport(c: StepContext, g: GroupState) {
  return {
    group: g.name,
    subsystem: c.id,
    generation: g.generation,
    state: g.state,
    first: Object.fromEntries([...g.times.first].map(([p, t]) => [String(p), t.toString()])),
    second: g.times.second.toString(),
    synchronizedTs: g.synchronizedTs?.toString() ?? null,
    resync: resyncReport(g),
    uncopiedVolumes: uncopiedVolumes(c, g.name),
  };
}

/**
 * The group's volumes here whose initial copy has never passed a barrier:
 * not a usable image at any Ts (the arrays' COPY state). Every step reply
 * and status carry them, so a plan and a takeover report can say so.
 */
export function uncopiedVolumes(c: Pick<StepContext, "db" | "volumes">, group: string): string[] {
  const rows = c.db.prepare("SELECT volume FROM uncopied").pluck(true).all() as string[];
  const mine = new Set([...c.volumes.values()].filter((b) => b.group === group).map((b) => b.volume.name));
  return rows.filter((v) => mine.has(v)).sort();
}

/**
 * For the cut of a suspension or takeover (resyncCut, docs/resync.md):
 * the image this secondary rests at or holds (a resync's floor, or the
 * synchronized time of a suspension), and the barrier once known.
 */
export function resyncReport(g: GroupState): { floor: string | null; barrier: string | null } {
  const hold = g.times.hold;
  if (hold) {
    const c = barrierOf(g.times.first, hold);
    return { floor: hold.floor.toString(), barrier: c === null ? null : c.toString() };
  }
  return { floor: g.synchronizedTs !== null ? g.synchronizedTs.toString() : null, barrier: null };
}

/** Dry run: what applying Ts would drop, per volume, without changing anything. */
export function preview(c: StepContext, name: string, ts: bigint) {
  const g = group(c, name);
  const rows = c.db
    .prepare("SELECT volume, count(*) AS n, coalesce(sum(len), 0) AS b, max(ts) AS m FROM rcr WHERE grp = ? AND ts > ? GROUP BY volume")
    .safeIntegers(true)
    .all(name, ts) as { volume: string; n: bigint; b: bigint; m: bigint }[];
  const keep = c.db.prepare("SELECT count(*) AS n FROM rcr WHERE grp = ? AND ts <= ?").get(name, ts) as { n: number };
  return {
    ...timesReport(c, g),
    wouldApply: keep.n,
    volumes: [...c.volumes.values()]
      .filter((b) => b.group === name)
      .map((b) => {
        const r = rows.find((x) => x.volume === b.volume.name);
        return { volume: b.volume.name, droppedWrites: Number(r?.n ?? 0n), droppedBytes: Number(r?.b ?? 0n), newestDroppedTs: r ? r.m.toString() : null };
      }),
  };
}

/**
 * Steps 604-606: 112 = Ts; RCRs with ts <= Ts are applied, the rest become
 * bitmap blocks and are dropped (Figs. 7C-7F). Idempotent: run again with
 * the same Ts it reports the same outcome and changes nothing.
 */
export async function applySynchronizedTime(c: StepContext, name: string, generation: number, ts: bigint) {
  const g = group(c, name);
  const notFenced = () => `group '${name}' on subsystem #${c.id} is ${g.state} at generation ${g.generation}, not fenced at ${generation}`;
  // Refused where the group takes frames; where it is fenced, the state stays.
  transition(g, "apply-ts", notFenced);
  if (generation !== g.generation) throw tmError("TM_NOT_FENCED", notFenced(), { group: name, subsystem: c.id, state: g.state, held: g.generation, asked: generation });
  if (g.synchronizedTs !== null && g.synchronizedTs !== ts) {
    throw tmError("TM_TS_CONFLICT", `group '${name}' on subsystem #${c.id} was already brought to Ts ${g.synchronizedTs}, not ${ts}`, {
      group: name,
      subsystem: c.id,
      ts: String(g.synchronizedTs),
      asked: String(ts),
    });
  }
  if (g.synchronizedTs === null) dropAboveTs(c, g, ts);
  const appliedBefore = g.applied;
  await c.drainedThrough(name, ts);
  return {
    ...timesReport(c, g),
    applied: g.applied,
    appliedNow: g.applied - appliedBefore,
    dropped: g.dropped,
    droppedBytes: g.droppedBytes,
    bitmapBlocks: [...c.volumes.values()].filter((b) => b.group === name).reduce((n, b) => n + c.bitmap.count(b.volume.name), 0),
  };
}

/** Steps 605-606 the first time a group is brought to Ts: 112 = Ts, and what lies above Ts becomes bitmap blocks and goes. */
function dropAboveTs(c: StepContext, g: GroupState, ts: bigint): void {
  const name = g.name;
  // DESIGN.md: a primary announces T only once all its RCRs <= T are acknowledged, so 112 <= Ts.
  assert(g.times.second <= ts, `secondary #${c.id} group ${name}: 112 ${g.times.second} above Ts ${ts}`);
  const queued = (
    c.db
      .prepare("SELECT id, ts, primary_id, seq, volume, op, off, len FROM rcr WHERE grp = ?")
      .safeIntegers(true)
      .all(name) as { id: bigint; ts: bigint; primary_id: bigint; seq: bigint; volume: string; op: bigint; off: bigint; len: bigint }[]
  ).map((r) => ({ id: r.id, ts: r.ts, primaryId: Number(r.primary_id), seq: Number(r.seq), volume: r.volume, offset: Number(r.off), length: Number(r.len), verify: Number(r.op) === OP_VERIFY }));
  const { drop } = splitAtSynchronizedTime(queued, ts);
  let blocks = 0;
  let bytes = 0;
  try {
    c.db.transaction(() => {
      for (const r of drop) {
        // A dropped VERIFY record wrote nothing: it leaves no block that differs.
        if (!r.verify) blocks += c.bitmap.markNow(r.volume, r.offset, r.length);
        bytes += r.length;
        c.stmts.del.run(r.id);
      }
      c.stmts.setSecond.run(ts, name);
      // A resync cut short rests at this cut; the next one starts from here.
      c.db
        .prepare("UPDATE grp SET synchronized_ts = ?, resync_floor = NULL, dropped = dropped + ?, dropped_bytes = dropped_bytes + ? WHERE name = ?")
        .run(ts, drop.length, bytes, name);
      c.db.prepare("DELETE FROM copied WHERE grp = ?").run(name);
    })();
    // What the RCM is told is done survives a power cut: 112 never falls back from Ts.
    durableBarrier(c.db);
  } catch (err) {
    c.bitmap.reset();
    throw err;
  }
  c.segments.collect((c.stmts.oldestSeg.get() as number | null | undefined) ?? null);
  // Dropped rows' ids may be issued again: no payload kept for them may outlive them.
  c.recent.clear();
  g.times = { first: g.times.first, second: ts, hold: null };
  g.synchronizedTs = ts;
  g.dropped += drop.length;
  g.droppedBytes += bytes;
  c.logger.warn({ group: name, ts: ts.toString(), dropped: drop.length, bitmapBlocks: blocks }, "group brought to the synchronized time");
}

/**
 * A resync starts (docs/resync.md, step 2): host writes stop (after a
 * takeover), 112 is held at the synchronized time the group rests at, and
 * frames of the new generation are taken. Answers with the bitmap, which
 * stays until the barrier is passed, so a resync cut short loses nothing.
 * Idempotent for the same generation.
 */
export async function resyncBegin(c: StepContext, name: string, generation: number, reverse = false) {
  const g = group(c, name);
  const event = resyncBeginEvent(generation, g.generation);
  const notSynchronized = () => `group '${name}' on subsystem #${c.id} is ${g.state} and does not rest at a synchronized time; suspend it first`;
  const out = secondaryGroupOutcome(g.state, event);
  // The resync under way, asked again (the table allows that only while resyncing).
  const begun = out.kind === "to" && out.to === g.state;
  // Anything else needs the group at rest at a synchronized time (apply-ts since the last resync).
  if (!begun && g.synchronizedTs === null) throw tmError("TM_NOT_SYNCHRONIZED", notSynchronized(), { group: name, subsystem: c.id, state: g.state });
  const floor = g.synchronizedTs;
  // Host writes stop before the bitmap is read: one in flight marks its block first.
  const next = transition(g, event, (code) =>
    code === "TM_GENERATION" ? `group '${name}' on subsystem #${c.id} is at generation ${g.generation}; a resync needs a newer one than ${generation}` : notSynchronized(),
  );
  assert(next !== null, `secondary #${c.id}: a resync request is never ignored`);
  if (!begun) {
    assert(floor !== null, `secondary #${c.id} group ${name}: a resync begins from a synchronized time`);
    const before = g.generation;
    const idle = c.hostsIdle();
    if (idle) await idle;
    // A fence may have landed while host writes finished: it holds a newer
    // generation (and state) that this older resync must not write over.
    if (g.generation !== before || g.state !== next) {
      throw tmError(
        "TM_GENERATION",
        `group '${name}' on subsystem #${c.id} was fenced at generation ${g.generation} (${g.state}) while resync ${generation} began; nothing of the resync was written`,
        { group: name, subsystem: c.id, held: g.generation, asked: generation },
      );
    }
    c.db.transaction(() => {
      c.db
        .prepare(
          "UPDATE grp SET generation = ?, state = ?, resync_floor = ?, synchronized_ts = NULL, reason = NULL, suspended_by = NULL, changed_at_ms = ? WHERE name = ?",
        )
        .run(generation, next, floor, c.runtime.nowMs(), name);
      c.db.prepare("DELETE FROM copied WHERE grp = ?").run(name);
    })();
    durableBarrier(c.db);
    g.generation = generation;
    g.times = startHold(g.times, floor);
    g.synchronizedTs = null;
    g.reason = null;
    g.suspendedBy = null;
    c.logger.warn({ group: name, generation, floor: floor.toString(), reverse }, "resync begins: 112 held at the synchronized time until the barrier");
  }
  return {
    ...timesReport(c, g),
    bitmap: Object.fromEntries(volumesOf(c, name).map((v) => [v, toRuns(c.bitmap.blocks(v))])),
  };
}

/** Step 7G: hosts may write the secondary volumes; every write is marked in the bitmap. */
export function takeover(c: StepContext, name: string, generation: number) {
  const g = group(c, name);
  const notSynchronized = () => `group '${name}' on subsystem #${c.id} has not been brought to a synchronized time at generation ${generation}`;
  if (g.synchronizedTs === null || generation !== g.generation) throw tmError("TM_NOT_SYNCHRONIZED", notSynchronized(), { group: name, subsystem: c.id, asked: generation });
  // Decided before the row is written, changed here once it is durable.
  const next = secondaryGroupTransition(g.state, "takeover", notSynchronized);
  assert(next !== null, `secondary #${c.id}: a takeover is never ignored`);
  if (next !== g.state) {
    c.db.prepare("UPDATE grp SET state = ?, changed_at_ms = ? WHERE name = ?").run(next, c.runtime.nowMs(), name);
    durableBarrier(c.db);
    transition(g, "takeover");
    c.logger.warn({ group: name }, "takeover: secondary volumes are read-write for hosts");
  }
  return {
    ...timesReport(c, g),
    volumes: [...c.volumes.values()].filter((b) => b.group === name).map((b) => b.volume.name),
  };
}

/** Inside the receiver's commit transaction: the group leaves its resync (its barrier is passed). */
export function endResync(c: StepContext, name: string): void {
  // The state here changes once the commit is durable (receiver.ts, commit()).
  const next = secondaryGroupTransition(c.groups.get(name)!.state, "barrier-passed");
  assert(next !== null, `secondary #${c.id} group ${name}: a barrier passed is never ignored`);
  c.db.prepare("UPDATE grp SET state = ?, resync_floor = NULL, changed_at_ms = ? WHERE name = ?").run(next, c.runtime.nowMs(), name);
  c.db.prepare("DELETE FROM copied WHERE grp = ?").run(name);
  c.bitmap.clearVolumesNow(volumesOf(c, name));
  // Past the barrier every volume of the group holds a complete image.
  const copied = c.db.prepare("DELETE FROM uncopied WHERE volume = ?");
  for (const v of volumesOf(c, name)) copied.run(v);
}

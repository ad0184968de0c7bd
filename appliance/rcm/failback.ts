// Failback (docs/resync.md): `resync --reverse` after a takeover turns the
// group's direction (the taken-over secondaries, which hosts write now, become
// its primaries; the old primaries its read-only secondaries) and resyncs;
// `swap` turns a paired group round without losing an acknowledged write:
// freeze the primaries, wait until the secondaries hold everything they
// acknowledged, take over, turn, resync (almost nothing to copy).
import type { LoadedTopology } from "../../config/load.ts";
import { directed, type Direction } from "../../config/direction.ts";
import { askAll } from "../cli/control-client.ts";
import type { SubsystemStatus } from "../cli/status-view.ts";
import { quiesce } from "../cli/quiesce.ts";
import { ProcedureError, call, runProcedure, type ProcedureOptions } from "./procedure.ts";
import { startResync, takeOverReturning, type ResyncOptions, type ResyncStart } from "./resync.ts";
import { returningPrimaries, type Returning } from "./returning.ts";
import type { NegativeControls } from "../runtime/controls.ts";
import { hostsMayWrite, type PrimaryGroupState } from "../primary/group-state.ts";

const opposite = (d: Direction): Direction => (d === "forward" ? "reverse" : "forward");

export interface GroupView {
  /** Per subsystem of the group: the direction it holds, and its group state in its role. */
  subsystems: Map<
    number,
    {
      direction: Direction;
      generation: number;
      state: string;
      synchronizedTs: string | null;
      role: "primary" | "secondary";
      reason: string | null;
      frozenTs?: string | null;
      /** A primary whose state is not yet in its state file (returning.ts). */
      unrecorded?: boolean;
      /** What this side knows to differ from the other (blocks to copy, marked by a verify, never copied), or null. */
      differs: string | null;
    }
  >;
}

async function view(topo: LoadedTopology, group: string): Promise<GroupView> {
  const g = topo.groups.get(group);
  if (!g) throw new ProcedureError("TM_NO_GROUP", `group '${group}' is not defined in ${topo.file}`);
  const ids = [...new Set([...g.primaries, ...g.secondaries])];
  const answers = await askAll<SubsystemStatus>(topo, ids, { op: "status" });
  const down = [...answers].filter(([, a]) => !a.ok).map(([id, a]) => `#${id} (${(a as { error: string }).error})`);
  if (down.length > 0) throw new ProcedureError("TM_UNREACHABLE", `${group}: ${down.join(", ")} cannot be reached; a failback needs every subsystem of the group; nothing was changed`);
  const subsystems: GroupView["subsystems"] = new Map();
  const names = new Set(topo.pairs.filter((p) => p.group === group).flatMap((p) => [p.primary.name, p.secondary.name]));
  const listed = (what: string, n: number) => (n > 0 ? [`${n} ${what}`] : []);
  const differs = (parts: string[]) => (parts.length > 0 ? parts.join(", ") : null);
  for (const [id, a] of answers) {
    const s = (a as { value: SubsystemStatus }).value;
    const direction = (s.directions?.[group] as Direction | undefined) ?? "forward";
    const sec = s.secondary?.find((x) => x.name === group);
    const prim = s.primary?.groups.find((x) => x.name === group);
    if (sec) {
      const uncopied = (sec.uncopiedVolumes ?? []).filter((v) => names.has(v));
      subsystems.set(id, {
        direction,
        generation: sec.generation,
        state: sec.state,
        synchronizedTs: sec.synchronizedTs,
        role: "secondary",
        reason: sec.reason,
        differs: differs([...listed("blocks marked different (an online verify)", sec.bitmapBlocks), ...(uncopied.length > 0 ? [`${uncopied.join(" ")} never copied`] : [])]),
      });
    } else if (prim) {
      const pendingCopies = (s.primary?.pendingCopies ?? []).filter((v) => names.has(v));
      // A primary that a turn made: the Ts of that turn (a cut-short turn is finished from it).
      subsystems.set(id, {
        direction,
        generation: prim.generation,
        state: prim.state,
        synchronizedTs: s.turnedAtTs?.[group] ?? null,
        role: "primary",
        reason: prim.reason,
        frozenTs: prim.frozenTs ?? null,
        unrecorded: prim.unrecorded === true,
        differs: differs([
          ...listed("blocks in its bitmap", prim.bitmapBlocks),
          ...listed("blocks still to copy", prim.remainingBlocks ?? 0),
          ...(pendingCopies.length > 0 ? [`the initial copy of ${pendingCopies.join(" ")} not run`] : []),
        ]),
      });
    }
  }
  return { subsystems };
}

/**
 * Turns the group to `to`, after a takeover in the other direction. Every
 * subsystem is told the same generation and the synchronized time of the
 * takeover (the new secondaries rest at it). Idempotent: a turn cut short is
 * finished with the values the turned subsystems already hold.
 */
async function turn(topo: LoadedTopology, group: string, to: Direction, o: ResyncOptions): Promise<{ generation: number; ts: string; returning: Returning }> {
  let v = await view(topo, group);
  // A primary that was down while the group was taken over comes back in the
  // state it died in. The takeover meant every primary of the group: it is
  // brought to that state now, as the takeover would have done (returning.ts).
  const returning = returningInView(v, to);
  if (returning.primaries.length > 0) {
    await takeOverReturning(topo, group, returning, o);
    v = await view(topo, group);
  }
  const all = [...v.subsystems.values()];
  const turned = [...v.subsystems].filter(([, s]) => s.direction === to);
  const unturned = [...v.subsystems].filter(([, s]) => s.direction !== to);
  // Ts: the takeover's synchronized time, on the old secondaries not yet turned, or on the new secondaries already turned.
  const tsSeen = new Set(all.filter((s) => s.synchronizedTs !== null && (s.state === "takeover" || s.direction === to)).map((s) => s.synchronizedTs!));
  for (const [id, s] of unturned) {
    const ok = (s.role === "secondary" && s.state === "takeover") || (s.role === "primary" && s.state === "taken-over" && s.unrecorded !== true);
    if (!ok) {
      throw new ProcedureError(
        "TM_NOT_TAKEN_OVER",
        `${group}: subsystem #${id} is ${s.state} as a ${s.role}; only a group that was taken over turns (run 'tidemark takeover' first, or 'tidemark swap' for a paired group)`,
      );
    }
  }
  if (tsSeen.size !== 1) throw new ProcedureError("TM_TS_CONFLICT", `${group}: cannot tell the takeover's synchronized time (${[...tsSeen].join(", ") || "none"})`);
  const ts = [...tsSeen][0];
  const generation = turned.length > 0 ? Math.max(...turned.map(([, s]) => s.generation)) : Math.max(...all.map((s) => s.generation)) + 1;
  await Promise.all(unturned.map(([id]) => call(topo, id, { op: "turn", group, direction: to, generation, ts })));
  return { generation, ts, returning };
}

/**
 * Returning primaries (returning.ts) among the subsystems not yet turned to
 * `to`. A turn cut short after every old secondary turned leaves only old
 * primaries unturned: the takeover the turn finished meant them all, so each
 * one not durably taken over (back from a kill, or its record failed) is
 * taken over now, at its own generation, which the turn's is above.
 */
export function returningInView(v: GroupView, to: Direction): Returning {
  const unturned = [...v.subsystems].filter(([, s]) => s.direction !== to);
  const secondaries = unturned.filter(([, s]) => s.role === "secondary").map(([, s]) => s);
  const primaries = unturned.filter(([, s]) => s.role === "primary");
  if (secondaries.length === 0 && primaries.length > 0 && primaries.length < v.subsystems.size) {
    const back = primaries
      .filter(([, s]) => s.state !== "taken-over" || s.unrecorded === true)
      .map(([subsystem, s]) => ({ subsystem, state: s.state, generation: s.generation, ...(s.unrecorded === true ? { unrecorded: true as const } : {}) }))
      .sort((a, b) => a.subsystem - b.subsystem);
    return back.length === 0 ? { primaries: [], generation: 0 } : { primaries: back, generation: Math.max(...back.map((p) => p.generation)) };
  }
  return returningPrimaries(secondaries, new Map(primaries));
}

function currentDirection(v: GroupView): Direction | "mixed" {
  const dirs = new Set([...v.subsystems.values()].map((s) => s.direction));
  return dirs.size === 1 ? [...dirs][0] : "mixed";
}

/** The subsystem rests where a turn of direction left it (turnDirection's reason). */
function turnedBy(s: { state: string; reason: string | null }): boolean {
  return s.state === "suspended" && (s.reason ?? "").startsWith("direction turned to ");
}

/** The direction the subsystems with the newest generation hold: where a cut-short turn was going. */
function newestDirection(v: GroupView): Direction {
  const all = [...v.subsystems.values()];
  const top = Math.max(...all.map((s) => s.generation));
  return all.find((s) => s.generation === top)!.direction;
}

export interface FailbackReport {
  group: string;
  direction: Direction;
  turnedAtTs: string;
  resync: ResyncStart;
  swappedFrom?: Direction;
  /** Swap: the greatest stamp the frozen primaries had handed out; the takeover's Ts is at or above it. */
  frozenAt?: string;
  /** Primaries the takeover could not reach, taken over on their return before the turn. */
  returning?: Returning;
}

const returned = (r: Returning) => (r.primaries.length > 0 ? { returning: r } : {});

/** `tidemark resync --reverse`: after a takeover, the secondaries become the source. */
export async function reverseResync(topo: LoadedTopology, group: string, o: ResyncOptions): Promise<FailbackReport> {
  const v = await view(topo, group);
  const cur = currentDirection(v);
  // A rerun after the turn completed (the RCM died while the resync started):
  // nothing is taken over any more and every subsystem holds the reverse
  // direction. Turning again would undo the failback; finishing its resync is
  // what the first run meant.
  const takenOver = [...v.subsystems.values()].some((s) => s.state === "takeover" || s.state === "taken-over");
  if (cur === "reverse" && !takenOver) {
    o.logger.warn({ group }, "failback: the group was turned already; following its resync");
    const resync = await startResync(directed(topo, new Map([[group, cur]])), group, o);
    return { group, direction: cur, turnedAtTs: resync.floor ?? "", resync };
  }
  const to = cur === "mixed" ? newestDirection(v) : opposite(cur);
  o.logger.warn({ group, to }, "failback: turning the group's direction");
  const t = await turn(topo, group, to, o);
  const resync = await startResync(directed(topo, new Map([[group, to]])), group, o);
  return { group, direction: to, turnedAtTs: t.ts, resync, ...returned(t.returning) };
}

/**
 * A swap's takeover must rest at or above every stamp the frozen primaries
 * handed out, or acknowledged writes would be dropped. Checked before the
 * takeover opens the secondaries to hosts (`open`: false), so a refused swap
 * leaves no side writable and no host write that a resync would overwrite
 * (finding 25); a group found taken over already is checked as it is.
 */
function swapCutCovers(group: string, ts: string, frozenAt: string, open: boolean): void {
  if (BigInt(ts) < BigInt(frozenAt)) {
    throw new ProcedureError(
      "TM_SWAP",
      `swap ${group}: the takeover came to Ts ${ts}, below the stamp ${frozenAt} the primaries were frozen at (a suspension came in between); ` +
        `writes acknowledged to hosts between the two are on the primaries only, and a turn would discard them. ` +
        (open
          ? `The group is taken over, nothing was turned. ${swapWaysOn(group)}`
          : `Nothing was turned and no side takes host writes: the secondaries rest suspended at Ts, the primaries are taken over. ` +
            `To keep those writes: 'tidemark resync --group ${group}' (the primaries' image wins), then swap again; to discard them: 'tidemark takeover --group ${group}', then 'tidemark resync --group ${group} --reverse'`),
    );
  }
}

/** The check of swapCutCovers as the takeover's last word before it opens the secondaries (or after it, with the control of finding 25). */
function cutCheck(group: string, frozenAt: string, controls: NegativeControls | undefined, opened = false): Pick<ProcedureOptions, "beforeTakeover"> {
  return controls?.swapOpensBeforeCutCheck ? {} : { beforeTakeover: (ts) => swapCutCovers(group, ts.toString(), frozenAt, opened) };
}

/** What TM_SWAP tells the admin to do next, once the secondaries are open to hosts: either way loses one side's writes, and the admin must know which. */
function swapWaysOn(group: string): string {
  return (
    `Hosts may have written the secondaries since a takeover opened them. To keep the primaries' writes: 'tidemark resync --group ${group}' (the primaries' image wins; ` +
    `what hosts wrote on the secondaries is discarded), then swap again; to keep the secondaries': 'tidemark resync --group ${group} --reverse' (the primaries' writes after Ts are discarded)`
  );
}

/** After a swap froze the group, no primary may have become writable again before its turn. */
function swapNoneThawed(group: string, states: { id: number; role: string; state: string }[]): void {
  const thawed = states.filter((s) => s.role === "primary" && hostsMayWrite(s.state as PrimaryGroupState));
  if (thawed.length === 0) return;
  throw new ProcedureError(
    "TM_SWAP",
    `swap ${group}: ${thawed.map((s) => `primary #${s.id} is ${s.state}`).join(", ")} after the swap froze the group (a suspension came in between): ` +
      `hosts may have written it since, on that primary only, and a turn would discard those writes. Nothing was turned. ` +
      swapWaysOn(group),
  );
}

/** The highest stamp a swap froze the group's primaries at (persisted by each primary), or null when none was frozen by a swap. */
function frozenStampOf(states: { role: string; frozenTs?: string | null }[]): string | null {
  const stamps = states.filter((s) => s.role === "primary" && s.frozenTs != null).map((s) => BigInt(s.frozenTs!));
  return stamps.length === 0 ? null : stamps.reduce((m, t) => (t > m ? t : m)).toString();
}

/** `tidemark swap`: a paired group changes direction with no acknowledged write lost. */
export async function swap(topo: LoadedTopology, group: string, o: ResyncOptions & { timeoutMs: number; controls?: NegativeControls }): Promise<FailbackReport> {
  const v = await view(topo, group);
  const cur = currentDirection(v);
  if (cur === "mixed") return reverseResync(topo, group, o);
  // A rerun after the swap's turn (the RCM died after turning): every
  // subsystem rests at the turn, or the resync that follows it runs. What the
  // first run meant is that resync, not a second swap back.
  const all = [...v.subsystems.values()];
  if ((cur === "reverse" || all.some(turnedBy)) && all.every((s) => turnedBy(s) || s.state === "copying" || s.state === "resyncing")) {
    o.logger.warn({ group, direction: cur }, "swap: the group was turned already; following its resync");
    const resync = await startResync(directed(topo, new Map([[group, cur]])), group, o);
    return { group, direction: cur, turnedAtTs: resync.floor ?? "", resync };
  }
  const now = directed(topo, new Map([[group, cur]]));
  const g = now.groups.get(group)!;
  const states = [...v.subsystems].map(([id, s]) => ({ id, ...s }));
  const everyTakenOver = states.every((s) => (s.role === "secondary" ? s.state === "takeover" : s.state === "taken-over"));
  let frozenAt: string | undefined;
  // A swap cut short inside its takeover (the RCM died after fencing some
  // secondaries): every primary is frozen or taken over and a secondary is
  // fenced. Its freeze and its wait are done; what the first run meant is to
  // finish the takeover, whose Ts must still cover every frozen stamp.
  const pastWait =
    !everyTakenOver &&
    states.every((s) => (s.role === "primary" ? s.state === "frozen" || s.state === "taken-over" : s.state === "active" || s.state === "suspended" || s.state === "takeover")) &&
    states.some((s) => s.role === "secondary" && s.state !== "active");
  // A group taken over while some primaries were down, which are back: taken
  // over as far as a swap goes; the turn takes them over first (returning.ts),
  // and the swap does what `resync --reverse` does.
  const back = new Set(returningInView(v, opposite(cur)).primaries.map((p) => p.subsystem));
  const takenOver = everyTakenOver || (!pastWait && back.size > 0 && states.every((s) => (s.role === "secondary" ? s.state === "takeover" : s.state === "taken-over" || back.has(s.id))));
  if (takenOver) {
    // Taken over after a swap froze the primaries (the swap's own takeover, cut
    // short before its turn, or one that came in between): the turn is safe
    // only if that takeover's Ts covers the freeze; otherwise writes the
    // primaries acknowledged are in no secondary's image, and turning would
    // discard them silently. The swap stops and says what to do.
    const frozen = frozenStampOf(states);
    const ts = states.find((s) => s.role === "secondary" && s.synchronizedTs !== null)?.synchronizedTs ?? null;
    if (frozen !== null && ts !== null) swapCutCovers(group, ts, frozen, true);
    // A primary the swap froze that hosts may write again: a suspension
    // lifted its freeze (a primary down through the swap's takeover comes
    // back frozen). What hosts wrote since is in its bitmap only; the turn
    // would take it over and the resync copy the new primaries over it.
    if (frozen !== null && !o.controls?.swapTurnsThawedPrimaries) swapNoneThawed(group, states);
  }
  if (pastWait) {
    // The stamp each primary persisted when it froze (a primary's clock goes
    // on stamping other groups' writes and SYNCs; its last stamp now is no
    // bound); a primary of a state file before migration 9 answers its last stamp.
    const stamps = await Promise.all(
      g.primaries.map(async (id) => v.subsystems.get(id)?.frozenTs ?? (await call<{ lastStamp: string }>(topo, id, { op: "stamp" })).lastStamp),
    );
    frozenAt = stamps.reduce((m, t) => (BigInt(t) > m ? BigInt(t) : m), 0n).toString();
    o.logger.warn({ group, frozenAt }, "swap: finishing a swap cut short inside its takeover");
    // A secondary in `takeover` was opened to hosts already, by another takeover (the
    // swap's own never opens below the freeze): the refusal must not say no side is writable.
    const opened = states.some((s) => s.role === "secondary" && s.state === "takeover");
    const r = await runProcedure(now, group, { mode: "takeover", reason: "swap", by: o.by, logger: o.logger, controls: o.controls, ...cutCheck(group, frozenAt, o.controls, opened) });
    swapCutCovers(group, r.ts, frozenAt, true);
  } else if (!takenOver) {
    const notPaired = states.filter((s) => !(s.role === "secondary" ? s.state === "active" : s.state === "active" || s.state === "frozen"));
    if (notPaired.length > 0) {
      throw new ProcedureError("TM_NOT_PAIRED", `swap ${group}: ${notPaired.map((s) => `#${s.id} is ${s.state}`).join(", ")}; only a paired group is swapped (resync it first)`);
    }
    // Paired, yet the sides differ where the primaries are right: after the
    // turn the old secondaries' copies of those blocks would be copied over
    // the primaries' (finding 27). A forward resync repairs them first.
    const differing = o.controls?.swapIgnoresDiffering ? [] : states.filter((s) => s.differs !== null);
    if (differing.length > 0) {
      throw new ProcedureError(
        "TM_NOT_PAIRED",
        `swap ${group}: the sides differ: ${differing.map((s) => `#${s.id} has ${s.differs}`).join("; ")}; the primaries hold the right blocks, so a swap would copy the wrong way: run 'tidemark resync --group ${group}' first, then swap`,
      );
    }
    // 1. Hosts stop writing the primaries; what they were told is written still streams.
    const frozen = await Promise.all(g.primaries.map((id) => call<{ lastStamp: string }>(topo, id, { op: "primary-freeze", group })));
    frozenAt = frozen.reduce((m, f) => (BigInt(f.lastStamp) > m ? BigInt(f.lastStamp) : m), 0n).toString();
    o.logger.warn({ group, frozenAt }, "swap: primaries frozen; waiting until the secondaries hold every acknowledged write");
    // 2. Every secondary has applied everything acknowledged.
    await quiesce(now, group, o.timeoutMs);
    // 3. Take over: the secondaries rest at Ts >= every stamp, nothing is dropped.
    const r = await runProcedure(now, group, { mode: "takeover", reason: "swap", by: o.by, logger: o.logger, controls: o.controls, ...cutCheck(group, frozenAt!, o.controls) });
    swapCutCovers(group, r.ts, frozenAt, true);
  }
  const to = opposite(cur);
  const t = await turn(topo, group, to, o);
  const resync = await startResync(directed(topo, new Map([[group, to]])), group, o);
  return { group, direction: to, turnedAtTs: t.ts, resync, swappedFrom: cur, frozenAt, ...returned(t.returning) };
}

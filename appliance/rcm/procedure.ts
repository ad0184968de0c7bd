// The seed's after-failure procedure (Figs. 6-7), driven by the remote copy
// manager over the control RPC: fence every secondary with a new generation
// and read its 111 (601), compute Ts (602), have every secondary apply up to
// Ts and turn the rest into bitmap blocks (603-606), and for a takeover open
// the secondaries to hosts (607-608). Idempotent: run again after a crash
// anywhere, it reaches the same Ts (fenced secondaries take no more SYNCs,
// and applying Ts does not change 111).
import type { Logger } from "pino";
import type { LoadedTopology } from "../../config/load.ts";
import { subsystemConfig } from "../../config/load.ts";
import { controlPlaneOf } from "../cli/control-client.ts";
import { TidemarkError, type ErrorCode, type ErrorContext } from "../errors/codes.ts";
import type { SubsystemStatus } from "../cli/status-view.ts";
import { CutConflict, procedureCut, synchronizedTime, type ResyncReport } from "./synchronized-time.ts";
import { returningPrimaries } from "./returning.ts";
import type { NegativeControls } from "../runtime/controls.ts";

export type ProcedureMode = "suspend" | "takeover" | "dry-run";

/** Draining a large disk request queue can take minutes. */
const APPLY_TIMEOUT_MS = 30 * 60_000;

/** An RCM procedure (suspend, takeover, resync, failback) that cannot go on; its code is from the registry. */
export class ProcedureError extends TidemarkError {
  constructor(code: ErrorCode, message: string, context?: ErrorContext) {
    super(code, message, context);
    this.name = "ProcedureError";
  }
}

interface TimesReport {
  group: string;
  subsystem: number;
  generation: number;
  state: string;
  first: Record<string, string>;
  second: string;
  synchronizedTs: string | null;
  resync?: { floor: string | null; barrier: string | null } | null;
  /** Volumes whose initial copy never passed a barrier: not a usable image (absent from older subsystems). */
  uncopiedVolumes?: string[];
}

type CutInput = { synchronizedTs: string | null; resync?: { floor: string | null; barrier: string | null } | null };

function resyncReportOf(r: CutInput): ResyncReport {
  // A secondary resting at a synchronized time holds that image, hold or not.
  const floor = r.resync?.floor ?? r.synchronizedTs;
  return { floor: floor != null ? BigInt(floor) : null, barrier: r.resync?.barrier != null ? BigInt(r.resync.barrier) : null };
}

/** procedureCut over what the secondaries reported (fence replies, or status for a dry run). */
function cutOf(mode: ProcedureMode, group: string, computed: bigint, reports: CutInput[]): bigint {
  try {
    return procedureCut(
      computed,
      reports.map((r) => ({ synchronizedTs: r.synchronizedTs === null ? null : BigInt(r.synchronizedTs), resync: resyncReportOf(r) })),
    );
  } catch (err) {
    if (!(err instanceof CutConflict)) throw err;
    throw new ProcedureError("TM_TS_CONFLICT", `${mode} ${group}: ${err.message}; this needs an operator`);
  }
}

export interface ProcedureReport {
  group: string;
  mode: ProcedureMode;
  generation: number;
  ts: string;
  /** now - Ts: the writes of this window are not on the secondaries. */
  lossWindowMs: number;
  complete: boolean;
  waitingFor: number[];
  elapsedMs: number;
  secondaries: {
    subsystem: number;
    first: Record<string, string>;
    applied?: number;
    appliedNow?: number;
    dropped?: number;
    droppedBytes?: number;
    bitmapBlocks?: number;
    wouldApply?: number;
    /** `notUsable`: the pair's initial copy never finished, so the volume is no image of the primary at any Ts. */
    volumes: { volume: string; nbdUrl: string; droppedWrites?: number; droppedBytes?: number; notUsable?: boolean }[];
  }[];
  primaries: {
    subsystem: number;
    reached: boolean;
    error?: string;
    state?: string;
    generation?: number;
    /** Dry run of a group taken over already: the takeover could not reach this primary, which is back (returning.ts). */
    returning?: boolean;
    volumes?: { volume: string; unacknowledgedWrites: number; unacknowledgedBytes: number }[];
  }[];
  /** Dry run: every secondary is taken over already, at `generation`; a takeover would change nothing but the returning primaries. */
  takenOver?: boolean;
}

export function call<T>(topo: LoadedTopology, id: number, body: unknown, timeoutMs = 15_000): Promise<T> {
  return controlPlaneOf(topo).call<T>(id, body, timeoutMs);
}

async function settle<T>(ids: number[], f: (id: number) => Promise<T>): Promise<Map<number, { ok: true; value: T } | { ok: false; error: string }>> {
  const out = new Map<number, { ok: true; value: T } | { ok: false; error: string }>();
  await Promise.all(
    ids.map(async (id) => {
      try {
        out.set(id, { ok: true, value: await f(id) });
      } catch (err) {
        out.set(id, { ok: false, error: (err as Error).message });
      }
    }),
  );
  return out;
}

function nbdUrlOf(topo: LoadedTopology, volume: string): string {
  const v = topo.volumes.get(volume)!;
  const ss = subsystemConfig(topo, v.subsystemId);
  return `nbd://${ss.host}:${ss.nbdPort}/${volume}`;
}

export interface ProcedureOptions {
  mode: ProcedureMode;
  reason: string;
  by: string;
  logger: Logger;
  /** Automatic suspension: fence what answers and come back for the rest. */
  partial?: boolean;
  /** Negative controls restored in the procedure (the simulation only; appliance/runtime/controls.ts). */
  controls?: NegativeControls;
  /**
   * A takeover's last word before it opens the secondaries to hosts (607):
   * throwing leaves them suspended at Ts and the primaries taken over, so no
   * side is writable (a swap whose Ts does not cover its freeze, finding 25).
   */
  beforeTakeover?: (ts: bigint) => void;
}

export async function runProcedure(topo: LoadedTopology, group: string, o: ProcedureOptions): Promise<ProcedureReport> {
  const plane = controlPlaneOf(topo);
  const started = plane.runtime.nowMs();
  const g = topo.groups.get(group);
  if (!g) throw new ProcedureError("TM_NO_GROUP", `group '${group}' is not defined in ${topo.file}`);
  const now = () => plane.clockNs();

  // 601 needs every secondary: check them all before changing anything.
  const statuses = await settle(g.secondaries, (id) => call<SubsystemStatus>(topo, id, { op: "status" }));
  const down = [...statuses].filter(([, a]) => !a.ok) as [number, { ok: false; error: string }][];
  if (down.length > 0 && !o.partial) {
    throw new ProcedureError(
      "TM_UNREACHABLE",
      `${o.mode} ${group}: secondary subsystem${down.length > 1 ? "s" : ""} ${down.map(([id]) => `#${id}`).join(", ")} cannot be reached (${down
        .map(([, a]) => a.error)
        .join("; ")}); nothing was changed`,
    );
  }
  const groupOf = (s: SubsystemStatus) => s.secondary?.find((x) => x.name === group);
  const reachable = [...statuses].filter(([, a]) => a.ok).map(([id, a]) => [id, groupOf((a as { value: SubsystemStatus }).value)!] as const);

  if (o.mode === "dry-run") {
    const first = new Map(reachable.map(([id, sg]) => [id, new Map(Object.entries(sg.first).map(([k, t]) => [Number(k), BigInt(t)]))]));
    const ts = cutOf(o.mode, group, synchronizedTime(first), reachable.map(([, sg]) => sg));
    const previews = await settle(g.secondaries, (id) => call<TimesReport & { wouldApply: number; volumes: { volume: string; droppedWrites: number; droppedBytes: number }[] }>(topo, id, { op: "preview", group, ts: ts.toString() }));
    const prim = await settle(g.primaries, (id) =>
      call<{ state: string; generation: number; volumes: { volume: string; unacknowledgedWrites: number; unacknowledgedBytes: number }[] }>(topo, id, { op: "primary-preview", group }),
    );
    // Taken over already: say so, and name the primaries the takeover could not reach that are back.
    const takenOver = reachable.length > 0 && reachable.every(([, sg]) => sg.state === "takeover") && new Set(reachable.map(([, sg]) => sg.generation)).size === 1;
    const back = new Set(
      returningPrimaries(
        reachable.map(([, sg]) => sg),
        new Map([...prim].flatMap(([id, a]) => (a.ok ? [[id, { state: a.value.state, generation: a.value.generation }] as const] : []))),
      ).primaries.map((p) => p.subsystem),
    );
    return {
      group,
      mode: o.mode,
      ...(takenOver ? { takenOver } : {}),
      generation: Math.max(...reachable.map(([, sg]) => sg.generation)),
      ts: ts.toString(),
      lossWindowMs: Number(now() - ts) / 1e6,
      complete: true,
      waitingFor: [],
      elapsedMs: plane.runtime.nowMs() - started,
      secondaries: [...previews].map(([id, a]) => {
        if (!a.ok) throw new ProcedureError("TM_UNREACHABLE", `dry run ${group}: secondary #${id}: ${a.error}; nothing was changed`);
        return {
          subsystem: id,
          first: a.value.first,
          wouldApply: a.value.wouldApply,
          volumes: a.value.volumes.map((v) => ({ ...v, nbdUrl: nbdUrlOf(topo, v.volume), ...(a.value.uncopiedVolumes?.includes(v.volume) ? { notUsable: true } : {}) })),
        };
      }),
      primaries: [...prim].map(([id, a]) =>
        a.ok
          ? { subsystem: id, reached: true, state: a.value.state, generation: a.value.generation, ...(back.has(id) ? { returning: true } : {}), volumes: a.value.volumes }
          : { subsystem: id, reached: false, error: a.error },
      ),
    };
  }

  // A run that was cut short left every secondary fenced at one generation: reuse it.
  const gens = reachable.map(([, sg]) => sg.generation);
  const allFenced = down.length === 0 && reachable.every(([, sg]) => sg.state === "suspended" || sg.state === "takeover") && new Set(gens).size === 1;
  const generation = allFenced ? gens[0] : Math.max(0, ...gens) + 1;
  o.logger.warn({ group, mode: o.mode, generation, reason: o.reason, by: o.by }, "after-failure procedure: fencing");

  // 601: fence, then read 111 (the secondary reads it after the durable raise).
  const fenced = await settle(
    reachable.map(([id]) => id),
    (id) => call<TimesReport>(topo, id, { op: "fence", group, generation, reason: o.reason, by: o.by }),
  );
  const failedFence = [...fenced].filter(([, a]) => !a.ok) as [number, { ok: false; error: string }][];
  // Primaries stop streaming and record unacknowledged writes in their bitmaps.
  // A group some secondary of which is taken over is one hosts may write on
  // that side: a suspension must not make a primary writable again (a frozen
  // one whose swap was cut short after its takeover, or one the takeover could
  // not reach), or both sides take writes and one side's are lost to the next
  // resync (finding 24). Its primaries go where a takeover puts them:
  // taken over, read-only for hosts.
  const takenOverSomewhere = reachable.some(([, sg]) => sg.state === "takeover") && !o.controls?.suspensionThawsTakenOverGroup;
  const primaryOp = o.mode === "takeover" || takenOverSomewhere ? "primary-takeover" : "primary-suspend";
  const prim = await settle(g.primaries, (id) =>
    call<{ state: string; volumes: { volume: string; unacknowledgedWrites: number; unacknowledgedBytes: number }[] }>(topo, id, {
      op: primaryOp,
      group,
      generation,
      reason: o.reason,
      by: o.by,
    }),
  );
  const primaries = [...prim].map(([id, a]) => (a.ok ? { subsystem: id, reached: true, state: a.value.state } : { subsystem: id, reached: false, error: a.error }));
  const waitingFor = [...down.map(([id]) => id), ...failedFence.map(([id]) => id)];
  if (waitingFor.length > 0) {
    if (!o.partial) {
      throw new ProcedureError("TM_FENCE", `${o.mode} ${group}: fencing failed on ${failedFence.map(([id, a]) => `#${id} (${a.error})`).join(", ")}; run it again`);
    }
    return { group, mode: o.mode, generation, ts: "0", lossWindowMs: 0, complete: false, waitingFor, elapsedMs: plane.runtime.nowMs() - started, secondaries: [], primaries };
  }

  // 602
  const reports = [...fenced].map(([id, a]) => [id, (a as { value: TimesReport }).value] as const);
  const computed = synchronizedTime(new Map(reports.map(([id, r]) => [id, new Map(Object.entries(r.first).map(([k, t]) => [Number(k), BigInt(t)]))])));
  // During a resync the group goes to Ts only once the barrier is passed, else
  // to T_old; a secondary already resting at a synchronized time fixes the cut.
  const ts = cutOf(o.mode, group, computed, reports.map(([, r]) => r));
  o.logger.warn({ group, generation, ts: ts.toString(), computedTs: computed.toString() }, "after-failure procedure: synchronized time");

  // 603-606
  const applied = await settle(
    g.secondaries,
    (id) =>
      call<TimesReport & { applied: number; appliedNow: number; dropped: number; droppedBytes: number; bitmapBlocks: number }>(
        topo,
        id,
        { op: "apply-ts", group, generation, ts: ts.toString() },
        APPLY_TIMEOUT_MS,
      ),
  );
  const failedApply = [...applied].filter(([, a]) => !a.ok) as [number, { ok: false; error: string }][];
  if (failedApply.length > 0) {
    throw new ProcedureError("TM_APPLY", `${o.mode} ${group}: applying Ts failed on ${failedApply.map(([id, a]) => `#${id} (${a.error})`).join(", ")}; run it again`);
  }
  // 607-608
  if (o.mode === "takeover") {
    o.beforeTakeover?.(ts);
    const taken = await settle(g.secondaries, (id) => call(topo, id, { op: "takeover", group, generation }));
    const failed = [...taken].filter(([, a]) => !a.ok) as [number, { ok: false; error: string }][];
    if (failed.length > 0) throw new ProcedureError("TM_TAKEOVER", `takeover ${group}: ${failed.map(([id, a]) => `#${id} (${a.error})`).join(", ")}; run it again`);
  }
  const report: ProcedureReport = {
    group,
    mode: o.mode,
    generation,
    ts: ts.toString(),
    lossWindowMs: Number(now() - ts) / 1e6,
    complete: true,
    waitingFor: [],
    elapsedMs: plane.runtime.nowMs() - started,
    secondaries: [...applied].map(([id, a]) => {
      const r = (a as { value: TimesReport & { applied: number; appliedNow: number; dropped: number; droppedBytes: number; bitmapBlocks: number } }).value;
      return {
        subsystem: id,
        first: r.first,
        applied: r.applied,
        appliedNow: r.appliedNow,
        dropped: r.dropped,
        droppedBytes: r.droppedBytes,
        bitmapBlocks: r.bitmapBlocks,
        volumes: g.pairs
          .filter((p) => p.secondary.subsystemId === id)
          .map((p) => ({ volume: p.secondary.name, nbdUrl: nbdUrlOf(topo, p.secondary.name), ...(r.uncopiedVolumes?.includes(p.secondary.name) ? { notUsable: true } : {}) })),
      };
    }),
    primaries,
  };
  o.logger.warn({ group, mode: o.mode, generation, ts: report.ts, elapsedMs: report.elapsedMs }, "after-failure procedure complete");
  return report;
}

// One procedure at a time per group (issue 17): the RCM takes the group's
// lease on every subsystem of the group before a procedure, renews it while
// the procedure runs, sends its token with every step, and releases it at the
// end. The rules a subsystem applies are in appliance/subsystem/lease-rule.ts;
// docs/takeover.md, "One procedure at a time", has the whole story.
import type { Logger } from "pino";
import type { LoadedTopology } from "../../config/load.ts";
import { controlPlaneOf } from "../cli/control-client.ts";
import { withControlPlane, type ControlPlane } from "../cli/control-plane.ts";
import type { LeaseRequest } from "../subsystem/lease-rule.ts";
import { ProcedureError } from "./procedure.ts";

/** Who takes leases: one RCM process. */
export interface LeaseHolder {
  /** For the admin who is refused: "rcm 127.0.0.1:7400 pid 4121". */
  holder: string;
  /** The RCM's control address; a later process there supersedes this one's leases. */
  holderAddress: string;
  /** Orders the processes on one address (the process's start, in ms). */
  incarnation: number;
  ttlMs: number;
}

const CALL_MS = 5_000;
let tokens = 0;
/** A subsystem refuses lease fields longer than this (procedure-lease.ts). */
const FIELD_MAX = 200;
/** Answers that mean "not here now": the lease is taken where the steps get through (lease-rule.ts, admitStep). */
const AWAY = new Set(["TM_UNREACHABLE", "TM_CONTROL_TIMEOUT", "TM_CONTROL_SILENT", "TM_CONTROL_CLOSED"]);

/** A description cut to what a subsystem takes: an automatic suspension's reason lists every failed link. */
function clip(text: string): string {
  return text.length <= FIELD_MAX ? text : `${text.slice(0, FIELD_MAX - 3)}...`;
}

function codeOf(err: unknown): string | undefined {
  return (err as { code?: string }).code;
}

/**
 * Runs `f` holding `group`'s lease. `f` gets a topology whose control plane
 * carries the lease with every request about the group. Refused with
 * TM_LEASE_HELD, naming the holder, when another live holder has it on any
 * subsystem that answers; a subsystem that does not answer is skipped (a
 * takeover runs with the primaries down), and a step there takes the lease
 * when it gets through (lease-rule.ts, admitStep).
 */
export async function withGroupLease<T>(
  topo: LoadedTopology,
  group: string,
  procedure: string,
  who: LeaseHolder,
  f: (leased: LoadedTopology) => Promise<T>,
  logger?: Logger,
): Promise<T> {
  const g = topo.groups.get(group);
  // An unknown group: the procedure itself refuses it with TM_NO_GROUP.
  if (!g) return f(topo);
  const base = controlPlaneOf(topo);
  const ids = [...new Set([...g.primaries, ...g.secondaries])].sort((a, b) => a - b);
  const req: LeaseRequest = {
    holder: clip(who.holder),
    holderAddress: clip(who.holderAddress),
    incarnation: who.incarnation,
    procedure: clip(procedure),
    token: clip(`${who.holderAddress}/${who.incarnation}/${++tokens}`),
    ttlMs: who.ttlMs,
  };

  /** Takes or renews the lease on every subsystem that answers; the refusals, by subsystem. */
  const acquire = async (): Promise<{ granted: number[]; refused: Map<number, Error>; failed: Map<number, Error> }> => {
    const granted: number[] = [];
    const refused = new Map<number, Error>();
    /** Answers that are neither a grant, a holder's refusal nor an absence: the procedure must not run on them. */
    const failed = new Map<number, Error>();
    await Promise.all(
      ids.map(async (id) => {
        try {
          const r = await base.call<{ broke: string | null }>(id, { op: "lease-acquire", group, lease: req }, CALL_MS);
          granted.push(id);
          if (r.broke) logger?.warn({ group, subsystem: id, broke: r.broke }, "took over the lease of a procedure that is gone");
        } catch (err) {
          const code = codeOf(err);
          if (code === "TM_LEASE_HELD") refused.set(id, err as Error);
          // Away, or a subsystem that predates leases (an unknown op): its steps are not guarded.
          else if ((code !== undefined && AWAY.has(code)) || code === "TM_CONTROL_OP") {
            logger?.debug({ group, subsystem: id, err: (err as Error).message }, "lease not taken on a subsystem that did not answer");
          } else failed.set(id, err as Error);
        }
      }),
    );
    return { granted, refused, failed };
  };
  const release = (on: number[]) =>
    Promise.allSettled(on.map((id) => base.call(id, { op: "lease-release", group, token: req.token }, CALL_MS))).then(() => undefined);

  const first = await acquire();
  if (first.refused.size > 0 || first.failed.size > 0) {
    await release(first.granted);
    if (first.refused.size > 0) {
      const [id, err] = [...first.refused][0];
      throw new ProcedureError("TM_LEASE_HELD", `${procedure} ${group}: subsystem #${id} refused the group's lease: ${err.message}`, { group, subsystem: id });
    }
    const [id, err] = [...first.failed][0];
    throw new ProcedureError("TM_LEASE", `${procedure} ${group}: subsystem #${id} did not grant the group's lease: ${err.message}; nothing was changed`, { group, subsystem: id });
  }

  // Renewed at a third of its life: a renewal may be late by one slow call and still land in time.
  let lost: string | null = null;
  const renew = base.runtime.setInterval(() => {
    void acquire().then(({ refused }) => {
      if (refused.size === 0 || lost !== null) return;
      const [id, err] = [...refused][0];
      lost = `subsystem #${id}: ${err.message}`;
      logger?.error({ group, procedure, lost }, "the procedure's lease was taken by another holder; its remaining steps will be refused");
    });
  }, Math.max(1, Math.floor(who.ttlMs / 3)));

  const leased: ControlPlane = {
    ...base,
    call: <R>(id: number, body: unknown, timeoutMs: number): Promise<R> => {
      if (lost !== null) return Promise.reject(new ProcedureError("TM_LEASE_LOST", `${procedure} ${group}: the lease was lost (${lost}); stopping here`, { group }));
      const b = body as { group?: unknown } | null;
      return base.call<R>(id, b !== null && typeof b === "object" && b.group === group ? { ...b, lease: req } : body, timeoutMs);
    },
  };
  try {
    return await f(withControlPlane(topo, leased));
  } finally {
    base.runtime.clearInterval(renew);
    await release(ids);
  }
}

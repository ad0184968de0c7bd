// The lease table of one subsystem (migration 8): the RCM's procedure lease
// per group, applied by the rules of lease-rule.ts. A lease is durable before
// it is granted, so a restarted subsystem still refuses the steps of a holder
// that lost it.
import type { Db } from "../state/database.ts";
import { durableBarrier } from "../state/database.ts";
import { tmError } from "../errors/codes.ts";
import { acquireLease, admitStep, describeLease, type LeaseRequest, type LeaseRow } from "./lease-rule.ts";

const MAX_TTL_MS = 10 * 60_000;

/** A lease as a control request carries it: every field checked, or a clear refusal. */
export function leaseRequestOf(v: unknown, op: string): LeaseRequest | null {
  if (v === undefined || v === null) return null;
  const r = v as Partial<Record<keyof LeaseRequest, unknown>>;
  const bad = (field: string) => tmError("TM_BAD_REQUEST", `${op}: lease.${field} is missing or malformed`, { op, field: `lease.${field}` });
  const text = (x: unknown, field: string) => {
    if (typeof x !== "string" || x.length === 0 || x.length > 200) throw bad(field);
    return x;
  };
  if (typeof v !== "object") throw bad("(object)");
  const ttlMs = r.ttlMs;
  if (typeof ttlMs !== "number" || !Number.isSafeInteger(ttlMs) || ttlMs < 1 || ttlMs > MAX_TTL_MS) throw bad("ttlMs");
  if (typeof r.incarnation !== "number" || !Number.isSafeInteger(r.incarnation) || r.incarnation < 0) throw bad("incarnation");
  return {
    holder: text(r.holder, "holder"),
    holderAddress: text(r.holderAddress, "holderAddress"),
    incarnation: r.incarnation,
    procedure: text(r.procedure, "procedure"),
    token: text(r.token, "token"),
    ttlMs,
  };
}

export class ProcedureLeases {
  private readonly get;
  private readonly put;
  private readonly del;
  private readonly all;

  constructor(
    private readonly db: Db,
    private readonly subsystem: number,
    private readonly nowMs: () => number,
  ) {
    this.get = db.prepare(
      `SELECT holder, holder_address AS holderAddress, incarnation, procedure, token, acquired_ms AS acquiredMs, expires_ms AS expiresMs FROM lease WHERE grp = ?`,
    );
    this.put = db.prepare(
      `INSERT OR REPLACE INTO lease (grp, holder, holder_address, incarnation, procedure, token, acquired_ms, expires_ms)
       VALUES (@grp, @holder, @holderAddress, @incarnation, @procedure, @token, @acquiredMs, @expiresMs)`,
    );
    this.del = db.prepare("DELETE FROM lease WHERE grp = ? AND token = ?");
    this.all = db.prepare(
      `SELECT grp, holder, holder_address AS holderAddress, incarnation, procedure, token, acquired_ms AS acquiredMs, expires_ms AS expiresMs FROM lease`,
    );
  }

  private row(group: string): LeaseRow | null {
    return (this.get.get(group) as LeaseRow | undefined) ?? null;
  }

  private store(group: string, row: LeaseRow): void {
    this.put.run({ grp: group, ...row });
    // Granted only once durable: a power cut must not hand the lease to a second holder while the first goes on.
    durableBarrier(this.db);
  }

  /** `lease-acquire`: take or renew the lease, or refuse naming its holder. */
  acquire(group: string, req: LeaseRequest): { subsystem: number; group: string; expiresMs: number; broke: string | null } {
    const now = this.nowMs();
    const d = acquireLease(this.row(group), req, now);
    if (!d.grant) {
      throw tmError("TM_LEASE_HELD", `group '${group}' on subsystem #${this.subsystem} is busy: ${describeLease(d.held, now)}`, {
        group,
        subsystem: this.subsystem,
        holder: d.held.holder,
        procedure: d.held.procedure,
        expiresInMs: d.expiresInMs,
      });
    }
    this.store(group, d.row);
    return { subsystem: this.subsystem, group, expiresMs: d.row.expiresMs, broke: d.broke ? describeLease(d.broke, now) : null };
  }

  /** `lease-release`: the holder's procedure ended. Another token's lease is left alone. */
  release(group: string, token: string): { subsystem: number; group: string; released: boolean } {
    return { subsystem: this.subsystem, group, released: this.del.run(group, token).changes > 0 };
  }

  /** Before a procedure step: admit it, or refuse it naming the lease's holder. */
  admit(group: string, req: LeaseRequest | null, op: string): void {
    const now = this.nowMs();
    const d = admitStep(this.row(group), req, now);
    if (d.admit) {
      if (d.row) this.store(group, d.row);
      return;
    }
    const context = { group, subsystem: this.subsystem, op, holder: d.held.holder, procedure: d.held.procedure };
    if (d.code === "TM_LEASE_HELD") {
      throw tmError("TM_LEASE_HELD", `${op} on group '${group}' refused by subsystem #${this.subsystem}: the group is busy with ${describeLease(d.held, now)}`, context);
    }
    throw tmError("TM_LEASE_LOST", `${op} on group '${group}' refused by subsystem #${this.subsystem}: this procedure's lease was lost; the group is now held for ${describeLease(d.held, now)}`, context);
  }

  /** Live leases by group, for status. */
  status(ownGroup: (g: string) => boolean): Record<string, { holder: string; procedure: string; acquiredMs: number; expiresInMs: number }> {
    const now = this.nowMs();
    const out: Record<string, { holder: string; procedure: string; acquiredMs: number; expiresInMs: number }> = {};
    for (const r of this.all.all() as (LeaseRow & { grp: string })[]) {
      if (r.expiresMs > now && ownGroup(r.grp)) out[r.grp] = { holder: r.holder, procedure: r.procedure, acquiredMs: r.acquiredMs, expiresInMs: r.expiresMs - now };
    }
    return out;
  }
}

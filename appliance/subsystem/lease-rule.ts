// Who may run a procedure step on a group (issue 17, "one procedure at a
// time"): the rule a subsystem applies to its durable lease row. Pure, so
// every case is tested without a subsystem (test/unit/lease-rule.test.ts).
//
// A lease is held by a token. The RCM takes it on every subsystem of the
// group before a procedure, renews it while the procedure runs, and sends the
// token with every step. A step whose token is not the lease's is refused: a
// second RCM, or an RCM that lost its lease while it stalled, cannot
// interleave its steps with the holder's. A crashed holder's lease expires;
// the next holder's steps are reruns of idempotent procedures, and the old
// holder's late steps are refused, because the token has changed.

export interface LeaseRequest {
  /** Who holds it, for the refusal an admin reads: "rcm 127.0.0.1:7400 pid 4121". */
  holder: string;
  /** The RCM's control address: one process at a time can hold it. */
  holderAddress: string;
  /** Orders the processes that held one address (an RCM's start time). */
  incarnation: number;
  procedure: string;
  token: string;
  ttlMs: number;
}

export interface LeaseRow extends Omit<LeaseRequest, "ttlMs"> {
  acquiredMs: number;
  expiresMs: number;
}

export type LeaseDecision =
  | { grant: true; row: LeaseRow; broke: LeaseRow | null }
  | { grant: false; code: "TM_LEASE_HELD"; held: LeaseRow; expiresInMs: number };

/**
 * Whether `req` supersedes a live lease it does not hold: only a later
 * process on the holder's own address does. An RCM binds its control port,
 * so a new RCM there means the old one is gone, and an admin's rerun after a
 * crash need not wait for the lease to expire. The same process with another
 * token ended a procedure whose release did not reach this subsystem.
 */
function supersedes(row: LeaseRow, req: LeaseRequest): boolean {
  return row.holderAddress === req.holderAddress && req.incarnation >= row.incarnation;
}

function rowOf(req: LeaseRequest, acquiredMs: number, nowMs: number): LeaseRow {
  const { ttlMs, ...rest } = req;
  return { ...rest, acquiredMs, expiresMs: nowMs + ttlMs };
}

/**
 * `lease-acquire` (and its renewal): granted when nobody holds the lease, the
 * holder's lease expired, the token is the requester's own, or the requester
 * supersedes the holder.
 */
export function acquireLease(row: LeaseRow | null, req: LeaseRequest, nowMs: number): LeaseDecision {
  if (row === null) return { grant: true, row: rowOf(req, nowMs, nowMs), broke: null };
  if (row.token === req.token) return { grant: true, row: rowOf(req, row.acquiredMs, nowMs), broke: null };
  if (row.expiresMs <= nowMs || supersedes(row, req)) return { grant: true, row: rowOf(req, nowMs, nowMs), broke: row };
  return { grant: false, code: "TM_LEASE_HELD", held: row, expiresInMs: row.expiresMs - nowMs };
}

export type StepDecision =
  | { admit: true; row: LeaseRow | null }
  | { admit: false; code: "TM_LEASE_HELD"; held: LeaseRow; expiresInMs: number }
  | { admit: false; code: "TM_LEASE_LOST"; held: LeaseRow };

/**
 * A procedure step (fence, apply-ts, resync-begin, turn, ...). A step with
 * the lease's token is admitted, and so is a step without a lease while no
 * live lease is held (an admin's tool talking to one subsystem). A step whose
 * lease is not the live one is refused, unless it supersedes it: its lease
 * was taken by another holder after it expired, or by a later RCM. On a
 * subsystem that was unreachable when the lease was taken (a primary back
 * from an outage), a step finds no row, or a dead one, and takes the lease
 * there (`row`), so the holder's procedure reaches it.
 */
export function admitStep(row: LeaseRow | null, req: LeaseRequest | null, nowMs: number): StepDecision {
  const live = row !== null && row.expiresMs > nowMs;
  if (req === null) {
    if (live) return { admit: false, code: "TM_LEASE_HELD", held: row, expiresInMs: row.expiresMs - nowMs };
    return { admit: true, row: null };
  }
  if (row !== null && row.token === req.token) return { admit: true, row: null };
  if (live && !supersedes(row, req)) return { admit: false, code: "TM_LEASE_LOST", held: row };
  return { admit: true, row: rowOf(req, nowMs, nowMs) };
}

/** A lease's holder as an admin reads it in a refusal or in status. */
export function describeLease(row: LeaseRow, nowMs: number): string {
  const left = row.expiresMs - nowMs;
  return `${row.procedure} by ${row.holder} (lease ${left > 0 ? `expires in ${Math.ceil(left / 1000)} s unless renewed` : "expired"})`;
}

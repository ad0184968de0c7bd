// The procedure lease's rules (appliance/subsystem/lease-rule.ts), case by case.
import { describe, expect, it } from "vitest";
import { acquireLease, admitStep, describeLease, type LeaseRequest, type LeaseRow } from "../../appliance/subsystem/lease-rule.ts";

const req = (over: Partial<LeaseRequest> = {}): LeaseRequest => ({
  holder: "rcm 10.0.0.1:7400 pid 10",
  holderAddress: "10.0.0.1:7400",
  incarnation: 1000,
  procedure: "resync",
  token: "a/1000/1",
  ttlMs: 30_000,
  ...over,
});
const rowOf = (r: LeaseRequest, acquiredMs: number): LeaseRow => {
  const { ttlMs, ...rest } = r;
  return { ...rest, acquiredMs, expiresMs: acquiredMs + ttlMs };
};
const other = req({ holder: "rcm 10.0.0.2:7400 pid 20", holderAddress: "10.0.0.2:7400", incarnation: 5, token: "b/5/1", procedure: "swap" });

describe("lease rule: acquire", () => {
  it("grants a free lease, for ttl from now", () => {
    const d = acquireLease(null, req(), 100);
    expect(d).toMatchObject({ grant: true, broke: null, row: { token: "a/1000/1", acquiredMs: 100, expiresMs: 30_100 } });
  });

  it("renews its own token, keeping when it was first taken", () => {
    const d = acquireLease(rowOf(req(), 100), req(), 20_000);
    expect(d).toMatchObject({ grant: true, broke: null, row: { acquiredMs: 100, expiresMs: 50_000 } });
  });

  it("refuses a live lease of another holder, naming it", () => {
    const d = acquireLease(rowOf(other, 0), req(), 10_000);
    expect(d).toMatchObject({ grant: false, code: "TM_LEASE_HELD", held: { holder: other.holder, procedure: "swap" }, expiresInMs: 20_000 });
    if (!d.grant) expect(describeLease(d.held, 10_000)).toBe("swap by rcm 10.0.0.2:7400 pid 20 (lease expires in 20 s unless renewed)");
  });

  it("takes an expired lease of another holder, and says whose it broke", () => {
    const d = acquireLease(rowOf(other, 0), req(), 30_000);
    expect(d).toMatchObject({ grant: true, row: { token: "a/1000/1", acquiredMs: 30_000 }, broke: { token: "b/5/1" } });
  });

  it("a later process on the holder's address supersedes a live lease; an earlier one does not", () => {
    const old = rowOf(req(), 0);
    expect(acquireLease(old, req({ incarnation: 2000, token: "a/2000/1" }), 1)).toMatchObject({ grant: true, broke: { token: "a/1000/1" } });
    // The same process with a new token: its last release did not land.
    expect(acquireLease(old, req({ token: "a/1000/2" }), 1)).toMatchObject({ grant: true });
    expect(acquireLease(old, req({ incarnation: 999, token: "a/999/7" }), 1)).toMatchObject({ grant: false, code: "TM_LEASE_HELD" });
  });
});

describe("lease rule: steps", () => {
  it("admits a step without a lease only while no live lease is held", () => {
    expect(admitStep(null, null, 0)).toEqual({ admit: true, row: null });
    expect(admitStep(rowOf(other, 0), null, 29_999)).toMatchObject({ admit: false, code: "TM_LEASE_HELD" });
    expect(admitStep(rowOf(other, 0), null, 30_000)).toEqual({ admit: true, row: null });
  });

  it("admits the holder's steps, even past expiry while nobody took the lease", () => {
    expect(admitStep(rowOf(req(), 0), req(), 10)).toEqual({ admit: true, row: null });
    expect(admitStep(rowOf(req(), 0), req(), 90_000)).toEqual({ admit: true, row: null });
  });

  it("refuses the steps of a holder whose lease was taken (TM_LEASE_LOST), naming the new holder", () => {
    const d = admitStep(rowOf(other, 100), req(), 200);
    expect(d).toMatchObject({ admit: false, code: "TM_LEASE_LOST", held: { holder: other.holder } });
    // A dead RCM's late step, after its successor on the same address took the lease.
    const successor = req({ incarnation: 2000, token: "a/2000/1" });
    expect(admitStep(rowOf(successor, 100), req(), 200)).toMatchObject({ admit: false, code: "TM_LEASE_LOST" });
  });

  it("a step takes the lease where it was not taken (a subsystem away at acquire), or where it lapsed", () => {
    expect(admitStep(null, req(), 50)).toMatchObject({ admit: true, row: { token: "a/1000/1", acquiredMs: 50, expiresMs: 30_050 } });
    expect(admitStep(rowOf(other, 0), req(), 30_000)).toMatchObject({ admit: true, row: { token: "a/1000/1" } });
    // A successor's step where its predecessor's lease is still live there.
    expect(admitStep(rowOf(req(), 0), req({ incarnation: 2000, token: "a/2000/1" }), 10)).toMatchObject({ admit: true, row: { token: "a/2000/1" } });
  });
});

// The primary's pure modules (pending RCRs and the SYNC time, the range lock,
// the stamp clock, the link state machine) and the RCM's synchronized time.
// Randomized cases are seeded (mulberry32) and print their seed on failure.
import { describe, expect, it } from "vitest";
import { PendingRcrs, syncTime } from "../../appliance/primary/pending.ts";
import { RangeLock } from "../../appliance/primary/range-lock.ts";
import { StampClock } from "../../appliance/primary/stamp-clock.ts";
import { LINK_TRANSITIONS, linkTransition, type LinkEvent, type LinkState } from "../../appliance/primary/link-state.ts";
import { synchronizedTime } from "../../appliance/rcm/synchronized-time.ts";
import { prng } from "../../appliance/drill/prng.ts";
import { refusalReason, refusedGroups, staleRefusal } from "../../appliance/primary/refusal.ts";
import { WIRE_ERROR, type ReceivedWireErrorCode } from "../../appliance/replication/frames.ts";

const int = (rnd: () => number, n: number) => Math.floor(rnd() * n);
const SEEDS = [1, 2, 3, 7, 42, 1234, 99991, 20240601];

/** Lets granted promises' callbacks run. */
const settle = () => new Promise<void>((r) => setImmediate(r));

describe("pending RCRs", () => {
  it("pending: oldest is the smallest head over every link of a group (2 groups, 3 links)", () => {
    const p = new PendingRcrs();
    p.add("C1", 3, 1, 100n);
    p.add("C1", 4, 2, 110n);
    p.add("C2", 3, 3, 90n);
    p.add("C1", 3, 4, 120n);
    p.add("C1", 5, 5, 130n);
    expect(p.size).toBe(5);
    expect(p.sizeOf("C1")).toBe(4);
    expect(p.sizeOf("C2")).toBe(1);
    expect(p.sizeOf("C9")).toBe(0);
    expect(p.oldest("C1")).toBe(100n);
    expect(p.oldest("C2")).toBe(90n);
    expect(p.oldest("C9")).toBe(null);
  });

  it("pending: ackUpTo pops a link's entries up to seq in every group, and only that link's", () => {
    const p = new PendingRcrs();
    p.add("C1", 3, 1, 100n);
    p.add("C2", 3, 2, 105n);
    p.add("C1", 4, 3, 110n);
    p.add("C1", 3, 4, 120n);
    p.add("C2", 3, 5, 125n);
    expect(p.ackUpTo(3, 4)).toBe(3); // seqs 1, 2, 4
    expect(p.size).toBe(2);
    expect(p.oldest("C1")).toBe(110n);
    expect(p.oldest("C2")).toBe(125n);
    expect(p.ackUpTo(3, 4)).toBe(0); // a repeated ack changes nothing
    expect(p.ackUpTo(9, 100)).toBe(0); // an unknown link changes nothing
    expect(p.ackUpTo(4, 3)).toBe(1);
    expect(p.oldest("C1")).toBe(null);
    expect(p.ackUpTo(3, 1000)).toBe(1);
    expect(p.size).toBe(0);
    expect(p.oldest("C2")).toBe(null);
  });

  it("pending: cancel removes one entry anywhere in a link's queue (head, middle, unknown)", () => {
    const p = new PendingRcrs();
    for (let s = 1; s <= 4; s++) p.add("C1", 3, s, BigInt(100 + s));
    p.cancel("C1", 3, 3);
    expect(p.size).toBe(3);
    p.cancel("C1", 3, 1);
    expect(p.oldest("C1")).toBe(102n);
    p.cancel("C1", 3, 99);
    p.cancel("C1", 9, 2);
    p.cancel("C9", 3, 2);
    expect(p.size).toBe(2);
    expect(p.ackUpTo(3, 4)).toBe(2);
    expect(p.size).toBe(0);
  });

  it("pending: an RCR out of seq or ts order on a link is refused", () => {
    const p = new PendingRcrs();
    p.add("C1", 3, 5, 100n);
    expect(() => p.add("C1", 3, 5, 101n)).toThrow(/out of order/);
    expect(() => p.add("C1", 3, 6, 100n)).toThrow(/out of order/);
    // Another link has its own order.
    expect(() => p.add("C1", 4, 1, 50n)).not.toThrow();
  });

  it("pending: oldest stays right across queue compaction (5000 entries, random acks)", () => {
    const rnd = prng(7);
    const p = new PendingRcrs();
    const model: { link: number; seq: number; ts: bigint }[] = [];
    let seq = 0;
    let ts = 1000n;
    for (let round = 0; round < 50; round++) {
      for (let i = 0; i < 100; i++) {
        const link = 3 + int(rnd, 3);
        ts += BigInt(1 + int(rnd, 5));
        p.add("C1", link, ++seq, ts);
        model.push({ link, seq, ts });
      }
      const link = 3 + int(rnd, 3);
      const upTo = int(rnd, seq + 1);
      const before = model.length;
      for (let i = model.length - 1; i >= 0; i--) if (model[i].link === link && model[i].seq <= upTo) model.splice(i, 1);
      expect(p.ackUpTo(link, upTo)).toBe(before - model.length);
      expect(p.size).toBe(model.length);
      const min = model.reduce<bigint | null>((m, e) => (m === null || e.ts < m ? e.ts : m), null);
      expect(p.oldest("C1")).toBe(min);
    }
  });

  it("pending: syncTime is one below the oldest pending stamp, or a fresh stamp when nothing is pending", () => {
    let stamps = 0;
    const fresh = () => {
      stamps++;
      return 777n;
    };
    expect(syncTime(500n, fresh)).toBe(499n);
    expect(stamps).toBe(0);
    expect(syncTime(null, fresh)).toBe(777n);
    expect(stamps).toBe(1);
  });

  it("pending: SYNC never covers a pending RCR and covers every acknowledged one (random, seeds)", () => {
    for (const seed of SEEDS) {
      const rnd = prng(seed);
      const p = new PendingRcrs();
      const clock = new StampClock(() => 0n, 0n);
      const pending: { link: number; seq: number; ts: bigint }[] = [];
      const acked: bigint[] = [];
      let seq = 0;
      let lastT = -1n;
      for (let step = 0; step < 400; step++) {
        const r = rnd();
        if (r < 0.5) {
          const link = 3 + int(rnd, 3);
          const ts = clock.stamp();
          p.add("C1", link, ++seq, ts);
          pending.push({ link, seq, ts });
        } else if (r < 0.8) {
          const link = 3 + int(rnd, 3);
          const upTo = int(rnd, seq + 1);
          for (let i = pending.length - 1; i >= 0; i--) {
            if (pending[i].link === link && pending[i].seq <= upTo) acked.push(pending.splice(i, 1)[0].ts);
          }
          p.ackUpTo(link, upTo);
        } else {
          const t = syncTime(p.oldest("C1"), () => clock.stamp());
          for (const e of pending) expect(e.ts, `seed ${seed}`).toBeGreaterThan(t);
          if (pending.length === 0) for (const a of acked) expect(a, `seed ${seed}`).toBeLessThanOrEqual(t);
          expect(t >= lastT, `seed ${seed}: SYNC went back from ${lastT} to ${t}`).toBe(true);
          lastT = t;
        }
      }
    }
  });
});

describe("range lock", () => {
  it("range lock: disjoint ranges are granted at once and run concurrently (3 ranges)", async () => {
    const lock = new RangeLock();
    const a = await lock.acquire(0, 4096);
    const b = await lock.acquire(4096, 4096);
    const c = await lock.acquire(1 << 20, 512);
    expect(lock.heldCount).toBe(3);
    a();
    b();
    c();
    expect(lock.heldCount).toBe(0);
  });

  it("range lock: overlapping ranges are served in FIFO order (4 writers on one block)", async () => {
    const lock = new RangeLock();
    const order: number[] = [];
    const releases: (() => void)[] = [];
    const all = [0, 1, 2, 3].map((i) =>
      lock.acquire(512 * i, 4096).then((release) => {
        order.push(i);
        releases.push(release);
      }),
    );
    await settle();
    expect(order).toEqual([0]);
    for (let i = 1; i < 4; i++) {
      releases[i - 1]();
      await settle();
      expect(order).toEqual([0, 1, 2, 3].slice(0, i + 1));
    }
    releases[3]();
    await Promise.all(all);
    expect(lock.heldCount).toBe(0);
  });

  it("range lock: a later request never overtakes an earlier overlapping waiter, even if it is free itself", async () => {
    const lock = new RangeLock();
    const a = await lock.acquire(0, 4096); // held
    const got: string[] = [];
    let releaseB = () => {};
    void lock.acquire(0, 1 << 20).then((r) => {
      got.push("B");
      releaseB = r;
    }); // waits for A
    void lock.acquire(65536, 4096).then((r) => {
      got.push("C");
      r();
    }); // free of A, but overlaps B, which came first
    void lock.acquire(2 << 20, 4096).then((r) => {
      got.push("D");
      r();
    }); // overlaps nothing: runs at once
    await settle();
    expect(got).toEqual(["D"]);
    a();
    await settle();
    expect(got).toEqual(["D", "B"]);
    releaseB();
    await settle();
    expect(got).toEqual(["D", "B", "C"]);
  });

  it("range lock: a release twice is harmless", async () => {
    const lock = new RangeLock();
    const a = await lock.acquire(0, 4096);
    const b = lock.acquire(0, 4096);
    a();
    a();
    const rb = await b;
    expect(lock.heldCount).toBe(1);
    rb();
    expect(lock.heldCount).toBe(0);
  });

  it("range lock: random requests keep exclusion, FIFO among overlaps and eager grants (seeds)", async () => {
    for (const seed of SEEDS) {
      const rnd = prng(seed);
      const lock = new RangeLock();
      interface Req {
        id: number;
        start: number;
        end: number;
        granted: boolean;
        released: boolean;
        release?: () => void;
      }
      const reqs: Req[] = [];
      const overlap = (a: Req, b: Req) => a.start < b.end && b.start < a.end;
      /** The definition: a request may run iff no running request and no earlier waiting request overlaps it. */
      const expectedGranted = (): Set<number> => {
        const running = reqs.filter((r) => r.granted && !r.released);
        const waiting: Req[] = [];
        const grant = new Set<number>(reqs.filter((r) => r.granted).map((r) => r.id));
        for (const r of reqs) {
          if (r.granted) continue;
          if (!running.some((h) => overlap(h, r)) && !waiting.some((w) => overlap(w, r))) {
            running.push(r);
            grant.add(r.id);
          } else waiting.push(r);
        }
        return grant;
      };
      for (let step = 0; step < 300; step++) {
        const live = reqs.filter((r) => r.granted && !r.released);
        if (live.length > 0 && rnd() < 0.45) {
          const r = live[int(rnd, live.length)];
          r.released = true;
          r.release!();
        } else {
          const start = int(rnd, 64) * 512;
          const r: Req = { id: reqs.length, start, end: start + (1 + int(rnd, 16)) * 512, granted: false, released: false };
          reqs.push(r);
          void lock.acquire(r.start, r.end - r.start).then((release) => {
            r.granted = true;
            r.release = release;
          });
        }
        const want = expectedGranted();
        await settle();
        const have = new Set(reqs.filter((r) => r.granted).map((r) => r.id));
        const holding = reqs.filter((r) => r.granted && !r.released);
        for (let i = 0; i < holding.length; i++) {
          for (let j = i + 1; j < holding.length; j++) {
            expect(overlap(holding[i], holding[j]), `seed ${seed} step ${step}: ${holding[i].id} and ${holding[j].id} overlap`).toBe(false);
          }
        }
        expect([...have].sort((a, b) => a - b), `seed ${seed} step ${step}`).toEqual([...want].sort((a, b) => a - b));
        expect(lock.heldCount).toBe(holding.length);
      }
      // Drain: release everything, including what is granted on the way; every request runs.
      for (let guard = 0; guard < 10_000; guard++) {
        const live = reqs.filter((r) => r.granted && !r.released);
        if (live.length === 0) break;
        for (const r of live) {
          r.released = true;
          r.release!();
        }
        await settle();
      }
      expect(reqs.every((r) => r.granted), `seed ${seed}: every request is granted in the end`).toBe(true);
      expect(lock.heldCount).toBe(0);
    }
  });
});

describe("stamp clock", () => {
  it("stamp clock: a clock that stands still still yields strictly increasing stamps (100 stamps)", () => {
    const c = new StampClock(() => 5000n, 0n);
    const s = Array.from({ length: 100 }, () => c.stamp());
    expect(s[0]).toBe(5000n);
    for (let i = 1; i < s.length; i++) expect(s[i]).toBe(s[i - 1] + 1n);
    expect(c.lastStamp).toBe(s[99]);
  });

  it("stamp clock: a clock that goes backwards never makes a stamp go back", () => {
    const readings = [1000n, 900n, 10n, 1001n, 5000n, 4999n];
    let i = 0;
    const c = new StampClock(() => readings[i++], 0n);
    expect(readings.map(() => c.stamp())).toEqual([1000n, 1001n, 1002n, 1003n, 5000n, 5001n]);
  });

  it("stamp clock: after a reboot (clock restarts at 0) stamps stay above the persisted floor", () => {
    const floor = 7_000_000_000n;
    let now = 0n;
    const c = new StampClock(() => now, floor);
    expect(c.lastStamp).toBe(floor);
    const first = c.stamp();
    expect(first).toBe(floor + 1n);
    now = 1_000n;
    expect(c.stamp()).toBe(floor + 2n);
    now = floor + 500n;
    expect(c.stamp()).toBe(floor + 500n); // the clock takes over once it passes the floor
  });

  it("stamp clock: now() reads the clock without consuming a stamp", () => {
    let now = 10n;
    const c = new StampClock(() => now, 0n);
    expect(c.stamp()).toBe(10n);
    now = 5n;
    expect(c.now()).toBe(5n);
    expect(c.lastStamp).toBe(10n);
    expect(c.stamp()).toBe(11n);
  });

  it("stamp clock: random readings (jumps back, stands still) give strictly increasing stamps >= the clock (seeds)", () => {
    for (const seed of SEEDS) {
      const rnd = prng(seed);
      let now = BigInt(int(rnd, 1000));
      const floor = BigInt(int(rnd, 2000));
      const c = new StampClock(() => now, floor);
      let prev = floor;
      for (let i = 0; i < 2000; i++) {
        const r = rnd();
        if (r < 0.3) now -= BigInt(int(rnd, 50));
        else if (r < 0.8) now += BigInt(int(rnd, 50));
        const s = c.stamp();
        expect(s > prev, `seed ${seed}: ${s} after ${prev}`).toBe(true);
        expect(s >= now).toBe(true);
        prev = s;
      }
    }
  });
});

describe("link state", () => {
  const STATES: LinkState[] = ["idle", "connecting", "up", "backoff", "closed"];
  const EVENTS: LinkEvent[] = ["start", "connected", "connect-failed", "lost", "retry", "stop"];
  const ALLOWED: [LinkState, LinkEvent, LinkState][] = [
    ["idle", "start", "connecting"],
    ["idle", "stop", "closed"],
    ["connecting", "connected", "up"],
    ["connecting", "connect-failed", "backoff"],
    ["connecting", "stop", "closed"],
    ["up", "lost", "backoff"],
    ["up", "stop", "closed"],
    ["backoff", "retry", "connecting"],
    ["backoff", "stop", "closed"],
  ];

  it("link state: the table has exactly the states of the type", () => {
    expect(Object.keys(LINK_TRANSITIONS).sort()).toEqual([...STATES].sort());
  });

  for (const [from, event, to] of ALLOWED) {
    it(`link state: ${from} --${event}--> ${to}`, () => {
      expect(linkTransition(from, event)).toBe(to);
    });
  }

  it("link state: every other (state, event) is refused with a message naming both (21 pairs)", () => {
    let refused = 0;
    for (const s of STATES) {
      for (const e of EVENTS) {
        if (ALLOWED.some(([f, ev]) => f === s && ev === e)) continue;
        expect(() => linkTransition(s, e)).toThrow(`link: event '${e}' is not allowed in state '${s}'`);
        refused++;
      }
    }
    expect(refused).toBe(STATES.length * EVENTS.length - ALLOWED.length);
  });

  it("link state: closed is terminal and stop reaches it from every other state", () => {
    expect(LINK_TRANSITIONS.closed).toEqual({});
    for (const s of STATES.filter((x) => x !== "closed")) expect(linkTransition(s, "stop")).toBe("closed");
  });
});

describe("synchronized time", () => {
  const T = (n: number) => BigInt(n);
  const times = (rows: Record<number, Record<number, number>>) =>
    new Map(Object.entries(rows).map(([s, first]) => [Number(s), new Map(Object.entries(first).map(([k, t]) => [Number(k), T(t)]))]));

  it("synchronized time: the seed's Fig. 7A gives Ts = T3 (max for #1 is T3, max for #2 is T5)", () => {
    // From the seed's text: among 111-1 #1, 111-2 #1 and 111-3 #1 the greatest
    // is T3 (on 102 #3, which Fig. 5A shows at 111 #1 = T3, 111 #2 = T5);
    // "T3, T5 are determined" per primary and T3 is the synchronized time;
    // 112-2 and 112-3 were below T2 (io-23 (T2) and io-31 (T2) still queued).
    // The text does not give #4's and #5's other values; T1 and T5 are chosen
    // to agree with it.
    const fig7a = times({
      3: { 1: 3, 2: 5 },
      4: { 1: 1, 2: 1 },
      5: { 1: 1, 2: 5 },
    });
    expect(synchronizedTime(fig7a)).toBe(T(3));
    // Before: 112 = min of 111 per secondary; #4 and #5 hold io-23 and io-31 (T2) back.
    const seconds = [...fig7a.values()].map((f) => [...f.values()].reduce((a, b) => (a < b ? a : b)));
    expect(seconds).toEqual([T(3), T(1), T(1)]);
    // After SYNC(Ts = T3), io-23 (T2) and io-31 (T2) are due; nothing above T3 is.
    expect([T(2), T(2)].every((ts) => ts <= T(3))).toBe(true);
  });

  it("synchronized time: one secondary alone gives the min of its 111s", () => {
    expect(synchronizedTime(times({ 3: { 1: 9, 2: 4, 7: 6 } }))).toBe(T(4));
  });

  it("synchronized time: no time parameters collected is an error", () => {
    expect(() => synchronizedTime(new Map())).toThrow(/no time parameters/);
    expect(() => synchronizedTime(new Map([[3, new Map()]]))).toThrow(/no time parameters/);
  });

  it("synchronized time: random cases equal the brute-force definition (seeds, 1-4 primaries, 1-5 secondaries)", () => {
    // Brute force: the greatest value T seen such that every primary has
    // announced at least T to some secondary.
    const brute = (m: Map<number, Map<number, bigint>>): bigint => {
      const primaries = new Set<number>();
      const values: bigint[] = [];
      for (const f of m.values()) {
        for (const [k, t] of f) {
          primaries.add(k);
          values.push(t);
        }
      }
      let best: bigint | null = null;
      for (const cand of values) {
        const ok = [...primaries].every((k) => [...m.values()].some((f) => (f.get(k) ?? -1n) >= cand));
        if (ok && (best === null || cand > best)) best = cand;
      }
      return best!;
    };
    for (const seed of SEEDS) {
      const rnd = prng(seed);
      for (let c = 0; c < 200; c++) {
        const np = 1 + int(rnd, 4);
        const ns = 1 + int(rnd, 5);
        const m = new Map<number, Map<number, bigint>>();
        for (let s = 0; s < ns; s++) {
          const f = new Map<number, bigint>();
          for (let k = 1; k <= np; k++) f.set(k, BigInt(int(rnd, 20)));
          m.set(100 + s, f);
        }
        expect(synchronizedTime(m), `seed ${seed} case ${c}`).toBe(brute(m));
        // Ts is never below any secondary's 112: no secondary ever rolls back.
        const ts = synchronizedTime(m);
        for (const f of m.values()) {
          const second = [...f.values()].reduce((a, b) => (a < b ? a : b));
          expect(second <= ts, `seed ${seed} case ${c}`).toBe(true);
        }
      }
    }
  });
});

describe("refusal scope", () => {
  const onLink = ["C1", "C2"];
  it("refusal: the frame's group field decides, the message is never read", () => {
    expect(refusedGroups({ code: WIRE_ERROR.generation, group: "C2", message: "group 'C1' is refused" }, onLink)).toEqual(["C2"]);
    expect(refusedGroups({ code: WIRE_ERROR.noGroup, group: "C9", message: "group 'C1'" }, onLink)).toEqual([]);
    expect(refusedGroups({ code: WIRE_ERROR.role, group: "", message: "group 'C1'" }, onLink)).toEqual(["C1", "C2"]);
    expect(refusedGroups({ code: WIRE_ERROR.role, group: "", message: "" }, [])).toEqual([]);
  });

  it("refusal: only frames sent at an older generation than the group's now make a refusal stale", () => {
    const r = (sentGeneration?: number) => ({ code: WIRE_ERROR.generation, group: "C1", message: "", sentGeneration });
    expect(staleRefusal(r(3), 4)).toBe(true);
    expect(staleRefusal(r(4), 4)).toBe(false);
    // Frames newer than the group (never sent here) or none at all: the refusal stands.
    expect(staleRefusal(r(5), 4)).toBe(false);
    expect(staleRefusal(r(undefined), 4)).toBe(false);
  });

  it("refusal: the reason names the code, known or not, and keeps the message", () => {
    expect(refusalReason(3, { code: WIRE_ERROR.notReplicating, group: "C1", message: "suspended" })).toBe("refused by secondary #3 (notReplicating (6)): suspended");
    expect(refusalReason(3, { code: 999 as ReceivedWireErrorCode, group: "C1", message: "?" })).toBe("refused by secondary #3 (unknown code 999): ?");
  });
});

// The NBD server's pure bounds: the server-wide buffer budget (FIFO grants,
// abort while waiting), the connection counts with their log-once rule, and
// the PSK file parser.
import { describe, expect, it } from "vitest";
import { BufferBudget } from "../../appliance/nbd/buffer-budget.ts";
import { ConnectionLimits } from "../../appliance/nbd/connection-limits.ts";
import { parsePskFile } from "../../appliance/nbd/psk-file.ts";

describe("nbd: buffer budget", () => {
  it("budget: grants up to the bound, then first come first served as bytes come back", async () => {
    const b = new BufferBudget(100);
    const live = new AbortController().signal;
    await b.take(60, "x", live);
    const order: string[] = [];
    const big = b.take(80, "a", live).then(() => order.push("big"));
    const small = b.take(10, "b", live).then(() => order.push("small"));
    await Promise.resolve();
    // The small one fits but waits behind the big one: no starvation.
    expect(order).toEqual([]);
    expect(b.usedBytes()).toBe(60);
    b.release(60, "x");
    await Promise.all([big, small]);
    expect(order).toEqual(["big", "small"]);
    expect(b.usedBytes()).toBe(90);
  });

  it("budget: a waiter whose connection closed gives up and lets those behind it in", async () => {
    const b = new BufferBudget(100);
    const live = new AbortController().signal;
    await b.take(50, "a", live);
    const gone = new AbortController();
    const waiting = b.take(90, "a", gone.signal);
    const behind = b.take(40, "a", live);
    gone.abort(new Error("closed"));
    await expect(waiting).rejects.toThrow("closed");
    await behind;
    expect(b.usedBytes()).toBe(90);
    expect(b.waiting()).toBe(0);
  });
});

describe("nbd: buffer budget per peer", () => {
  it("budget: a peer at its share waits without holding up another peer queued behind it", async () => {
    const b = new BufferBudget(100, 50);
    const live = new AbortController().signal;
    await b.take(40, "hostile", live);
    const order: string[] = [];
    const more = b.take(20, "hostile", live).then(() => order.push("hostile"));
    const other = b.take(30, "host", live).then(() => order.push("host"));
    await other;
    expect(order).toEqual(["host"]);
    expect(b.usedBytes("hostile")).toBe(40);
    expect(b.usedBytes("host")).toBe(30);
    b.release(40, "hostile");
    await more;
    expect(b.usedBytes()).toBe(50);
    expect(() => b.take(51, "x", live)).toThrow(/charge 51 outside 1\.\.50/);
  });
});

describe("nbd: connection limits", () => {
  it("limits: per peer, per export and in total; a bite is reported once until the count drops", () => {
    const l = new ConnectionLimits({ connectionsMax: 3, connectionsPerPeerMax: 2, connectionsPerExportMax: 1 });
    expect(l.admitPeer("10.0.0.1").ok).toBe(true);
    expect(l.admitPeer("10.0.0.1").ok).toBe(true);
    const a = l.admitPeer("10.0.0.1");
    expect(a).toMatchObject({ ok: false, logIt: true });
    expect(!a.ok && a.reason).toMatch(/10\.0\.0\.1 holds 2 connections \(nbdLimits.connectionsPerPeerMax 2\)/);
    expect(l.admitPeer("10.0.0.1")).toMatchObject({ ok: false, logIt: false });
    l.releasePeer("10.0.0.1");
    expect(l.admitPeer("10.0.0.1").ok).toBe(true);
    expect(l.admitPeer("10.0.0.1")).toMatchObject({ ok: false, logIt: true });
    expect(l.admitPeer("10.0.0.2").ok).toBe(true);
    expect(l.admitPeer("10.0.0.3")).toMatchObject({ ok: false, logIt: true });
    expect(l.reserveExport("disk").ok).toBe(true);
    expect(l.reserveExport("disk")).toMatchObject({ ok: false, logIt: true });
    expect(l.reserveExport("disk")).toMatchObject({ ok: false, logIt: false });
    expect(l.reserveExport("other").ok).toBe(true);
    l.releaseExport("disk");
    expect(l.reserveExport("disk").ok).toBe(true);
  });
});

describe("nbd: PSK file", () => {
  it("psk: username:hexkey lines as psktool writes them", () => {
    const r = parsePskFile("alice:0123456789abcdef0123456789abcdef\n\nbob:" + "ab".repeat(32) + "\r\n");
    expect(r.ok && [...r.keys.keys()]).toEqual(["alice", "bob"]);
    expect(r.ok && r.keys.get("alice")?.toString("hex")).toBe("0123456789abcdef0123456789abcdef");
  });

  it("psk: bad lines are refused with their line number", () => {
    const bad = (t: string) => {
      const r = parsePskFile(t);
      return r.ok ? "ok" : r.reason;
    };
    expect(bad("")).toMatch(/no username:hexkey/);
    expect(bad("alice\n")).toMatch(/line 1: expected username:hexkey/);
    expect(bad("a:" + "ab".repeat(16) + "\nb:xyz\n")).toMatch(/line 2: key of "b" is not an even number of hex digits/);
    expect(bad("a:abcd")).toMatch(/2 bytes, not 16/);
    expect(bad("a:" + "ab".repeat(16) + "\na:" + "cd".repeat(16))).toMatch(/appears twice/);
  });
});

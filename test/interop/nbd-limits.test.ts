// A hostile NBD client against NbdServer's bounds (issue 13): the handshake
// deadline (a byte every 150 ms no longer keeps it open), the stall timeout
// (a WRITE payload one byte short, replies never read), the server-wide
// buffer budget across connections, the connection limits per peer and per
// export with one log line each, 32 MiB payloads from a client that did not
// negotiate block sizes, and exact decoding of names and 64-bit offsets.
import net from "node:net";
import { randomBytes } from "node:crypto";
import { describe, expect, it, onTestFinished } from "vitest";
import * as p from "../../appliance/nbd/protocol.ts";
import { REQUEST_COST_BYTES } from "../../appliance/nbd/connection.ts";
import { BUFFER_BYTES_MIN } from "../../appliance/nbd/server.ts";
import { NbdClient, NbdOptionError, NbdOptionSession } from "../support/nbd-client.ts";
import { startNbdFixture, type FixtureOptions, type NbdFixture } from "../support/nbd-fixture.ts";

const MiB = 1024 * 1024;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function fixture(o: FixtureOptions, sizeBytes = 64 * MiB): Promise<NbdFixture> {
  const fx = await startNbdFixture([{ name: "disk", sizeBytes }], o);
  onTestFinished(() => fx.stop());
  return fx;
}

/** Milliseconds until the server closes the socket, or -1 if it is still open after `ms`. */
function closedWithin(socket: net.Socket, ms: number): Promise<number> {
  const t0 = performance.now();
  return new Promise((resolve) => {
    if (socket.destroyed) return resolve(0);
    const t = setTimeout(() => resolve(-1), ms);
    socket.once("close", () => {
      clearTimeout(t);
      resolve(performance.now() - t0);
    });
  });
}

/** An option session whose TCP connection comes from `localAddress` (another loopback address: another peer). */
function openFrom(fx: NbdFixture, localAddress: string): Promise<NbdOptionSession> {
  return NbdOptionSession.open(fx.host, fx.port, localAddress);
}

function rawConnect(fx: NbdFixture): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const s = net.connect({ host: fx.host, port: fx.port }, () => resolve(s));
    s.on("error", reject);
  });
}

describe("nbd limits: deadlines and stalls", () => {
  it("handshake: a client trickling a byte every 150 ms is closed at the 600 ms deadline", async () => {
    const fx = await fixture({ server: { handshakeTimeoutMs: 600 } });
    const s = await rawConnect(fx);
    s.on("error", () => {});
    s.on("data", () => {});
    const closed = closedWithin(s, 5000);
    const bytes = Buffer.concat([p.encodeClientFlags(p.NBD_FLAG_C_FIXED_NEWSTYLE), p.encodeOption(p.NBD_OPT_LIST).subarray(0, 15)]);
    const trickle = (async () => {
      for (const b of bytes) {
        if (s.destroyed) return;
        s.write(Buffer.from([b]));
        await sleep(150);
      }
    })();
    const ms = await closed;
    await trickle;
    // An idle timer (the old socket.setTimeout) would have let it run all 19 bytes (2.85 s) and more.
    expect(ms).toBeGreaterThan(500);
    expect(ms).toBeLessThan(2000);
    expect(fx.logs.some((l) => l.msg === "nbd: handshake deadline passed; closing")).toBe(true);
  });

  it("stall: a WRITE payload held one byte short is closed after stallTimeoutMs and its bytes are given back", async () => {
    const fx = await fixture({ maxPayloadBytes: 4 * MiB, server: { limits: { stallTimeoutMs: 400 } } });
    const s = await NbdOptionSession.open(fx.host, fx.port);
    await s.info("disk", p.NBD_OPT_GO);
    s.socket.write(p.encodeRequestHeader({ flags: 0, type: p.NBD_CMD_WRITE, cookie: 1n, offset: 0, length: 4 * MiB }));
    s.socket.write(Buffer.alloc(4 * MiB - 1, 7));
    await sleep(150);
    expect(fx.server.budget.usedBytes()).toBe(4 * MiB + REQUEST_COST_BYTES);
    const ms = await closedWithin(s.socket, 5000);
    expect(ms).toBeGreaterThan(0);
    expect(fx.logs.find((l) => l.msg === "nbd: closing connection")?.reason).toMatch(/stalled: a request half received/);
    await sleep(50);
    expect(fx.server.budget.usedBytes()).toBe(0);
  });

  it("stall: replies the client never reads close the connection after stallTimeoutMs", async () => {
    const fx = await fixture({ maxPayloadBytes: 4 * MiB, server: { limits: { stallTimeoutMs: 400 } } });
    const s = await NbdOptionSession.open(fx.host, fx.port);
    await s.info("disk", p.NBD_OPT_GO);
    s.socket.write(Buffer.concat(Array.from({ length: 32 }, (_, i) => p.encodeRequestHeader({ flags: 0, type: p.NBD_CMD_READ, cookie: BigInt(i), offset: 0, length: 4 * MiB }))));
    // The client reads nothing, so it would not notice the close: watch the server.
    await sleep(200);
    expect(fx.server.budget.usedBytes()).toBeGreaterThan(32 * MiB);
    const t0 = performance.now();
    while (fx.server.connectionCount() > 0 && performance.now() - t0 < 8000) await sleep(20);
    expect(fx.server.connectionCount()).toBe(0);
    expect(fx.logs.find((l) => l.msg === "nbd: closing connection")?.reason).toMatch(/stalled: \d+ reply bytes not taken/);
    expect(fx.server.budget.usedBytes()).toBe(0);
    s.socket.destroy();
  });

  it("idle: with idleTimeoutMs set, a connection with nothing in flight is closed; 0 (default) keeps it", async () => {
    const fx = await fixture({ server: { limits: { idleTimeoutMs: 300 } } });
    const c = await NbdClient.connect({ host: fx.host, port: fx.port, exportName: "disk" });
    await c.read(0, 4096);
    expect(await closedWithin(c.socket, 3000)).toBeGreaterThan(0);
    const fx2 = await fixture({});
    const c2 = await NbdClient.connect({ host: fx2.host, port: fx2.port, exportName: "disk" });
    expect(await closedWithin(c2.socket, 800)).toBe(-1);
    await c2.disconnect();
  });
});

describe("nbd limits: memory", () => {
  it("budget: 4 connections pipelining 16 x 4 MiB READs without reading hold at most bufferBytesMax, then all replies arrive", async () => {
    const bufferBytesMax = BUFFER_BYTES_MIN;
    const fx = await fixture({ maxPayloadBytes: 4 * MiB, server: { limits: { bufferBytesMax, bufferBytesPerPeerMax: bufferBytesMax } } });
    const image = randomBytes(4 * MiB);
    const w = await NbdClient.connect({ host: fx.host, port: fx.port, exportName: "disk" });
    await w.write(0, image);
    await w.disconnect();
    const sessions = await Promise.all(Array.from({ length: 4 }, () => NbdOptionSession.open(fx.host, fx.port)));
    for (const s of sessions) {
      await s.info("disk", p.NBD_OPT_GO);
      s.socket.write(Buffer.concat(Array.from({ length: 16 }, (_, i) => p.encodeRequestHeader({ flags: 0, type: p.NBD_CMD_READ, cookie: BigInt(i), offset: 0, length: 4 * MiB }))));
    }
    let peak = 0;
    for (let i = 0; i < 20; i++) {
      await sleep(25);
      peak = Math.max(peak, fx.server.budget.usedBytes());
    }
    // 256 MiB asked for; per-connection bounds alone would allow 4 x 64 MiB.
    expect(peak).toBeLessThanOrEqual(bufferBytesMax);
    expect(peak).toBeGreaterThan(bufferBytesMax / 2);
    expect(fx.server.budget.waiting()).toBeGreaterThan(0);
    // Now every client reads: backpressure, not refusal, so each gets all 16 replies, right.
    await Promise.all(
      sessions.map(async (s) => {
        for (let i = 0; i < 16; i++) {
          const h = p.decodeSimpleReplyHeader(await s.reader.read(p.SIMPLE_REPLY_HEADER_BYTES));
          expect(h.ok && h.value.errno).toBe(0);
          expect((await s.reader.read(4 * MiB)).equals(image)).toBe(true);
        }
        s.socket.destroy();
      }),
    );
    await sleep(50);
    expect(fx.server.budget.usedBytes()).toBe(0);
  });

  it("budget: one peer's stuck connections hold at most bufferBytesPerPeerMax; another peer (127.0.0.2) is served at once", async () => {
    const fx = await fixture({ maxPayloadBytes: 4 * MiB, server: { limits: { bufferBytesMax: 128 * MiB, bufferBytesPerPeerMax: 48 * MiB } } });
    const hostile = await Promise.all(Array.from({ length: 4 }, () => NbdOptionSession.open(fx.host, fx.port)));
    for (const s of hostile) {
      await s.info("disk", p.NBD_OPT_GO);
      s.socket.write(Buffer.concat(Array.from({ length: 16 }, (_, i) => p.encodeRequestHeader({ flags: 0, type: p.NBD_CMD_READ, cookie: BigInt(i), offset: 0, length: 4 * MiB }))));
    }
    await sleep(300);
    // Without a per-peer share these 256 MiB of READs would take all 128 MiB.
    expect(fx.server.budget.usedBytes("127.0.0.1")).toBeLessThanOrEqual(48 * MiB);
    expect(fx.server.budget.usedBytes("127.0.0.1")).toBeGreaterThan(32 * MiB);
    const bites = fx.logs.filter((l) => l.msg === "nbd: buffer budget full; not reading this connection until bytes come back");
    expect(bites.length).toBeGreaterThan(0);
    expect(bites.length).toBeLessThanOrEqual(4); // once per connection at most
    expect(String(bites[0].reason)).toMatch(/peer 127\.0\.0\.1 holds \d+ bytes \(nbdLimits.bufferBytesPerPeerMax 50331648\)/);
    expect(String(bites[0].peer)).toMatch(/^127\.0\.0\.1:\d+$/);
    const t0 = performance.now();
    const session = await openFrom(fx, "127.0.0.2");
    const c = await session.go("disk", false);
    const data = await c.read(0, 4 * MiB);
    expect(data.length).toBe(4 * MiB);
    expect(performance.now() - t0).toBeLessThan(2000);
    await c.disconnect();
    for (const s of hostile) s.socket.destroy();
  });

  it("payload: a client that did not negotiate block sizes writes and reads 32 MiB (advertised maximum 4 MiB); one that did gets EINVAL", async () => {
    const fx = await fixture({ maxPayloadBytes: 4 * MiB });
    const data = randomBytes(32 * MiB);
    const s = await NbdOptionSession.open(fx.host, fx.port);
    const c = await s.go("disk", false, false);
    await c.write(0, data);
    expect((await c.read(0, 32 * MiB)).equals(data)).toBe(true);
    const r = await c.request({ type: p.NBD_CMD_READ, offset: 0, length: 17 * MiB });
    expect(r.errno).toBe(0);
    await c.disconnect();
    const asked = await NbdClient.connect({ host: fx.host, port: fx.port, exportName: "disk" });
    expect((await asked.request({ type: p.NBD_CMD_WRITE, offset: 0, payload: Buffer.alloc(8 * MiB) })).errno).toBe(p.NBD_EINVAL);
    await asked.disconnect();
  });
});

describe("nbd limits: connection counts", () => {
  it("peer: past connectionsPerPeerMax a connection is closed at once, logged once naming the peer", async () => {
    const fx = await fixture({ server: { limits: { connectionsPerPeerMax: 3 } } });
    const held = await Promise.all(Array.from({ length: 3 }, () => NbdClient.connect({ host: fx.host, port: fx.port, exportName: "disk" })));
    for (let i = 0; i < 3; i++) {
      const s = await rawConnect(fx);
      s.on("error", () => {});
      expect(await closedWithin(s, 3000)).toBeGreaterThanOrEqual(0);
    }
    const lines = fx.logs.filter((l) => l.msg === "nbd: connection limit reached; refusing connections");
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatchObject({ peer: "127.0.0.1" });
    expect(String(lines[0].reason)).toMatch(/connectionsPerPeerMax 3/);
    await held[0].read(0, 4096);
    await held[0].disconnect();
    await sleep(50);
    const again = await NbdClient.connect({ host: fx.host, port: fx.port, exportName: "disk" });
    await again.read(0, 4096);
    for (const c of [again, ...held.slice(1)]) await c.disconnect();
  });

  it("export: past connectionsPerExportMax GO gets ERR_POLICY with the reason, logged once with the peer", async () => {
    const fx = await fixture({ server: { limits: { connectionsPerExportMax: 2 } } });
    const held = await Promise.all(Array.from({ length: 2 }, () => NbdClient.connect({ host: fx.host, port: fx.port, exportName: "disk" })));
    for (let i = 0; i < 2; i++) {
      const err = await NbdClient.connect({ host: fx.host, port: fx.port, exportName: "disk" }).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(NbdOptionError);
      expect((err as NbdOptionError).message).toMatch(/connectionsPerExportMax 2/);
    }
    const lines = fx.logs.filter((l) => l.msg === "nbd: export connection limit reached; refusing");
    expect(lines).toHaveLength(1);
    expect(String(lines[0].peer)).toMatch(/^127\.0\.0\.1:\d+$/);
    for (const c of held) await c.disconnect();
  });
});

describe("nbd limits: exact decoding", () => {
  it("names: GO for BOM+name is not the export 'disk'; invalid UTF-8 gets ERR_INVALID", async () => {
    const fx = await fixture({});
    const s = await NbdOptionSession.open(fx.host, fx.port);
    const bom = await s.option(p.NBD_OPT_INFO, p.encodeInfoRequest("\ufeffdisk", []));
    expect(bom.map((r) => r.replyType)).toEqual([p.NBD_REP_ERR_UNKNOWN]);
    const bad = await s.option(p.NBD_OPT_INFO, Buffer.from([0, 0, 0, 2, 0xc3, 0x28, 0, 0]));
    expect(bad.map((r) => r.replyType)).toEqual([p.NBD_REP_ERR_INVALID]);
    expect((await s.info("disk")).sizeBytes).toBe(64 * MiB);
    await s.abort();
  });

  it("offsets: WRITE at 2^53+1 gets EINVAL (unaligned), at 2^53 ENOSPC (past the end), and the connection stays", async () => {
    const fx = await fixture({});
    const s = await NbdOptionSession.open(fx.host, fx.port);
    await s.info("disk", p.NBD_OPT_GO);
    for (const [cookie, offset, errno] of [
      [1n, 2n ** 53n + 1n, p.NBD_EINVAL],
      [2n, 2n ** 53n, p.NBD_ENOSPC],
    ] as const) {
      s.socket.write(Buffer.concat([p.encodeRequestHeader({ flags: 0, type: p.NBD_CMD_WRITE, cookie, offset, length: 512 }), Buffer.alloc(512)]));
      const h = p.decodeSimpleReplyHeader(await s.reader.read(p.SIMPLE_REPLY_HEADER_BYTES));
      expect(h.ok && h.value).toEqual({ errno, cookie });
    }
    s.socket.destroy();
  });
});

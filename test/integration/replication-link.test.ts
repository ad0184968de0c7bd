// The authenticated link over real TCP on 127.0.0.1: the handshake, refusals
// of a wrong key on both sides, timeouts, and thousands of hostile byte strings
// that must each cost only their own connection while a good link carries on.
import net from "node:net";
import { afterAll, describe, expect, it } from "vitest";
import pino from "pino";
import {
  clientMac,
  connectLink,
  createLinkServer,
  Link,
  LinkError,
  type LinkServerOptions,
} from "../../appliance/replication/link.ts";
import { encodeFrame, FrameDecoder, WIRE_ERROR, type Frame } from "../../appliance/replication/frames.ts";
import { prng } from "../../appliance/drill/prng.ts";

const KEY = "correct horse battery staple";
/** The HMAC handshake itself, in plain TCP: these tests speak it byte by byte (TLS around it: link-tls.test.ts). */
const OFF = { mode: "off", identity: "test" } as const;
const HOST = "127.0.0.1";

const randInt = (rand: () => number, max: number): number => Math.floor(rand() * (max + 1));
function randBytes(rand: () => number, n: number): Buffer {
  const b = Buffer.alloc(n);
  for (let i = 0; i < n; i++) b[i] = randInt(rand, 255);
  return b;
}

interface LogLine {
  level: number;
  msg: string;
  peer?: string;
  err?: string;
  [k: string]: unknown;
}
function capturingLogger(): { logger: pino.Logger; lines: LogLine[] } {
  const lines: LogLine[] = [];
  const logger = pino({ level: "debug" }, { write: (s: string) => void lines.push(JSON.parse(s) as LogLine) });
  return { logger, lines };
}
const WARN = 40;

const cleanups: (() => void)[] = [];
afterAll(() => {
  for (const c of cleanups) c();
});

async function startServer(over: Partial<LinkServerOptions> = {}): Promise<{
  port: number;
  links: Link[];
  lines: LogLine[];
}> {
  const { logger, lines } = capturingLogger();
  const links: Link[] = [];
  const server = createLinkServer({
    key: KEY,
    tls: OFF,
    nodeId: 2,
    logger,
    handshakeTimeoutMs: 1000,
    onLink: (link) => void links.push(link),
    ...over,
  });
  await new Promise<void>((resolve) => server.listen(0, HOST, resolve));
  cleanups.push(() => {
    for (const l of links) l.close();
    server.close();
  });
  return { port: (server.address() as net.AddressInfo).port, links, lines };
}

/** Frames read from a raw socket, for clients that speak the protocol by hand. */
function frameQueue(socket: net.Socket): { next: (ms?: number) => Promise<Frame> } {
  const decoder = new FrameDecoder();
  const frames: Frame[] = [];
  let wake: (() => void) | null = null;
  socket.on("data", (chunk: Buffer) => {
    frames.push(...decoder.push(chunk));
    wake?.();
  });
  socket.on("close", () => wake?.());
  return {
    next: async (ms = 5000) => {
      const deadline = Date.now() + ms;
      while (frames.length === 0) {
        if (socket.destroyed && socket.readableEnded) throw new Error("socket closed");
        await new Promise<void>((resolve) => {
          wake = resolve;
          setTimeout(resolve, Math.max(1, deadline - Date.now()));
        });
        wake = null;
        if (frames.length === 0 && Date.now() >= deadline) throw new Error("no frame in time");
      }
      return frames.shift() as Frame;
    },
  };
}

async function rawConnect(port: number): Promise<net.Socket> {
  const socket = net.connect({ host: HOST, port });
  socket.on("error", () => {});
  // Read (and drop) whatever comes unless a frame queue is attached, so the server's FIN is seen.
  socket.resume();
  await new Promise<void>((resolve, reject) => {
    socket.once("connect", resolve);
    socket.once("error", reject);
  });
  return socket;
}

/** The client half of the handshake by hand, with a choosable key. */
async function rawHandshake(port: number, key: string): Promise<{ socket: net.Socket; reply: Frame }> {
  const socket = await rawConnect(port);
  const q = frameQueue(socket);
  const nonce = Buffer.alloc(32, 0x5a);
  socket.write(encodeFrame({ type: "hello", role: "link", nodeId: 9, nonce }));
  const challenge = await q.next();
  if (challenge.type !== "challenge") throw new Error(`expected challenge, got ${challenge.type}`);
  socket.write(encodeFrame({ type: "auth", mac: clientMac(Buffer.from(key, "utf8"), nonce, challenge.nonce, "link", 9) }));
  return { socket, reply: await q.next() };
}

function closedWithin(socket: net.Socket, ms: number): Promise<boolean> {
  if (socket.destroyed) return Promise.resolve(true);
  return new Promise((resolve) => {
    const timer = setTimeout(() => resolve(false), ms);
    socket.once("close", () => {
      clearTimeout(timer);
      resolve(true);
    });
  });
}

function nextFrame(link: Link): Promise<Frame> {
  return new Promise((resolve) => link.once("frame", resolve));
}

async function until(cond: () => boolean, ms: number): Promise<void> {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error("condition not met in time");
    await new Promise((r) => setTimeout(r, 10));
  }
}

/** Runs `count` jobs with at most `width` at once. */
async function pool(count: number, width: number, job: (i: number) => Promise<void>): Promise<void> {
  let next = 0;
  await Promise.all(
    Array.from({ length: width }, async () => {
      while (next < count) await job(next++);
    }),
  );
}

describe("link: handshake", () => {
  it("link: handshake ok, frames both ways, nothing lost before listeners attach", async () => {
    const srv = await startServer({
      // Sent before the client has even returned from connectLink: must still arrive.
      onLink: (link) => {
        srv.links.push(link);
        link.send({ type: "heartbeat" });
        link.on("frame", (f) => {
          if (f.type === "rcr") link.send({ type: "ack", seq: f.records[f.records.length - 1].seq });
        });
      },
    });
    const { logger } = capturingLogger();
    const link = await connectLink({ host: HOST, port: srv.port, key: KEY, tls: OFF, role: "link", nodeId: 1, timeoutMs: 2000, logger });
    cleanups.push(() => link.close());
    expect(link.peer).toEqual({ role: "link", nodeId: 2, address: `${HOST}:${srv.port}` });
    expect((await nextFrame(link)).type).toBe("heartbeat");

    await until(() => srv.links.length === 1, 2000);
    expect(srv.links[0].peer.role).toBe("link");
    expect(srv.links[0].peer.nodeId).toBe(1);
    expect(srv.links[0].peer.address).toMatch(/^127\.0\.0\.1:\d+$/);

    const data = randBytes(prng(1), 1024 * 1024);
    const acked = nextFrame(link);
    link.send({
      type: "rcr",
      generation: 3,
      group: "cg",
      records: [{ primaryId: 1, seq: 41, ts: 2n ** 63n, volume: "s1", op: "write", offset: 0, length: data.length, data }],
    });
    expect(await acked).toEqual({ type: "ack", seq: 41 });
    await link.whenDrained();
  });

  it("link: a control client has node id 0", async () => {
    const srv = await startServer();
    const { logger } = capturingLogger();
    const link = await connectLink({ host: HOST, port: srv.port, key: KEY, tls: OFF, role: "control", nodeId: 0, timeoutMs: 2000, logger });
    await until(() => srv.links.length === 1, 2000);
    expect(srv.links[0].peer).toMatchObject({ role: "control", nodeId: 0 });
    const closed = new Promise<Error | undefined>((resolve) => srv.links[0].once("close", resolve));
    srv.links[0].on("frame", () => {});
    link.close();
    expect(await closed).toBeUndefined();
    expect(link.send({ type: "heartbeat" })).toBe(false);
    await expect(link.whenDrained()).rejects.toMatchObject({ code: "TM_LINK_CLOSED" });
  });

  it("link: a client with the wrong key is told so by the server, which logs its address", async () => {
    const srv = await startServer();
    const { socket, reply } = await rawHandshake(srv.port, "not the cluster key at all");
    const clientAddress = `${HOST}:${socket.localPort}`;
    expect(reply).toMatchObject({ type: "error", code: WIRE_ERROR.auth });
    expect((reply as { message: string }).message).toMatch(/cluster key/);
    expect(await closedWithin(socket, 3000)).toBe(true);
    const warn = srv.lines.find((l) => l.level === WARN && /refusing connection/.test(l.msg));
    expect(warn?.peer).toBe(clientAddress);
    expect(warn?.msg).toMatch(/does not hold the cluster key/);
    expect(srv.links).toHaveLength(0);
  });

  it("link: a server with the wrong key is refused by the client", async () => {
    const srv = await startServer({ key: "another key, not ours" });
    const { logger } = capturingLogger();
    const err = await connectLink({ host: HOST, port: srv.port, key: KEY, tls: OFF, role: "link", nodeId: 1, timeoutMs: 2000, logger }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(LinkError);
    expect((err as LinkError).code).toBe("TM_LINK_AUTH");
    expect((err as Error).message).toBe(`peer at ${HOST}:${srv.port} does not hold the cluster key`);
    // The client says why before leaving; the server logs it.
    await until(() => srv.lines.some((l) => l.level === WARN && /cluster key/.test(l.err ?? "")), 2000);
    expect(srv.links).toHaveLength(0);
  });

  it("link: the handshake of a silent or slow client times out on the server", async () => {
    const srv = await startServer({ handshakeTimeoutMs: 200 });
    const silent = await rawConnect(srv.port);
    const q = frameQueue(silent);
    // Slowloris: a valid hello, one byte every 50 ms, would take over a second.
    const slow = await rawConnect(srv.port);
    const hello = encodeFrame({ type: "hello", role: "link", nodeId: 1, nonce: Buffer.alloc(32) });
    const drip = setInterval(() => {
      if (!slow.destroyed && slow.bytesWritten < hello.length) slow.write(hello.subarray(slow.bytesWritten, slow.bytesWritten + 1));
    }, 50);
    const started = Date.now();
    expect(await q.next()).toMatchObject({ type: "error", code: WIRE_ERROR.timeout });
    expect(await closedWithin(silent, 3000)).toBe(true);
    expect(await closedWithin(slow, 3000)).toBe(true);
    clearInterval(drip);
    expect(Date.now() - started).toBeLessThan(2000);
    expect(srv.lines.filter((l) => l.level === WARN && /timed out/.test(l.msg))).toHaveLength(2);
  });

  it("link: a server that never answers makes connectLink time out naming it", async () => {
    const mute = net.createServer(() => {});
    await new Promise<void>((resolve) => mute.listen(0, HOST, resolve));
    cleanups.push(() => mute.close());
    const port = (mute.address() as net.AddressInfo).port;
    const { logger } = capturingLogger();
    const started = Date.now();
    const err = await connectLink({ host: HOST, port, key: KEY, tls: OFF, role: "link", nodeId: 1, timeoutMs: 300, logger }).catch((e: unknown) => e);
    expect((err as LinkError).code).toBe("TM_LINK_TIMEOUT");
    expect((err as Error).message).toBe(`peer at ${HOST}:${port} did not complete the handshake within 300 ms`);
    expect(Date.now() - started).toBeLessThan(2000);
  });

  it("link: nothing listening gives a connect error naming host:port", async () => {
    const probe = net.createServer();
    await new Promise<void>((resolve) => probe.listen(0, HOST, resolve));
    const port = (probe.address() as net.AddressInfo).port;
    await new Promise((resolve) => probe.close(resolve));
    const { logger } = capturingLogger();
    const err = await connectLink({ host: HOST, port, key: KEY, tls: OFF, role: "link", nodeId: 1, timeoutMs: 2000, logger }).catch((e: unknown) => e);
    expect((err as LinkError).code).toBe("TM_LINK_CONNECT");
    expect((err as Error).message).toContain(`cannot connect to ${HOST}:${port}`);
  });

  it("link: a handshake frame after the handshake drops the link", async () => {
    const srv = await startServer();
    const { socket, reply } = await rawHandshake(srv.port, KEY);
    expect(reply).toEqual({ type: "ready" });
    await until(() => srv.links.length === 1, 2000);
    const closed = new Promise<Error | undefined>((resolve) => srv.links[0].once("close", resolve));
    srv.links[0].on("frame", () => {});
    socket.write(encodeFrame({ type: "hello", role: "link", nodeId: 9, nonce: Buffer.alloc(32) }));
    expect((await closed)?.message).toMatch(/hello frame after the handshake/);
    expect(await closedWithin(socket, 3000)).toBe(true);
  });
});

describe("link: hostile bytes", () => {
  it("link: thousands of bad byte strings (seed 20240601) cost only their own connections", async () => {
    const seed = 20240601;
    const rand = prng(seed);
    const serverLinks: Link[] = [];
    const linkClosed = new Map<Link, Error | undefined | "open">();
    const srv = await startServer({
      handshakeTimeoutMs: 400,
      onLink: (link) => {
        serverLinks.push(link);
        linkClosed.set(link, "open");
        link.on("close", (err) => linkClosed.set(link, err));
        link.on("frame", (f) => {
          if (f.type === "request") link.send({ type: "response", id: f.id, ok: true, body: f.body });
        });
      },
    });

    // The good link, established before the storm and used throughout it.
    const { logger } = capturingLogger();
    const good = await connectLink({ host: HOST, port: srv.port, key: KEY, tls: OFF, role: "control", nodeId: 0, timeoutMs: 2000, logger });
    cleanups.push(() => good.close());
    let goodClosed = false;
    good.on("close", () => (goodClosed = true));
    const responses = new Map<number, (body: unknown) => void>();
    good.on("frame", (f) => {
      if (f.type === "response") responses.get(f.id)?.(f.body);
    });
    let rpcId = 0;
    const rpc = (body: unknown): Promise<unknown> =>
      new Promise((resolve) => {
        const id = ++rpcId;
        responses.set(id, resolve);
        good.send({ type: "request", id, body });
      });
    expect(await rpc({ n: 0 })).toEqual({ n: 0 });

    const hello = encodeFrame({ type: "hello", role: "link", nodeId: 5, nonce: randBytes(rand, 32) });
    const sample = encodeFrame({
      type: "rcr",
      generation: 1,
      group: "cg",
      records: [{ primaryId: 5, seq: 1, ts: 10n, volume: "v", op: "write", offset: 0, length: 100, data: randBytes(rand, 100) }],
    });
    /** A hostile string: random bytes, a mutated or truncated frame, or a good prefix with garbage after it. */
    const hostile = (base: Buffer): Buffer => {
      switch (randInt(rand, 4)) {
        case 0:
          return randBytes(rand, 1 + randInt(rand, 300));
        case 1: {
          const b = Buffer.from(base);
          b[randInt(rand, b.length - 1)] ^= 1 + randInt(rand, 254);
          return b;
        }
        case 2:
          return base.subarray(0, 1 + randInt(rand, base.length - 2));
        case 3:
          return Buffer.concat([Buffer.from("TMRK"), randBytes(rand, randInt(rand, 100))]);
        default:
          return Buffer.concat([base.subarray(0, randInt(rand, base.length)), randBytes(rand, 1 + randInt(rand, 50))]);
      }
    };

    // Before the handshake: the server must close every one of these by itself
    // (at once for a bad byte, at the handshake timeout for a truncated hello).
    const preCount = 2000;
    const cases = Array.from({ length: preCount }, () => hostile(hello));
    let notClosed = 0;
    const pings: Promise<unknown>[] = [];
    await pool(preCount, 64, async (i) => {
      const s = await rawConnect(srv.port);
      s.write(cases[i]);
      if (!(await closedWithin(s, 5000))) notClosed++;
      s.destroy();
      if (i % 100 === 0) pings.push(rpc({ during: i }));
    });
    expect(notClosed, `seed ${seed}: connections the server left open`).toBe(0);
    expect(await Promise.all(pings)).toHaveLength(preCount / 100);

    // After a good handshake: each string ends its link with an error; a peer
    // that stops mid-frame is closed when it leaves ("ended inside a frame").
    const postCount = 500;
    const before = serverLinks.length;
    await pool(postCount, 32, async () => {
      const { socket, reply } = await rawHandshake(srv.port, KEY);
      expect(reply.type).toBe("ready");
      let bad = hostile(sample);
      // A frame starting like a good one would be fine by itself; make it a bad one.
      if (bad.length >= 20 && bad.subarray(0, 20).equals(sample.subarray(0, 20)) && bad.length >= sample.length) bad = bad.subarray(0, 25);
      socket.write(bad);
      if (!(await closedWithin(socket, 300))) {
        socket.end();
        await closedWithin(socket, 3000);
      }
      socket.destroy();
    });
    await until(() => serverLinks.slice(before).every((l) => linkClosed.get(l) !== "open"), 5000);
    const post = serverLinks.slice(before);
    expect(post).toHaveLength(postCount);
    const withoutError = post.filter((l) => !(linkClosed.get(l) instanceof Error));
    expect(withoutError, `seed ${seed}: links closed without an error`).toHaveLength(0);

    // The server logged each refusal with the remote address, and the good link carries on.
    const warns = srv.lines.filter((l) => l.level === WARN);
    expect(warns.length).toBeGreaterThanOrEqual(preCount);
    expect(warns.every((l) => typeof l.peer === "string" && /^127\.0\.0\.1:\d+$/.test(l.peer))).toBe(true);
    expect(warns.some((l) => /stream offset \d+/.test(l.err ?? ""))).toBe(true);
    expect(goodClosed).toBe(false);
    expect(linkClosed.get(serverLinks[0])).toBe("open");
    for (let i = 0; i < 20; i++) expect(await rpc({ after: i, blob: "x".repeat(i * 1000) })).toEqual({ after: i, blob: "x".repeat(i * 1000) });
  });
});

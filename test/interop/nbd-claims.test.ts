// NBD claims of docs/security.md that had no test: bytes smuggled after
// STARTTLS before its ACK close the connection; the TLS handshake counts
// against the handshake deadline from accept; an unknown PSK username is
// refused and logged with the peer; a client held to TLS 1.2 connects with
// every ECDHE-PSK, DHE-PSK and PSK suite (Node's OpenSSL, and GnuTLS through nbdcopy);
// more than OPTIONS_PER_CONNECTION_MAX options close the connection; and
// connectionsMax on a running server. Real sockets against NbdServer on
// 127.0.0.1 (test/support/nbd-fixture.ts); small deadlines, loose upper bounds.
import { execFile } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import net from "node:net";
import { tmpdir } from "node:os";
import path from "node:path";
import { Duplex } from "node:stream";
import tls from "node:tls";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it, onTestFinished } from "vitest";
import { OPTIONS_PER_CONNECTION_MAX } from "../../appliance/nbd/handshake.ts";
import * as p from "../../appliance/nbd/protocol.ts";
import { parsePskFile } from "../../appliance/nbd/psk-file.ts";
import { loadNbdTls } from "../../appliance/nbd/tls-setup.ts";
import { NbdClient, NbdOptionSession } from "../support/nbd-client.ts";
import { startNbdFixture, type FixtureOptions, type NbdFixture } from "../support/nbd-fixture.ts";
import { makePsk } from "../support/tls-material.ts";
import { nbdTools } from "../support/tools.ts";

const run = promisify(execFile);
const KiB = 1024;
const MiB = 1024 * KiB;
const TOOLS = nbdTools("nbd claims");
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

const CONTENT = randomBytes(1 * MiB);
let dir: string;
let pskFile: string;
let aliceKey: Buffer;

beforeAll(async () => {
  dir = await mkdtemp(path.join(tmpdir(), "tm-nbd-claims-"));
  pskFile = (await makePsk(path.join(dir, "psk"), "alice")).file;
  const parsed = parsePskFile(await readFile(pskFile, "utf8"));
  if (!parsed.ok) throw new Error(parsed.reason);
  aliceKey = parsed.keys.get("alice") as Buffer;
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

async function fixture(o: FixtureOptions = {}): Promise<NbdFixture> {
  const fx = await startNbdFixture([{ name: "disk", sizeBytes: 4 * MiB, content: CONTENT }], o);
  onTestFinished(() => fx.stop());
  return fx;
}

/** A server with nbdTls require and alice's PSK file. */
function pskFixture(handshakeTimeoutMs?: number): Promise<NbdFixture> {
  return fixture({ server: { tlsMode: "require", tls: loadNbdTls("require", { pskFile }), handshakeTimeoutMs } });
}

/** TLS client options offering `identity` with `key` (alice's by default). */
function psk(identity = "alice", key = aliceKey, o: tls.ConnectionOptions = {}): tls.ConnectionOptions {
  return { pskCallback: () => ({ identity, psk: key }), ...o };
}

/** The log lines with this message whose peer is `peer` (ip:port), or every one when peer is undefined. */
function logged(fx: NbdFixture, msg: string, peer?: string): NbdFixture["logs"] {
  return fx.logs.filter((l) => l.msg === msg && (peer === undefined || l.peer === peer));
}

/** Waits until a line is logged (the server logs after its side of the socket closed). */
async function waitLogged(fx: NbdFixture, msg: string, peer?: string, ms = 3000): Promise<NbdFixture["logs"]> {
  const until = performance.now() + ms;
  while (logged(fx, msg, peer).length === 0 && performance.now() < until) await sleep(20);
  return logged(fx, msg, peer);
}

const peerOf = (s: net.Socket) => `127.0.0.1:${s.localPort}`;

/** performance.now() when the socket closes, or -1 if it is still open after `ms`. */
function closeTime(socket: net.Socket, ms: number): Promise<number> {
  return new Promise((resolve) => {
    if (socket.destroyed) return resolve(performance.now());
    const t = setTimeout(() => resolve(-1), ms);
    socket.once("close", () => {
      clearTimeout(t);
      resolve(performance.now());
    });
  });
}

/** Every byte the server sends on `socket` until it closes (or `ms` pass). */
function bytesUntilClose(socket: net.Socket, ms: number): Promise<{ bytes: Buffer; closed: boolean }> {
  const chunks: Buffer[] = [];
  socket.on("data", (c: Buffer) => chunks.push(c));
  return closeTime(socket, ms).then((t) => ({ bytes: Buffer.concat(chunks), closed: t >= 0 }));
}

/** The ClientHello a real TLS-PSK client (Node's OpenSSL) sends first, captured without a server. */
async function clientHello(): Promise<Buffer> {
  const chunks: Buffer[] = [];
  const sink = new Duplex({
    read() {},
    write(chunk: Buffer, _enc, done) {
      chunks.push(chunk);
      done();
    },
  });
  const t = tls.connect({ ...psk(), socket: sink, checkServerIdentity: () => undefined });
  t.on("error", () => {});
  for (let i = 0; i < 100 && chunks.length === 0; i++) await sleep(10);
  t.destroy();
  const hello = Buffer.concat(chunks);
  // A TLS handshake record (22) holding a ClientHello (1).
  expect([hello[0], hello[5]]).toEqual([22, 1]);
  return hello;
}

describe("nbd claims: STARTTLS and the TLS handshake", () => {
  it("starttls: bytes sent after STARTTLS before reading its ACK close the connection, and none of them is interpreted (a LIST, a whole ClientHello)", async () => {
    const fx = await pskFixture();
    const hello = await clientHello();
    const ack = p.encodeOptionReply(p.NBD_OPT_STARTTLS, p.NBD_REP_ACK);
    for (const [what, smuggled] of [
      ["LIST", p.encodeOption(p.NBD_OPT_LIST)],
      ["ClientHello", hello],
    ] as const) {
      const s = await NbdOptionSession.open(fx.host, fx.port);
      const peer = peerOf(s.socket);
      s.reader.detach();
      s.socket.resume();
      const got = bytesUntilClose(s.socket, 5000);
      // One write: the bytes are there when the server reads STARTTLS.
      s.socket.write(Buffer.concat([p.encodeOption(p.NBD_OPT_STARTTLS), smuggled]));
      const { bytes, closed } = await got;
      expect({ what, closed }).toEqual({ what, closed: true });
      // At most the ACK: no ServerHello, no reply to the LIST.
      expect(bytes.length).toBeLessThanOrEqual(ack.length);
      expect(bytes.equals(ack.subarray(0, bytes.length))).toBe(true);
      const lines = await waitLogged(fx, "nbd: closing connection on protocol violation", peer);
      expect(lines.map((l) => l.reason)).toEqual(["STARTTLS: client sent bytes before the ACK"]);
      expect(logged(fx, "nbd: TLS established", peer)).toHaveLength(0);
      expect(logged(fx, "nbd: TLS handshake failed; closing", peer)).toHaveLength(0);
    }
    // The same server, a client that waits for the ACK: TLS comes up.
    const ok = await (await NbdOptionSession.open(fx.host, fx.port)).startTls(psk());
    expect((await ok.info("disk")).sizeBytes).toBe(4 * MiB);
    await ok.abort();
  });

  it("deadline: a client that stalls in the TLS handshake, trickles its ClientHello a byte every 100 ms, or idles inside TLS is closed at handshakeTimeoutMs (1000) from accept", async () => {
    const DEADLINE_MS = 1000;
    const fx = await pskFixture(DEADLINE_MS);
    const hello = await clientHello();
    // A byte every 100 ms: the whole ClientHello would take this long.
    expect(hello.length * 100).toBeGreaterThan(10 * DEADLINE_MS);
    const client = async (mode: "stall" | "trickle" | "idle in TLS") => {
      const t0 = performance.now();
      const s = await NbdOptionSession.open(fx.host, fx.port);
      const peer = peerOf(s.socket);
      let sent = 0;
      let closedAt: Promise<number>;
      if (mode === "idle in TLS") {
        const inside = await s.startTls(psk());
        expect((await inside.info("disk")).sizeBytes).toBe(4 * MiB);
        closedAt = closeTime(inside.socket, 10_000);
      } else {
        expect((await s.option(p.NBD_OPT_STARTTLS)).map((r) => r.replyType)).toEqual([p.NBD_REP_ACK]);
        closedAt = closeTime(s.socket, 10_000);
        if (mode === "trickle") {
          for (const b of hello) {
            if (s.socket.destroyed) break;
            s.socket.write(Buffer.from([b]));
            sent++;
            await sleep(100);
          }
        }
      }
      const at = await closedAt;
      return { mode, peer, sent, ms: at < 0 ? -1 : Math.round(at - t0) };
    };
    const results = await Promise.all([client("stall"), client("trickle"), client("idle in TLS")]);
    for (const r of results) {
      // Not before the deadline, and long before the trickle would have ended.
      expect({ mode: r.mode, early: r.ms < DEADLINE_MS - 50 }).toEqual({ mode: r.mode, early: false });
      expect({ mode: r.mode, late: r.ms < 0 || r.ms > DEADLINE_MS + 3000 }).toEqual({ mode: r.mode, late: false });
      const lines = await waitLogged(fx, "nbd: handshake deadline passed; closing", r.peer);
      expect({ mode: r.mode, lines: lines.length }).toEqual({ mode: r.mode, lines: 1 });
      expect(lines[0].timeoutMs).toBe(DEADLINE_MS);
    }
    const trickle = results[1];
    expect(trickle.sent).toBeGreaterThanOrEqual(3);
    expect(trickle.sent).toBeLessThan(hello.length);
    // The one that finished TLS did so within the deadline: the deadline, not TLS, closed it.
    expect(logged(fx, "nbd: TLS established", results[2].peer)).toHaveLength(1);
  });

  it("psk: an unknown username is refused under TLS 1.3 and TLS 1.2, and each refusal is logged with the peer address; alice is admitted", async () => {
    const fx = await pskFixture();
    const tls12 = { maxVersion: "TLSv1.2", ciphers: "PSK-AES128-GCM-SHA256" } as const;
    for (const [version, o] of [
      ["TLSv1.3", {}],
      ["TLSv1.2", tls12],
    ] as const) {
      const s = await NbdOptionSession.open(fx.host, fx.port);
      const peer = peerOf(s.socket);
      const err = await s.startTls(psk("mallory", randomBytes(32), o)).then(
        () => null,
        (e: unknown) => e as Error,
      );
      expect({ version, refused: err instanceof Error }).toEqual({ version, refused: true });
      expect(err?.message).toMatch(/alert/);
      const lines = await waitLogged(fx, "nbd: TLS handshake failed; closing", peer);
      expect({ version, lines: lines.length }).toEqual({ version, lines: 1 });
      expect(lines[0].peer).toBe(peer);
      if (version === "TLSv1.2") expect(String(lines[0].err)).toMatch(/psk identity not found/);
      expect(logged(fx, "nbd: TLS established", peer)).toHaveLength(0);
      expect(logged(fx, "nbd: handshake complete", peer)).toHaveLength(0);
      // The known user with the same TLS options gets in and reads.
      const a = await NbdOptionSession.open(fx.host, fx.port);
      const c = await (await a.startTls(psk("alice", aliceKey, o))).go("disk", false);
      expect((await c.read(0, 64 * KiB)).equals(CONTENT.subarray(0, 64 * KiB))).toBe(true);
      await c.disconnect();
    }
  });

  it.skipIf(!TOOLS.nbdinfo)("nbdinfo: an unknown PSK username (mallory, with a key of its own) is refused, and the refusal is logged with the peer address", async () => {
    const fx = await pskFixture();
    const mallory = await makePsk(path.join(dir, "psk-mallory"), "mallory");
    const e = await run("nbdinfo", [`nbds://mallory@${fx.host}:${fx.port}/disk?tls-psk-file=${mallory.file}`]).then(
      () => null,
      (err: unknown) => err as Error & { stderr?: string },
    );
    expect(e).toBeInstanceOf(Error);
    expect(String(e?.stderr)).toMatch(/handshake|TLS|alert/i);
    const lines = await waitLogged(fx, "nbd: TLS handshake failed; closing");
    expect(lines).toHaveLength(1);
    expect(String(lines[0].peer)).toMatch(/^127\.0\.0\.1:\d+$/);
    expect(logged(fx, "nbd: TLS established")).toHaveLength(0);
  });
});

describe("nbd claims: TLS 1.2 PSK suites for older clients", () => {
  // Every TLS 1.2 suite of PSK_CIPHERS (appliance/nbd/tls-setup.ts); DHE-PSK needs the context's dhparam.
  const SUITES = ["ECDHE-PSK-CHACHA20-POLY1305", "DHE-PSK-AES256-GCM-SHA384", "DHE-PSK-AES128-GCM-SHA256", "PSK-AES256-GCM-SHA384", "PSK-AES128-GCM-SHA256", "ECDHE-PSK-AES256-CBC-SHA384", "ECDHE-PSK-AES128-CBC-SHA256"];

  it("tls 1.2: a client held to TLS 1.2 (Node's OpenSSL, maxVersion TLSv1.2) connects with each ECDHE-PSK, DHE-PSK and PSK suite and reads the export", async () => {
    const fx = await pskFixture();
    for (const suite of SUITES) {
      const s = await NbdOptionSession.open(fx.host, fx.port);
      const peer = peerOf(s.socket);
      const inside = await s.startTls(psk("alice", aliceKey, { maxVersion: "TLSv1.2", ciphers: suite }));
      const secure = inside.socket as tls.TLSSocket;
      expect({ protocol: secure.getProtocol(), cipher: secure.getCipher().name }).toEqual({ protocol: "TLSv1.2", cipher: suite });
      const c = await inside.go("disk", true);
      const data = await c.read(128 * KiB, 256 * KiB);
      expect({ suite, same: data.equals(CONTENT.subarray(128 * KiB, 384 * KiB)) }).toEqual({ suite, same: true });
      await c.disconnect();
      expect(logged(fx, "nbd: TLS established", peer).map((l) => [l.protocol, l.cipher])).toEqual([["TLSv1.2", suite]]);
    }
  });

  // GnuTLS (libnbd) offers TLS 1.3 first; its system priority file can turn
  // TLS 1.3 off, as on an older client.
  it.skipIf(!TOOLS.nbdcopy)("tls 1.2: nbdcopy over GnuTLS with TLS 1.3 disabled (GNUTLS_SYSTEM_PRIORITY_FILE) copies the export out over TLS 1.2 PSK, byte for byte", async () => {
    const fx = await pskFixture();
    const priority = path.join(dir, "gnutls-no-tls13.config");
    await writeFile(priority, "[overrides]\ndisabled-version = tls1.3\n");
    const out = path.join(dir, "tls12-out.img");
    await run("nbdcopy", ["--", `nbds://alice@${fx.host}:${fx.port}/disk?tls-psk-file=${pskFile}`, out], {
      env: { ...process.env, GNUTLS_SYSTEM_PRIORITY_FILE: priority },
    });
    expect((await readFile(out)).subarray(0, CONTENT.length).equals(CONTENT)).toBe(true);
    const established = logged(fx, "nbd: TLS established");
    expect(established.length).toBeGreaterThan(0);
    expect(new Set(established.map((l) => l.protocol))).toEqual(new Set(["TLSv1.2"]));
    expect(String(established[0].cipher)).toMatch(/PSK/);
  });
});

describe("nbd claims: options and connections", () => {
  it(`options: ${OPTIONS_PER_CONNECTION_MAX} options are answered; the next closes the connection without a reply, logged with the peer`, async () => {
    const fx = await fixture();
    const s = await NbdOptionSession.open(fx.host, fx.port);
    const peer = peerOf(s.socket);
    // All at once: the server reads them while the client reads nothing yet.
    s.socket.write(Buffer.concat(Array.from({ length: OPTIONS_PER_CONNECTION_MAX + 1 }, () => p.encodeOption(p.NBD_OPT_STRUCTURED_REPLY))));
    let acks = 0;
    for (;;) {
      const header = await s.reader.read(p.OPTION_REPLY_HEADER_BYTES).catch(() => null);
      if (header === null) break;
      const h = p.decodeOptionReplyHeader(header);
      expect(h.ok && [h.value.option, h.value.replyType, h.value.length]).toEqual([p.NBD_OPT_STRUCTURED_REPLY, p.NBD_REP_ACK, 0]);
      acks++;
    }
    expect(acks).toBe(OPTIONS_PER_CONNECTION_MAX);
    const lines = await waitLogged(fx, "nbd: closing connection on protocol violation", peer);
    expect(lines.map((l) => l.reason)).toEqual([`handshake: more than ${OPTIONS_PER_CONNECTION_MAX} options`]);
    // Only that connection: another one is served.
    const c = await NbdClient.connect({ host: fx.host, port: fx.port, exportName: "disk" });
    expect((await c.read(0, 4096)).equals(CONTENT.subarray(0, 4096))).toBe(true);
    await c.disconnect();
  });

  it("connectionsMax: with 3 held (one still in its handshake) the next is closed at once from any address, logged once naming the limit and the peer; after one closes a new one is admitted", async () => {
    const fx = await fixture({ server: { limits: { connectionsMax: 3 } } });
    const held = await Promise.all([0, 1].map(() => NbdClient.connect({ host: fx.host, port: fx.port, exportName: "disk" })));
    // The third only has its greeting: connections in the handshake count.
    const shaking = await NbdOptionSession.open(fx.host, fx.port);
    const refusedFrom = async (localAddress: string) => {
      const s = net.connect({ host: fx.host, port: fx.port, localAddress });
      s.on("error", () => {});
      const t0 = performance.now();
      const { bytes, closed } = await bytesUntilClose(s, 3000);
      return { localAddress, closed, greeting: bytes.length, ms: performance.now() - t0 };
    };
    for (const from of ["127.0.0.1", "127.0.0.2", "127.0.0.1"]) {
      const r = await refusedFrom(from);
      // Closed before the server said anything, and long before any deadline.
      expect(r).toMatchObject({ localAddress: from, closed: true, greeting: 0 });
      expect(r.ms).toBeLessThan(2000);
    }
    const lines = logged(fx, "nbd: connection limit reached; refusing connections");
    expect(lines).toHaveLength(1);
    expect(lines[0].peer).toBe("127.0.0.1");
    expect(String(lines[0].reason)).toMatch(/the server holds 3 connections \(nbdLimits\.connectionsMax 3\)/);
    // Those held are unharmed.
    expect((await held[0].read(0, 4096)).equals(CONTENT.subarray(0, 4096))).toBe(true);
    expect((await shaking.info("disk")).sizeBytes).toBe(4 * MiB);
    // One leaves: a new one (from another address) is admitted and served.
    await shaking.abort();
    const t0 = performance.now();
    while (fx.server.connectionCount() > 2 && performance.now() - t0 < 3000) await sleep(10);
    expect(fx.server.connectionCount()).toBe(2);
    const session = await NbdOptionSession.open(fx.host, fx.port, "127.0.0.2");
    const again = await session.go("disk", false);
    expect((await again.read(4096, 4096)).equals(CONTENT.subarray(4096, 8192))).toBe(true);
    // Full again: the limit bites again and is logged again (it had stopped biting).
    expect(await refusedFrom("127.0.0.1")).toMatchObject({ closed: true, greeting: 0 });
    expect(logged(fx, "nbd: connection limit reached; refusing connections")).toHaveLength(2);
    for (const c of [again, ...held]) await c.disconnect();
  });
});

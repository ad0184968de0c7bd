// Claims of docs/security.md about links, control connections and keys that
// link-tls.test.ts and link-security.test.ts leave open, on real sockets and
// real processes: the TLS suites, psk_dhe_ke (a ClientHello built by hand),
// the PSK derived from the cluster key, x509 identities against the HMAC
// step's node ids, a certificate without the key, replayed and reflected HMAC
// proofs, a failing primary link's log, the RCM's and the CLI's key-file
// refusals, and a first key made by processes starting together.
import { execFile, spawn, type ChildProcess } from "node:child_process";
import { createHash, createHmac, generateKeyPairSync, randomBytes } from "node:crypto";
import { chmodSync, existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { createInterface } from "node:readline";
import tls from "node:tls";
import pino from "pino";
import { afterAll, afterEach, describe, expect, it } from "vitest";
import { clientMac, connectLink, createLinkServer, LinkError, serverMac, type Link } from "../../appliance/replication/link.ts";
import { LINK_TLS_CIPHERS, pskOf, tlsClientOptions, type LinkTls } from "../../appliance/replication/link-tls.ts";
import { encodeFrame, FrameDecoder, roleCode, WIRE_ERROR, type ChallengeFrame, type Frame } from "../../appliance/replication/frames.ts";
import { askRcm } from "../../appliance/cli/rcm-client.ts";
import { loadConfig } from "../../config/load.ts";
import { loadClusterKey } from "../../config/keys.ts";
import { BIN, ROOT, TestCluster, freePort } from "../support/cluster.ts";
import { makeCa, makeNodeCert, x509Of } from "../support/certs.ts";

const KEY = "a-cluster-key-for-the-claims-tests-0123456789";
const OTHER_KEY = "another-cluster-key-not-this-ones-9876543210";
const HOST = "127.0.0.1";
const WARN = 40;
/** The two suites docs/security.md allows. */
const ALLOWED = ["TLS_AES_128_GCM_SHA256", "TLS_CHACHA20_POLY1305_SHA256"];

interface LogLine {
  level: number;
  msg: string;
  peer?: string | number;
  err?: string;
  [k: string]: unknown;
}

const cleanups: (() => void)[] = [];
afterAll(() => {
  for (const c of cleanups.reverse()) c();
});
let cluster: TestCluster | null = null;
afterEach(async () => {
  await cluster?.destroy();
  cluster = null;
});

const psk = (identity: string, key = KEY): LinkTls => ({ mode: "psk", identity, psk: pskOf(key) });
const OFF: LinkTls = { mode: "off", identity: "test" };
const silent = pino({ level: "silent" });

/** A link server (createLinkServer) on 127.0.0.1: its links and log lines. */
async function serve(t: LinkTls, o: { key?: string; nodeId?: number } = {}): Promise<{ port: number; links: Link[]; lines: LogLine[]; close: () => void }> {
  const lines: LogLine[] = [];
  const logger = pino({ level: "debug" }, { write: (s: string) => void lines.push(JSON.parse(s) as LogLine) });
  const links: Link[] = [];
  const server = createLinkServer({ key: o.key ?? KEY, tls: t, nodeId: o.nodeId ?? 2, logger, handshakeTimeoutMs: 5000, onLink: (l) => void links.push(l) });
  await new Promise<void>((resolve) => server.listen(0, HOST, resolve));
  const close = (): void => {
    for (const l of links) l.close();
    server.close();
  };
  cleanups.push(close);
  return { port: (server.address() as net.AddressInfo).port, links, lines, close };
}

async function until(f: () => boolean, ms = 10_000, what = "condition"): Promise<void> {
  const end = Date.now() + ms;
  while (!f()) {
    if (Date.now() > end) throw new Error(`${what} not met within ${ms} ms`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

const failure = (p: Promise<unknown>): Promise<LinkError> =>
  p.then(
    (v) => {
      if (v && typeof (v as Link).close === "function") (v as Link).close();
      throw new Error("expected the link to be refused, it opened");
    },
    (e: unknown) => {
      expect(e).toBeInstanceOf(LinkError);
      return e as LinkError;
    },
  );

/** A TLS client with options of our choosing: its socket once secure, or the error that ended it. */
function tlsOpen(port: number, options: tls.ConnectionOptions): Promise<{ socket: tls.TLSSocket | null; error: string | null }> {
  return new Promise((resolve) => {
    const socket = tls.connect({ host: HOST, port, ...options });
    socket.once("secureConnect", () => resolve({ socket, error: null }));
    socket.once("error", (e) => resolve({ socket: null, error: e.message }));
    socket.once("close", () => resolve({ socket: null, error: "closed" }));
    cleanups.push(() => socket.destroy());
  });
}

/** Frames read off a socket (TCP or TLS) by hand. */
function frameReader(socket: net.Socket): (ms?: number) => Promise<Frame> {
  const decoder = new FrameDecoder({ payloadMax: 8192 });
  const frames: Frame[] = [];
  let closed = false;
  socket.on("data", (c: Buffer) => void frames.push(...decoder.push(c)));
  socket.on("close", () => (closed = true));
  socket.on("error", () => {});
  return async (ms = 5000) => {
    await until(() => frames.length > 0 || closed, ms, "a frame");
    const f = frames.shift();
    if (!f) throw new Error("the socket closed before a frame came");
    return f;
  };
}

function tcpOpen(port: number): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const s = net.connect({ host: HOST, port });
    s.once("connect", () => resolve(s));
    s.once("error", reject);
    cleanups.push(() => s.destroy());
  });
}

// ---------------------------------------------------------------- a TLS 1.3 ClientHello by hand (RFC 8446)

const u8 = (n: number): Buffer => Buffer.of(n);
const u16 = (n: number): Buffer => Buffer.of(n >> 8, n & 0xff);
const vec8 = (b: Buffer): Buffer => Buffer.concat([u8(b.length), b]);
const vec16 = (b: Buffer): Buffer => Buffer.concat([u16(b.length), b]);
const extension = (type: number, body: Buffer): Buffer => Buffer.concat([u16(type), vec16(body)]);
const hmac = (k: Buffer, d: Buffer): Buffer => createHmac("sha256", k).update(d).digest();
const sha256 = (d: Buffer): Buffer => createHash("sha256").update(d).digest();
const EXT = { supportedGroups: 0x000a, signatureAlgorithms: 0x000d, preSharedKey: 0x0029, supportedVersions: 0x002b, pskModes: 0x002d, keyShare: 0x0033 };
const PSK_KE = 0;
const PSK_DHE_KE = 1;
const X25519 = 0x001d;

/** HKDF-Expand-Label with SHA-256 (RFC 8446 section 7.1). */
function expandLabel(secret: Buffer, label: string, context: Buffer, length: number): Buffer {
  const info = Buffer.concat([u16(length), vec8(Buffer.from(`tls13 ${label}`)), vec8(context)]);
  const blocks: Buffer[] = [];
  for (let i = 1; blocks.length * 32 < length; i++) blocks.push(hmac(secret, Buffer.concat([blocks[i - 2] ?? Buffer.alloc(0), info, u8(i)])));
  return Buffer.concat(blocks).subarray(0, length);
}

/**
 * A ClientHello offering TLS_AES_128_GCM_SHA256, an X25519 key share and an
 * external PSK for `identity` with the key exchange `modes`, its binder
 * computed from `key` (section 4.2.11.2): what OpenSSL would send, except that
 * it cannot be told to offer psk_ke alone.
 */
function clientHello(key: Buffer, identity: string, modes: number[]): Buffer {
  const share = generateKeyPairSync("x25519").publicKey.export({ type: "spki", format: "der" }).subarray(-32);
  const extensions = Buffer.concat([
    extension(EXT.supportedVersions, vec8(u16(0x0304))),
    extension(EXT.supportedGroups, vec16(u16(X25519))),
    extension(EXT.signatureAlgorithms, vec16(Buffer.concat([u16(0x0403), u16(0x0804)]))),
    extension(EXT.keyShare, vec16(Buffer.concat([u16(X25519), vec16(share)]))),
    extension(EXT.pskModes, vec8(Buffer.from(modes))),
  ]);
  const identities = vec16(Buffer.concat([vec16(Buffer.from(identity)), Buffer.alloc(4)]));
  const bindersBytes = 2 + 1 + 32;
  const body = Buffer.concat([
    u16(0x0303),
    randomBytes(32),
    vec8(Buffer.alloc(0)),
    vec16(u16(0x1301)),
    vec8(u8(0)),
    u16(extensions.length + 4 + identities.length + bindersBytes),
    extensions,
    u16(EXT.preSharedKey),
    u16(identities.length + bindersBytes),
    identities,
  ]);
  const length = body.length + bindersBytes;
  const truncated = Buffer.concat([u8(1), Buffer.of(length >> 16, (length >> 8) & 0xff, length & 0xff), body]);
  const early = hmac(Buffer.alloc(32), key);
  const finishedKey = expandLabel(expandLabel(early, "ext binder", sha256(Buffer.alloc(0)), 32), "finished", Buffer.alloc(0), 32);
  const handshake = Buffer.concat([truncated, vec16(vec8(hmac(finishedKey, sha256(truncated))))]);
  return Buffer.concat([Buffer.of(0x16, 3, 1), vec16(handshake)]);
}

type ServerAnswer = { alert: number } | { serverHello: Map<number, Buffer> };

/** Sends a hand-made ClientHello and reads the server's first record: an alert, or a ServerHello and its extensions. */
async function answerTo(port: number, hello: Buffer): Promise<ServerAnswer> {
  const s = await tcpOpen(port);
  s.on("error", () => {});
  let got = Buffer.alloc(0);
  s.on("data", (c: Buffer) => (got = Buffer.concat([got, c])));
  let closed = false;
  s.on("close", () => (closed = true));
  s.write(hello);
  await until(() => closed || (got.length >= 5 && got.length >= 5 + got.readUInt16BE(3)), 10_000, "the server's first record");
  s.destroy();
  if (got[0] === 0x15) return { alert: got[6] };
  expect(got[0], `first record ${got.subarray(0, 16).toString("hex")}`).toBe(0x16);
  expect(got[5], "handshake type (2 = ServerHello)").toBe(2);
  let at = 9 + 2 + 32;
  // HelloRetryRequest is a ServerHello with this random: not what these tests expect.
  expect(got.subarray(11, 43).toString("hex")).not.toBe("cf21ad74e59a6111be1d8c021e65b891c2a211167abb8c5e079e09e2c8a8339c");
  at += 1 + got[at];
  at += 2 + 1;
  const end = at + 2 + got.readUInt16BE(at);
  at += 2;
  const exts = new Map<number, Buffer>();
  while (at < end) {
    const len = got.readUInt16BE(at + 2);
    exts.set(got.readUInt16BE(at), got.subarray(at + 4, at + 4 + len));
    at += 4 + len;
  }
  return { serverHello: exts };
}

// ---------------------------------------------------------------- claims

describe("link claims: TLS suites", () => {
  const dir = mkdtempSync(path.join(os.tmpdir(), "tidemark-claims-x509-"));
  cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
  const ca = makeCa(dir, "cluster-ca");
  const ss1 = makeNodeCert(dir, ca, "ss1");
  const ss2 = makeNodeCert(dir, ca, "ss2");

  it("suites: a psk server refuses a client offering only TLS_AES_128_CCM_SHA256 or only TLS_AES_256_GCM_SHA384 (no shared cipher); only-CHACHA20 and only-AES_128_GCM clients get that suite", async () => {
    const srv = await serve(psk("ss2"));
    const client = tlsClientOptions({ mode: "psk", identity: "ss1", psk: pskOf(KEY) }, () => {});
    for (const suite of ["TLS_AES_128_CCM_SHA256", "TLS_AES_256_GCM_SHA384"]) {
      const before = srv.lines.length;
      const r = await tlsOpen(srv.port, { ...client, ciphers: suite });
      expect(r.socket, suite).toBeNull();
      expect(r.error, suite).toMatch(/handshake failure/);
      await until(() => srv.lines.slice(before).some((l) => l.msg === "refusing connection: TLS handshake failed"));
      expect(srv.lines.slice(before).find((l) => l.msg === "refusing connection: TLS handshake failed")!.err, suite).toMatch(/no shared cipher/);
    }
    for (const suite of ALLOWED) {
      const r = await tlsOpen(srv.port, { ...client, ciphers: suite });
      expect(r.error, suite).toBeNull();
      expect(r.socket!.getCipher().name).toBe(suite);
      expect(r.socket!.getProtocol()).toBe("TLSv1.3");
      r.socket!.destroy();
    }
    expect(srv.links).toHaveLength(0);
  });

  it("suites: an x509 server refuses a client certificate of the cluster CA offering only TLS_AES_256_GCM_SHA384; an x509 client refuses a server offering only it", async () => {
    const srv = await serve(x509Of(ca, ss2, "ss2"));
    const client = tlsClientOptions(x509Of(ca, ss1, "ss1"), () => {});
    const r = await tlsOpen(srv.port, { ...client, ciphers: "TLS_AES_256_GCM_SHA384" });
    expect(r.socket).toBeNull();
    await until(() => srv.lines.some((l) => l.msg === "refusing connection: TLS handshake failed"));
    expect(srv.lines.find((l) => l.msg === "refusing connection: TLS handshake failed")!.err).toMatch(/no shared cipher/);
    // The same client with an allowed suite is admitted: the suite was the reason.
    const ok = await tlsOpen(srv.port, { ...client, ciphers: "TLS_CHACHA20_POLY1305_SHA256" });
    expect(ok.error).toBeNull();
    expect(ok.socket!.getCipher().name).toBe("TLS_CHACHA20_POLY1305_SHA256");
    ok.socket!.destroy();

    // A server with a certificate of the cluster CA that offers only SHA-384 (Node's default list has it first).
    const seen: string[] = [];
    const server = tls.createServer({ ca: readFileSync(ca.certFile), cert: readFileSync(ss2.certFile), key: readFileSync(ss2.keyFile), requestCert: true, minVersion: "TLSv1.3", ciphers: "TLS_AES_256_GCM_SHA384" }, (s) => {
      seen.push(s.getCipher().name);
      s.destroy();
    });
    server.on("tlsClientError", (e) => void seen.push(`error: ${e.message}`));
    await new Promise<void>((resolve) => server.listen(0, HOST, resolve));
    cleanups.push(() => server.close());
    const err = await failure(connectLink({ host: HOST, port: (server.address() as net.AddressInfo).port, key: KEY, tls: x509Of(ca, ss1, "ss1"), role: "link", nodeId: 1, timeoutMs: 10_000, logger: silent }));
    expect(err.code).toBe("TM_LINK_TLS");
    await until(() => seen.length > 0);
    expect(seen[0]).toMatch(/^error: .*no shared cipher/);
  });

  it("suites: links in psk and x509 mode negotiate one of TLS_AES_128_GCM_SHA256 and TLS_CHACHA20_POLY1305_SHA256, seen from both sides", async () => {
    expect(LINK_TLS_CIPHERS.split(":").sort()).toEqual([...ALLOWED].sort());
    for (const [server, client] of [
      [psk("ss2"), psk("ss1")],
      [x509Of(ca, ss2, "ss2"), x509Of(ca, ss1, "ss1")],
    ] as const) {
      const srv = await serve(server);
      const link = await connectLink({ host: HOST, port: srv.port, key: KEY, tls: client, role: "link", nodeId: 1, timeoutMs: 10_000, logger: silent, peerNodeId: 2 });
      await until(() => srv.links.length === 1);
      expect(ALLOWED, `${server.mode} client`).toContain(link.security.cipher);
      expect(ALLOWED, `${server.mode} server`).toContain(srv.links[0].security.cipher);
      expect(srv.links[0].security.cipher).toBe(link.security.cipher);
      link.close();
    }
  });
});

describe("link claims: psk_dhe_ke", () => {
  it("psk_dhe_ke: a ClientHello with the right PSK offering only psk_ke gets handshake_failure; offering psk_dhe_ke (alone or with psk_ke) gets a ServerHello with the PSK and a fresh X25519 share per connection", async () => {
    const srv = await serve(psk("ss2"));
    const key = pskOf(KEY);
    // The binder is checked: a hello made with another PSK is refused with illegal_parameter (47).
    expect(await answerTo(srv.port, clientHello(pskOf(OTHER_KEY), "ss1", [PSK_DHE_KE]))).toEqual({ alert: 47 });
    // psk_ke alone: the server does not take the PSK without (EC)DHE, and has no certificate to fall back on.
    expect(await answerTo(srv.port, clientHello(key, "ss1", [PSK_KE]))).toEqual({ alert: 40 });
    const shares: string[] = [];
    for (const modes of [[PSK_DHE_KE], [PSK_KE, PSK_DHE_KE], [PSK_DHE_KE]]) {
      const a = await answerTo(srv.port, clientHello(key, "ss1", modes));
      expect("serverHello" in a, `modes ${modes}: ${JSON.stringify(a)}`).toBe(true);
      const exts = (a as { serverHello: Map<number, Buffer> }).serverHello;
      expect(exts.get(EXT.preSharedKey)?.toString("hex"), `modes ${modes}: selected PSK identity`).toBe("0000");
      const share = exts.get(EXT.keyShare);
      expect(share, `modes ${modes}: key_share`).toBeDefined();
      expect(share!.readUInt16BE(0)).toBe(X25519);
      expect(share!.readUInt16BE(2)).toBe(32);
      shares.push(share!.subarray(4).toString("hex"));
    }
    expect(new Set(shares).size).toBe(shares.length);
  });

  it("psk_dhe_ke: a client with the product's psk options reports an ephemeral ECDH X25519 key (getEphemeralKeyInfo) after the PSK handshake", async () => {
    const srv = await serve(psk("ss2"));
    const r = await tlsOpen(srv.port, tlsClientOptions({ mode: "psk", identity: "ss1", psk: pskOf(KEY) }, () => {}));
    expect(r.error).toBeNull();
    expect(r.socket!.getEphemeralKeyInfo()).toEqual({ type: "ECDH", name: "X25519", size: 253 });
    r.socket!.destroy();
  });
});

describe("link claims: the PSK is derived from the cluster key", () => {
  it('psk: a client with HMAC-SHA256(clusterKey, "tidemark-v1 tls-psk") opens a link to a server keyed by pskOf; the cluster key\'s own bytes as the PSK are refused, on either side', async () => {
    const derived = createHmac("sha256", KEY).update("tidemark-v1 tls-psk").digest();
    const raw = Buffer.from(KEY, "utf8");
    const srv = await serve(psk("ss2"));
    const link = await connectLink({ host: HOST, port: srv.port, key: KEY, tls: { mode: "psk", identity: "ss1", psk: derived }, role: "link", nodeId: 1, timeoutMs: 10_000, logger: silent, peerNodeId: 2 });
    link.close();

    const err = await failure(connectLink({ host: HOST, port: srv.port, key: KEY, tls: { mode: "psk", identity: "ss1", psk: raw }, role: "link", nodeId: 1, timeoutMs: 10_000, logger: silent }));
    expect(err.code).toBe("TM_LINK_TLS");
    await until(() => srv.lines.some((l) => l.msg === "refusing connection: TLS handshake failed"));
    expect(srv.lines.find((l) => l.msg === "refusing connection: TLS handshake failed")!.err).toMatch(/binder does not verify/);
    expect(srv.links).toHaveLength(1);

    const rawServer = await serve({ mode: "psk", identity: "ss2", psk: raw });
    const err2 = await failure(connectLink({ host: HOST, port: rawServer.port, key: KEY, tls: psk("ss1"), role: "link", nodeId: 1, timeoutMs: 10_000, logger: silent }));
    expect(err2.code).toBe("TM_LINK_TLS");
    expect(rawServer.links).toHaveLength(0);
  });
});

describe("link claims: x509 identities and the cluster key", () => {
  const dir = mkdtempSync(path.join(os.tmpdir(), "tidemark-claims-x509-"));
  cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
  const ca = makeCa(dir, "cluster-ca");
  const ss1 = makeNodeCert(dir, ca, "ss1");
  const ss2 = makeNodeCert(dir, ca, "ss2");
  const ss7 = makeNodeCert(dir, ca, "ss7");

  it('x509: a client certificate of the cluster CA with CN ss7 whose hello claims node 1 is refused by the HMAC step, naming both; CN ss1 is admitted', async () => {
    const srv = await serve(x509Of(ca, ss2, "ss2"));
    const err = await failure(connectLink({ host: HOST, port: srv.port, key: KEY, tls: x509Of(ca, ss7, "ss7"), role: "link", nodeId: 1, timeoutMs: 10_000, logger: silent }));
    expect(err.code).toBe("TM_LINK_REFUSED");
    expect(err.message).toContain('must have TLS identity "ss1"');
    await until(() => srv.lines.some((l) => /TLS identity "ss7", not "ss1"/.test(l.msg)));
    expect(srv.lines.find((l) => /TLS identity "ss7", not "ss1"/.test(l.msg))!.level).toBe(WARN);
    expect(srv.links).toHaveLength(0);
    const ok = await connectLink({ host: HOST, port: srv.port, key: KEY, tls: x509Of(ca, ss1, "ss1"), role: "link", nodeId: 1, timeoutMs: 10_000, logger: silent });
    await until(() => srv.links.length === 1);
    expect(srv.links[0].security.peerIdentity).toBe("ss1");
    ok.close();
  });

  it("x509: a server announcing node 2 with the certificate CN ss7 is refused by a link client and by a control client (TM_LINK_TLS), and keeps no link", async () => {
    const srv = await serve(x509Of(ca, ss7, "ss7"), { nodeId: 2 });
    const err = await failure(connectLink({ host: HOST, port: srv.port, key: KEY, tls: x509Of(ca, ss1, "ss1"), role: "link", nodeId: 1, timeoutMs: 10_000, logger: silent, peerNodeId: 2 }));
    expect(err.code).toBe("TM_LINK_TLS");
    expect(err.message).toContain('says it is node 2 but its TLS identity is "ss7", not "ss2"');
    // A control client checks it too, with no node id expected.
    const cli = makeNodeCert(dir, ca, "cli");
    const err2 = await failure(connectLink({ host: HOST, port: srv.port, key: KEY, tls: x509Of(ca, cli, "cli"), role: "control", nodeId: 0, timeoutMs: 10_000, logger: silent }));
    expect(err2.code).toBe("TM_LINK_TLS");
    expect(err2.message).toContain('its TLS identity is "ss7", not "ss2"');
    await until(() => srv.lines.filter((l) => l.level === WARN && /must have TLS identity "ss2"/.test(l.err ?? "")).length === 2);
    expect(srv.links).toHaveLength(0);
  });

  it("x509: a certificate of the cluster CA without the cluster key opens no link: the server refuses its auth proof (auth error frame, logged), and a client refuses such a server (TM_LINK_AUTH)", async () => {
    const srv = await serve(x509Of(ca, ss2, "ss2"));
    /** The HMAC step by hand inside a TLS session the certificate opened, with the proof made from `key`. */
    const handshake = async (key: string): Promise<{ reply: Frame; localPort: number }> => {
      const r = await tlsOpen(srv.port, tlsClientOptions(x509Of(ca, ss1, "ss1"), () => {}));
      expect(r.error).toBeNull();
      const localPort = r.socket!.localPort!;
      const next = frameReader(r.socket!);
      const nonce = randomBytes(32);
      r.socket!.write(encodeFrame({ type: "hello", role: "link", nodeId: 1, nonce }));
      const challenge = await next();
      expect(challenge.type).toBe("challenge");
      r.socket!.write(encodeFrame({ type: "auth", mac: clientMac(Buffer.from(key), nonce, (challenge as ChallengeFrame).nonce, "link", 1) }));
      return { reply: await next(), localPort };
    };
    const bad = await handshake(OTHER_KEY);
    expect(bad.reply).toMatchObject({ type: "error", code: WIRE_ERROR.auth });
    await until(() => srv.lines.some((l) => l.peer === `${HOST}:${bad.localPort}` && /wrong auth proof/.test(l.msg)));
    expect(srv.links).toHaveLength(0);
    // The same certificate with the key: admitted, so the key was what was missing.
    expect((await handshake(KEY)).reply).toEqual({ type: "ready" });
    await until(() => srv.links.length === 1);

    const keyless = await serve(x509Of(ca, ss2, "ss2"), { key: OTHER_KEY });
    const err = await failure(connectLink({ host: HOST, port: keyless.port, key: KEY, tls: x509Of(ca, ss1, "ss1"), role: "link", nodeId: 1, timeoutMs: 10_000, logger: silent, peerNodeId: 2 }));
    expect(err.code).toBe("TM_LINK_AUTH");
    expect(err.message).toContain("does not hold the cluster key");
    expect(keyless.links).toHaveLength(0);
  });
});

describe("link claims: HMAC proofs", () => {
  const key = Buffer.from(KEY, "utf8");

  it("hmac: a client proof replayed on another connection is refused: the server's nonce is fresh per connection", async () => {
    const srv = await serve(OFF);
    const nonce = randomBytes(32);
    const a = await tcpOpen(srv.port);
    const nextA = frameReader(a);
    a.write(encodeFrame({ type: "hello", role: "link", nodeId: 1, nonce }));
    const challengeA = (await nextA()) as ChallengeFrame;
    const proof = clientMac(key, nonce, challengeA.nonce, "link", 1);
    a.write(encodeFrame({ type: "auth", mac: proof }));
    expect(await nextA()).toEqual({ type: "ready" });

    // An eavesdropper replays the same hello and the recorded proof.
    const b = await tcpOpen(srv.port);
    const bAddress = `${HOST}:${b.localPort}`;
    const nextB = frameReader(b);
    b.write(encodeFrame({ type: "hello", role: "link", nodeId: 1, nonce }));
    const challengeB = (await nextB()) as ChallengeFrame;
    expect(challengeB.type).toBe("challenge");
    expect(challengeB.nonce.equals(challengeA.nonce)).toBe(false);
    b.write(encodeFrame({ type: "auth", mac: proof }));
    expect(await nextB()).toMatchObject({ type: "error", code: WIRE_ERROR.auth });
    await until(() => srv.lines.some((l) => l.peer === bAddress && /wrong auth proof/.test(l.msg)));
    expect(srv.links).toHaveLength(1);
  });

  it("hmac: a server's challenge replayed to other connections is refused by the client (TM_LINK_AUTH): the client's nonce is fresh per connection", async () => {
    const srv = await serve(OFF);
    const s = await tcpOpen(srv.port);
    const next = frameReader(s);
    const recordedNonce = randomBytes(32);
    s.write(encodeFrame({ type: "hello", role: "control", nodeId: 0, nonce: recordedNonce }));
    const recorded = (await next()) as ChallengeFrame;
    expect(recorded.mac.equals(serverMac(key, recordedNonce, recorded.nonce, 2))).toBe(true);

    // A server without the key replays that genuine challenge to every client.
    const hellos: Buffer[] = [];
    const fake = net.createServer((c) => {
      c.on("error", () => {});
      const d = new FrameDecoder({ payloadMax: 8192 });
      c.on("data", (chunk: Buffer) => {
        for (const f of d.push(chunk)) {
          if (f.type !== "hello") continue;
          hellos.push(f.nonce);
          c.write(encodeFrame(recorded));
        }
      });
    });
    await new Promise<void>((resolve) => fake.listen(0, HOST, resolve));
    cleanups.push(() => fake.close());
    const port = (fake.address() as net.AddressInfo).port;
    for (let i = 0; i < 2; i++) {
      const err = await failure(connectLink({ host: HOST, port, key: KEY, tls: OFF, role: "control", nodeId: 0, timeoutMs: 10_000, logger: silent }));
      expect(err.code).toBe("TM_LINK_AUTH");
      expect(err.message).toBe(`peer at ${HOST}:${port} does not hold the cluster key`);
    }
    expect(hellos).toHaveLength(2);
    expect(hellos[0].equals(hellos[1])).toBe(false);
    expect(hellos.some((n) => n.equals(recordedNonce))).toBe(false);
  });

  it('hmac: a server proof is not a client proof: the challenge\'s MAC sent back as auth, and a MAC of the client\'s fields under "tidemark-v1 server", are refused; under "tidemark-v1 client" it is accepted; a client refuses a challenge MAC under the client label', async () => {
    const srv = await serve(OFF);
    const macUnder = (label: string, parts: Buffer[]): Buffer => createHmac("sha256", key).update(label).update(Buffer.concat(parts)).digest();
    const attempt = async (proof: (nonce: Buffer, c: ChallengeFrame) => Buffer): Promise<Frame> => {
      const s = await tcpOpen(srv.port);
      const next = frameReader(s);
      const nonce = randomBytes(32);
      s.write(encodeFrame({ type: "hello", role: "link", nodeId: 1, nonce }));
      const c = (await next()) as ChallengeFrame;
      s.write(encodeFrame({ type: "auth", mac: proof(nonce, c) }));
      return next();
    };
    const fields = (nonce: Buffer, c: ChallengeFrame): Buffer[] => [nonce, c.nonce, u8(roleCode("link")), u16(1)];
    expect(await attempt((_n, c) => c.mac)).toMatchObject({ type: "error", code: WIRE_ERROR.auth });
    expect(await attempt((n, c) => macUnder("tidemark-v1 server", fields(n, c)))).toMatchObject({ type: "error", code: WIRE_ERROR.auth });
    expect(srv.links).toHaveLength(0);
    expect(await attempt((n, c) => macUnder("tidemark-v1 client", fields(n, c)))).toEqual({ type: "ready" });
    await until(() => srv.links.length === 1);

    // The other way: a server holding the key that signs its challenge under the client label.
    const auths: Frame[] = [];
    const fake = net.createServer((c) => {
      c.on("error", () => {});
      const d = new FrameDecoder({ payloadMax: 8192 });
      const serverNonce = randomBytes(32);
      c.on("data", (chunk: Buffer) => {
        for (const f of d.push(chunk)) {
          if (f.type === "auth") auths.push(f);
          if (f.type !== "hello") continue;
          const label = f.nodeId === 0 ? "tidemark-v1 client" : "tidemark-v1 server";
          c.write(encodeFrame({ type: "challenge", nodeId: 2, nonce: serverNonce, mac: macUnder(label, [f.nonce, serverNonce, u16(2)]) }));
        }
      });
    });
    await new Promise<void>((resolve) => fake.listen(0, HOST, resolve));
    cleanups.push(() => fake.close());
    const port = (fake.address() as net.AddressInfo).port;
    const err = await failure(connectLink({ host: HOST, port, key: KEY, tls: OFF, role: "control", nodeId: 0, timeoutMs: 10_000, logger: silent }));
    expect(err.code).toBe("TM_LINK_AUTH");
    expect(auths).toHaveLength(0);
    // Under the server label the same fake is believed: the client answers with its auth.
    const late = connectLink({ host: HOST, port, key: KEY, tls: OFF, role: "link", nodeId: 1, timeoutMs: 1000, logger: silent }).catch((e: unknown) => e);
    await until(() => auths.length === 1);
    expect(((await late) as LinkError).code).toBe("TM_LINK_TIMEOUT");
  });
});

// ---------------------------------------------------------------- real processes

/** A config of subsystem #1 (primary of every volume) and `secondaries` secondaries, one volume each, in one group. */
async function smallConfig(secondaries: number, extra: Record<string, unknown> = {}) {
  const ss = async (id: number, volumes: string[]) => ({ id, host: HOST, replicationPort: await freePort(), nbdPort: await freePort(), volumes: volumes.map((name) => ({ name, sizeMiB: 1 })) });
  const ids = Array.from({ length: secondaries }, (_, i) => i + 2);
  return {
    clusterKeyFile: "cluster.key",
    dataDir: "data",
    syncIntervalMs: 50,
    reconnectMs: 100,
    logLevel: "info",
    subsystems: [await ss(1, ids.map((i) => `p${i}`)), ...(await Promise.all(ids.map((i) => ss(i, [`s${i}`]))))],
    groups: [{ name: "C1", pairs: ids.map((i) => ({ primary: `p${i}`, secondary: `s${i}` })) }],
    ...extra,
  };
}

function tidemark(args: string[], timeoutMs = 30_000): Promise<{ code: number | string; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [BIN, ...args], { timeout: timeoutMs, maxBuffer: 16 << 20 }, (err, stdout, stderr) =>
      resolve({ code: err ? ((err as { code?: number }).code ?? (err as { signal?: string }).signal ?? 1) : 0, stdout, stderr }),
    );
  });
}

function logLines(c: TestCluster, id: number): LogLine[] {
  return c
    .readLog(id)
    .split("\n")
    .filter((l) => l.startsWith("{"))
    .map((l) => JSON.parse(l) as LogLine);
}

describe("link claims: processes", () => {
  it("primary: a link that keeps failing logs its error once (ECONNREFUSED; a TLS refusal), and once more when the error changes", async () => {
    cluster = TestCluster.create(await smallConfig(2));
    const c = cluster;
    const ss3 = c.topo.config.subsystems.find((s) => s.id === 3)!;
    // Secondary #3's port: a link server of another cluster, which counts #1's attempts. #2's port: nothing.
    let attempts = 0;
    const countRefusals = (s: string): void => {
      if ((JSON.parse(s) as LogLine).msg === "refusing connection: TLS handshake failed") attempts++;
    };
    const impostor = createLinkServer({
      key: OTHER_KEY,
      tls: psk("ss3", OTHER_KEY),
      nodeId: 3,
      handshakeTimeoutMs: 5000,
      onLink: (l) => l.close(),
      logger: pino({ level: "warn" }, { write: countRefusals }),
    });
    await new Promise<void>((resolve) => impostor.listen(ss3.replicationPort, HOST, resolve));
    let impostorOpen = true;
    cleanups.push(() => impostorOpen && impostor.close());
    await c.start(1);
    await until(() => attempts >= 8, 30_000, "8 attempts of #1 on #3");
    const failed = (peer: number) => logLines(c, 1).filter((l) => l.msg === "link connect failed; retrying" && l.peer === peer);
    await until(() => failed(2).length > 0 && failed(3).length > 0, 10_000, "both failures logged");
    const links = (await c.rawStatus(1)).primary!.links;
    expect(links.find((l) => l.secondary === 2)).toMatchObject({ state: expect.stringMatching(/backoff|connecting/), lastError: expect.stringContaining("ECONNREFUSED") });
    expect(links.find((l) => l.secondary === 3)!.lastError).toMatch(/TLS \(psk\)/);

    // The impostor goes: #3's error changes to ECONNREFUSED, logged once too.
    impostor.close();
    impostorOpen = false;
    await until(() => failed(3).length === 2, 10_000, "the changed error logged");
    // Several more rounds of retries at reconnectMs 100 ms, then count.
    await new Promise((r) => setTimeout(r, 1500));
    expect(failed(2)).toHaveLength(1);
    expect(failed(2)[0].err).toMatch(/ECONNREFUSED/);
    expect(failed(3)).toHaveLength(2);
    expect(failed(3)[0].err).toMatch(/TLS \(psk\)/);
    expect(failed(3)[1].err).toMatch(/ECONNREFUSED/);
    expect(failed(3)[0].level).toBe(WARN);
    expect(attempts).toBeGreaterThanOrEqual(8);
  });

  it("keys: with the cluster key file at mode 0644 the RCM does not start and the CLI reaches neither subsystems nor RCM, naming the file as the subsystem does; at 0600 both work", async () => {
    cluster = TestCluster.create(await smallConfig(1, { rcm: { port: await freePort(), autoSuspend: false } }));
    const c = cluster;
    await c.startAll();
    const keyFile = path.join(c.dir, "cluster.key");
    chmodSync(keyFile, 0o644);
    const message = `cluster key file ${keyFile} is readable by group or others (mode 0644): chmod 600 ${keyFile}`;
    // The shared loader's refusal, which link-security.test.ts sees from the subsystem.
    expect(() => loadClusterKey(loadConfig(c.configFile))).toThrow(message);
    const [subsystem, rcm, status, suspend] = await Promise.all([
      tidemark(["subsystem", "--config", c.configFile, "--id", "2"]),
      tidemark(["rcm", "--config", c.configFile]),
      tidemark(["status", "--json", "--config", c.configFile]),
      tidemark(["suspend", "--config", c.configFile, "--group", "C1"]),
    ]);
    expect(subsystem.code).not.toBe(0);
    expect(subsystem.stderr).toContain(message);
    expect(rcm.code, rcm.stdout).toBe(1);
    expect(rcm.stderr).toBe(`tidemark: ${message}\n`);
    expect(suspend.code).toBe(1);
    expect(suspend.stderr).toBe(`tidemark: ${message}\n`);
    // The subsystems run (started with 0600), yet the CLI does not talk to them.
    expect(status.code).toBe(3);
    const doc = JSON.parse(status.stdout) as { subsystems: { id: number; reachable: boolean; error?: string }[] };
    expect(doc.subsystems).toEqual([1, 2].map((id) => expect.objectContaining({ id, reachable: false, error: message })));
    expect(c.alive(1) && c.alive(2)).toBe(true);

    chmodSync(keyFile, 0o600);
    const ok = await tidemark(["status", "--json", "--config", c.configFile]);
    expect(ok.code, ok.stderr).toBe(0);
    expect((JSON.parse(ok.stdout) as { subsystems: { reachable: boolean }[] }).subsystems.map((s) => s.reachable)).toEqual([true, true]);
    await c.startRcm();
    expect(await askRcm<{ history: unknown[] }>(c.topo, { op: "status" }, 10_000)).toHaveProperty("history");
  });

  it("keys: a missing cluster key file with a listener outside loopback stops the subsystem, the RCM and the CLI alike (ENOENT, naming it), and none of them writes one", async () => {
    cluster = TestCluster.create(await smallConfig(1, { rcm: { host: "0.0.0.0", port: await freePort(), autoSuspend: false } }));
    const c = cluster;
    const keyFile = path.join(c.dir, "cluster.key");
    rmSync(keyFile);
    const message = `cluster key file ${keyFile} cannot be read: ENOENT`;
    const [subsystem, rcm, status, suspend] = await Promise.all([
      tidemark(["subsystem", "--config", c.configFile, "--id", "1"]),
      tidemark(["rcm", "--config", c.configFile]),
      tidemark(["status", "--json", "--config", c.configFile]),
      tidemark(["suspend", "--config", c.configFile, "--group", "C1"]),
    ]);
    expect(subsystem.code).not.toBe(0);
    expect(subsystem.stderr).toContain(message);
    expect(rcm.code).toBe(1);
    expect(rcm.stderr).toBe(`tidemark: ${message}\n`);
    expect(suspend.code).toBe(1);
    expect(suspend.stderr).toBe(`tidemark: ${message}\n`);
    expect(status.code).toBe(3);
    const doc = JSON.parse(status.stdout) as { subsystems: { reachable: boolean; error?: string }[] };
    expect(doc.subsystems.map((s) => s.error)).toEqual([message, message]);
    expect(existsSync(keyFile)).toBe(false);
  });

  it("first key: two subsystems and the RCM starting together with no key file agree on the one key they write into var/ (links up under psk; the CLI and RCM answer)", async () => {
    cluster = TestCluster.create(await smallConfig(1, { clusterKeyFile: "var/cluster.key", rcm: { port: await freePort(), autoSuspend: false } }));
    const c = cluster;
    rmSync(path.join(c.dir, "var"), { recursive: true });
    await Promise.all([c.start(1), c.start(2), c.startRcm()]);
    const keyFile = path.join(c.dir, "var", "cluster.key");
    expect(readdirSync(path.join(c.dir, "var"))).toEqual(["cluster.key"]);
    expect(statSync(keyFile).mode & 0o777).toBe(0o600);
    expect(readFileSync(keyFile, "utf8")).toMatch(/^[0-9a-f]{64}\n$/);
    // #1 -> #2 comes up only if both hold the same key; the CLI and the RCM check theirs against the file's.
    const deadline = Date.now() + 30_000;
    let links: { state: string; tls: string }[] = [];
    while (Date.now() < deadline) {
      const r = await tidemark(["status", "--json", "--config", c.configFile]);
      expect(r.code, r.stderr + r.stdout.slice(0, 2000)).toBe(0);
      links = (JSON.parse(r.stdout) as { links: { state: string; tls: string }[] }).links;
      if (links.length === 1 && links[0].state === "up") break;
      await new Promise((res) => setTimeout(res, 200));
    }
    expect(links).toEqual([expect.objectContaining({ state: "up", tls: "psk" })]);
    expect(await askRcm<{ history: unknown[] }>(c.topo, { op: "status" }, 10_000)).toHaveProperty("history");
    expect(c.unexpectedDeaths()).toEqual([]);
  });

  it("first key: six processes loading a missing key file at the same moment, 10 rounds: each round all read one key, the file's (mode 0600), and no temporary file stays", async () => {
    // Each child loads the product's modules once, then per line on stdin loads that config's
    // cluster key (config/keys.ts) and says whether the file was missing just before.
    const child = `
      const { existsSync } = await import("node:fs");
      const path = await import("node:path");
      const { createInterface } = await import("node:readline");
      const { loadConfig } = await import(${JSON.stringify(path.join(ROOT, "config/load.ts"))});
      const { loadClusterKey } = await import(${JSON.stringify(path.join(ROOT, "config/keys.ts"))});
      process.stdout.write("ready\\n");
      for await (const file of createInterface({ input: process.stdin })) {
        const missing = !existsSync(path.join(path.dirname(file), "var", "cluster.key"));
        let out;
        try { out = { missing, key: loadClusterKey(loadConfig(file)) }; } catch (e) { out = { missing, error: String(e && e.message) }; }
        process.stdout.write(JSON.stringify(out) + "\\n");
      }`;
    const kids: ChildProcess[] = [];
    cleanups.push(() => {
      for (const k of kids) if (k.exitCode === null) k.kill("SIGKILL");
    });
    const readers = Array.from({ length: 6 }, () => {
      const k = spawn(process.execPath, ["--import", "tsx", "--input-type=module", "-e", child], { cwd: ROOT, stdio: ["pipe", "pipe", "pipe"] });
      kids.push(k);
      const lines: string[] = [];
      let stderr = "";
      k.stderr!.on("data", (d) => (stderr += d));
      createInterface({ input: k.stdout! }).on("line", (l) => void lines.push(l));
      return async () => {
        await until(() => lines.length > 0 || k.exitCode !== null, 60_000, "a child's line");
        if (lines.length === 0) throw new Error(`child exited: ${stderr}`);
        return lines.shift()!;
      };
    });
    for (const read of readers) expect(await read()).toBe("ready");
    const base = mkdtempSync(path.join(os.tmpdir(), "tidemark-first-key-"));
    cleanups.push(() => rmSync(base, { recursive: true, force: true }));
    const cfg = await smallConfig(1, { clusterKeyFile: "var/cluster.key" });
    let raced = 0;
    for (let round = 0; round < 10; round++) {
      const dir = mkdtempSync(path.join(base, `r${round}-`));
      const file = path.join(dir, "config.json");
      writeFileSync(file, JSON.stringify(cfg));
      for (const k of kids) k.stdin!.write(file + "\n");
      const answers = (await Promise.all(readers.map((r) => r()))).map((l) => JSON.parse(l) as { missing: boolean; key?: string; error?: string });
      expect(answers.filter((a) => a.error), `round ${round}`).toEqual([]);
      const onDisk = readFileSync(path.join(dir, "var", "cluster.key"), "utf8").trim();
      expect(new Set(answers.map((a) => a.key)), `round ${round}`).toEqual(new Set([onDisk]));
      expect(statSync(path.join(dir, "var", "cluster.key")).mode & 0o777).toBe(0o600);
      expect(readdirSync(path.join(dir, "var")), `round ${round}`).toEqual(["cluster.key"]);
      if (answers.filter((a) => a.missing).length >= 2) raced++;
    }
    for (const k of kids) k.stdin!.end();
    // The race happened: in some round two or more processes found no key and went to make one.
    expect(raced, "rounds in which at least two processes found no key file").toBeGreaterThan(0);
  });
});

// The link's TLS (docs/security.md) over real TCP on 127.0.0.1: mutual
// authentication with a PSK and with certificates of a cluster CA, the HMAC
// handshake inside it, and refusals (wrong PSK, a certificate of another CA,
// an identity that is not the node's, a plain-TCP client) that cost only
// their own connection and are logged with the peer's address.
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { mkdtempSync, rmSync } from "node:fs";
import { afterAll, describe, expect, it } from "vitest";
import pino from "pino";
import { connectLink, createLinkServer, LinkError, type Link } from "../../appliance/replication/link.ts";
import { pskOf, type LinkTls } from "../../appliance/replication/link-tls.ts";
import { makeCa, makeNodeCert, x509Of } from "../support/certs.ts";

const KEY = "a-cluster-key-for-the-tls-tests-0123456789";
const HOST = "127.0.0.1";
const WARN = 40;

interface LogLine {
  level: number;
  msg: string;
  peer?: string;
  err?: string;
  [k: string]: unknown;
}

const cleanups: (() => void)[] = [];
afterAll(() => {
  for (const c of cleanups) c();
});

const psk = (identity: string, key = KEY): LinkTls => ({ mode: "psk", identity, psk: pskOf(key) });

/** Server node #2 with `tls`; its links and log lines. */
async function serve(tls: LinkTls): Promise<{ port: number; links: Link[]; lines: LogLine[] }> {
  const lines: LogLine[] = [];
  const logger = pino({ level: "debug" }, { write: (s: string) => void lines.push(JSON.parse(s) as LogLine) });
  const links: Link[] = [];
  const server = createLinkServer({ key: KEY, tls, nodeId: 2, logger, handshakeTimeoutMs: 2000, onLink: (l) => void links.push(l) });
  await new Promise<void>((resolve) => server.listen(0, HOST, resolve));
  cleanups.push(() => {
    for (const l of links) l.close();
    server.close();
  });
  return { port: (server.address() as net.AddressInfo).port, links, lines };
}

const silent = pino({ level: "silent" });

async function until(f: () => boolean, ms = 3000): Promise<void> {
  const end = Date.now() + ms;
  while (!f()) {
    if (Date.now() > end) throw new Error("condition not met in time");
    await new Promise((r) => setTimeout(r, 10));
  }
}

/** The server's warnings that name this client's local port (the peer address it logs). */
const warnsFrom = (lines: LogLine[], localPort: number | undefined) => lines.filter((l) => l.level >= WARN && typeof l.peer === "string" && l.peer === `${HOST}:${localPort}`);

describe("link TLS", () => {
  it("link TLS: psk, both sides authenticated, frames flow; each side reports TLSv1.3 and the other's identity", async () => {
    const srv = await serve(psk("ss2"));
    const link = await connectLink({ host: HOST, port: srv.port, key: KEY, tls: psk("ss1"), role: "link", nodeId: 1, timeoutMs: 3000, logger: silent, peerNodeId: 2 });
    await until(() => srv.links.length === 1);
    const got: string[] = [];
    srv.links[0].on("frame", (f) => void got.push(f.type));
    link.send({ type: "heartbeat" });
    await until(() => got.length === 1);
    expect(got).toEqual(["heartbeat"]);
    expect(link.security).toEqual({ tls: "psk", protocol: "TLSv1.3", cipher: expect.stringMatching(/^TLS_/), peerIdentity: "ss2" });
    expect(srv.links[0].security).toMatchObject({ tls: "psk", protocol: "TLSv1.3", peerIdentity: "ss1" });
    expect(srv.lines.find((l) => l.msg === "link authenticated")).toMatchObject({ tls: "psk", identity: "ss1" });
    link.close();
  });

  it("link TLS: a client with a wrong PSK is refused (TM_LINK_TLS) and the server logs its address", async () => {
    const srv = await serve(psk("ss2"));
    const err = await connectLink({ host: HOST, port: srv.port, key: KEY, tls: psk("ss1", "another-cluster-key-0123456789abcdef"), role: "link", nodeId: 1, timeoutMs: 3000, logger: silent }).catch(
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(LinkError);
    expect((err as LinkError).code).toBe("TM_LINK_TLS");
    expect((err as LinkError).message).toContain(`${HOST}:${srv.port}`);
    await until(() => srv.lines.some((l) => l.msg === "refusing connection: TLS handshake failed"));
    const line = srv.lines.find((l) => l.msg === "refusing connection: TLS handshake failed")!;
    expect(line.level).toBe(WARN);
    expect(line.peer).toMatch(/^127\.0\.0\.1:\d+$/);
    expect(srv.links).toHaveLength(0);
  });

  it("link TLS: a PSK client claiming node 1 with the identity of node 7 is refused by the HMAC step, naming both", async () => {
    const srv = await serve(psk("ss2"));
    const err = await connectLink({ host: HOST, port: srv.port, key: KEY, tls: psk("ss7"), role: "link", nodeId: 1, timeoutMs: 3000, logger: silent }).catch((e: unknown) => e);
    expect((err as LinkError).code).toBe("TM_LINK_REFUSED");
    expect((err as LinkError).message).toContain('must have TLS identity "ss1"');
    await until(() => srv.lines.some((l) => /TLS identity "ss7", not "ss1"/.test(l.msg)));
    expect(srv.links).toHaveLength(0);
  });

  it("link TLS: a plain-TCP client on a TLS port is dropped and logged with its address; the server goes on", async () => {
    const srv = await serve(psk("ss2"));
    const sock = net.connect({ host: HOST, port: srv.port });
    sock.on("error", () => {});
    await new Promise<void>((r) => sock.once("connect", () => r()));
    const localPort = sock.localPort;
    sock.write(Buffer.from("TMRK not a TLS ClientHello"));
    await new Promise<void>((r) => sock.once("close", () => r()));
    await until(() => warnsFrom(srv.lines, localPort).length > 0);
    expect(warnsFrom(srv.lines, localPort)[0].msg).toBe("refusing connection: TLS handshake failed");
    const good = await connectLink({ host: HOST, port: srv.port, key: KEY, tls: psk("cli"), role: "control", nodeId: 0, timeoutMs: 3000, logger: silent });
    expect(good.security.peerIdentity).toBe("ss2");
    good.close();
  });

  it("link TLS: a ClientHello trickled a byte every 300 ms is closed at the handshake deadline (2 s), which bytes do not extend", async () => {
    const srv = await serve(psk("ss2"));
    const sock = net.connect({ host: HOST, port: srv.port });
    sock.on("error", () => {});
    await new Promise<void>((r) => sock.once("connect", () => r()));
    const localPort = sock.localPort;
    const started = Date.now();
    // A TLS handshake record header announcing 512 bytes: the server waits for the rest, which never all comes.
    const bytes = Buffer.concat([Buffer.from([0x16, 0x03, 0x01, 0x02, 0x00]), Buffer.alloc(512, 0x01)]);
    let sent = 0;
    const drip = setInterval(() => {
      if (sent < bytes.length && !sock.destroyed) sock.write(bytes.subarray(sent, ++sent));
    }, 300);
    const closedAfter = await Promise.race([
      new Promise<number>((r) => sock.once("close", () => r(Date.now() - started))),
      new Promise<number>((r) => setTimeout(() => r(-1), 8000)),
    ]);
    clearInterval(drip);
    sock.destroy();
    expect(closedAfter, `closed after ${closedAfter} ms (-1: still open at 8 s), ${sent} bytes sent`).toBeGreaterThanOrEqual(1900);
    expect(closedAfter).toBeLessThan(4000);
    await until(() => warnsFrom(srv.lines, localPort).length > 0);
    expect(warnsFrom(srv.lines, localPort)[0].msg).toMatch(/deadline|TLS handshake failed/);
  });

  describe("x509", () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), "tidemark-x509-"));
    cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
    const ca = makeCa(dir, "cluster-ca");
    const other = makeCa(dir, "other-ca");
    const ss1 = makeNodeCert(dir, ca, "ss1");
    const ss2 = makeNodeCert(dir, ca, "ss2");
    const rogue = makeNodeCert(dir, other, "ss1", "rogue-ss1");

    it("link TLS: x509, certificates of the cluster CA on both sides; identities are the CNs", async () => {
      const srv = await serve(x509Of(ca, ss2, "ss2"));
      const link = await connectLink({ host: HOST, port: srv.port, key: KEY, tls: x509Of(ca, ss1, "ss1"), role: "link", nodeId: 1, timeoutMs: 3000, logger: silent, peerNodeId: 2 });
      await until(() => srv.links.length === 1);
      expect(link.security).toMatchObject({ tls: "x509", protocol: "TLSv1.3", peerIdentity: "ss2" });
      expect(srv.links[0].security).toMatchObject({ tls: "x509", protocol: "TLSv1.3", peerIdentity: "ss1" });
      link.close();
    });

    it("link TLS: x509, a client certificate of another CA is refused and logged with its address", async () => {
      const srv = await serve(x509Of(ca, ss2, "ss2"));
      const err = await connectLink({ host: HOST, port: srv.port, key: KEY, tls: x509Of(ca, rogue, "ss1"), role: "link", nodeId: 1, timeoutMs: 3000, logger: silent }).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(LinkError);
      expect((err as LinkError).code).toBe("TM_LINK_TLS");
      expect((err as LinkError).message).toContain("refused our key or certificate");
      await until(() => srv.lines.some((l) => l.msg === "refusing connection: TLS handshake failed"));
      const line = srv.lines.find((l) => l.msg === "refusing connection: TLS handshake failed")!;
      expect(line.peer).toMatch(/^127\.0\.0\.1:\d+$/);
      expect(srv.links).toHaveLength(0);
    });

    it("link TLS: x509, a server certificate of another CA is refused by the client (TM_LINK_TLS)", async () => {
      const srv = await serve(x509Of(other, rogue, "ss2"));
      const err = await connectLink({ host: HOST, port: srv.port, key: KEY, tls: x509Of(ca, ss1, "ss1"), role: "link", nodeId: 1, timeoutMs: 3000, logger: silent }).catch((e: unknown) => e);
      expect((err as LinkError).code).toBe("TM_LINK_TLS");
      expect((err as LinkError).message).toMatch(/certificate/i);
    });
  });
});

// The pure side of docs/security.md's link claims (the sockets are
// test/integration/link-claims.test.ts's): the TLS options carry the two
// allowed suites, the TLS PSK is derived from the cluster key and differs from
// the HMAC key, and the HMAC proofs are wire.md's, under distinct labels.
import { createHmac, randomBytes } from "node:crypto";
import { chmodSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { LINK_TLS_CIPHERS, pskOf, tlsClientOptions, tlsServerOptions } from "../../appliance/replication/link-tls.ts";
import { clientMac, serverMac } from "../../appliance/replication/link.ts";
import { loadConfig } from "../../config/load.ts";
import { loadLinkSecrets } from "../../config/keys.ts";

const dirs: string[] = [];
afterAll(() => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

const hmac = (key: string | Buffer, ...parts: (string | Buffer)[]): Buffer => {
  const h = createHmac("sha256", key);
  for (const p of parts) h.update(p);
  return h.digest();
};

describe("link claims (pure)", () => {
  it("suites: LINK_TLS_CIPHERS is exactly TLS_AES_128_GCM_SHA256 and TLS_CHACHA20_POLY1305_SHA256, and the psk and x509 server and client options carry it with TLS 1.3 only", () => {
    expect(LINK_TLS_CIPHERS.split(":").sort()).toEqual(["TLS_AES_128_GCM_SHA256", "TLS_CHACHA20_POLY1305_SHA256"]);
    const psk = { mode: "psk" as const, identity: "ss1", psk: pskOf("k") };
    const x509 = { mode: "x509" as const, identity: "ss1", ca: Buffer.from("CA"), cert: Buffer.from("CERT"), key: Buffer.from("KEY") };
    for (const o of [tlsServerOptions(psk, 5000, () => true), tlsServerOptions(x509, 5000, () => true), tlsClientOptions(psk, () => {}), tlsClientOptions(x509, () => {})]) {
      expect(o).toMatchObject({ ciphers: LINK_TLS_CIPHERS, minVersion: "TLSv1.3", maxVersion: "TLSv1.3" });
    }
  });

  it('psk: the TLS PSK is HMAC-SHA256(clusterKey, "tidemark-v1 tls-psk"), 32 bytes and not the key\'s; loadLinkSecrets gives the HMAC step the key and TLS that PSK', () => {
    for (const key of ["a", "9f".repeat(32), "tidemark-default-cluster-key-change-me", "ключ"]) {
      const p = pskOf(key);
      expect(p.equals(hmac(Buffer.from(key, "utf8"), "tidemark-v1 tls-psk")), key).toBe(true);
      expect(p).toHaveLength(32);
      expect(p.equals(Buffer.from(key, "utf8")), key).toBe(false);
      expect(p.includes(Buffer.from(key, "utf8")), key).toBe(false);
    }
    expect(pskOf("key-a").equals(pskOf("key-b"))).toBe(false);

    const dir = mkdtempSync(path.join(os.tmpdir(), "tidemark-link-claims-"));
    dirs.push(dir);
    const key = randomBytes(32).toString("hex");
    writeFileSync(path.join(dir, "cluster.key"), key + "\n");
    chmodSync(path.join(dir, "cluster.key"), 0o600);
    writeFileSync(
      path.join(dir, "config.json"),
      JSON.stringify({
        clusterKeyFile: "cluster.key",
        dataDir: "data",
        subsystems: [
          { id: 1, host: "127.0.0.1", replicationPort: 31001, nbdPort: 31002, volumes: [{ name: "a", sizeMiB: 1 }] },
          { id: 2, host: "127.0.0.1", replicationPort: 31003, nbdPort: 31004, volumes: [{ name: "b", sizeMiB: 1 }] },
        ],
        groups: [{ name: "C1", pairs: [{ primary: "a", secondary: "b" }] }],
      }),
    );
    const s = loadLinkSecrets(loadConfig(path.join(dir, "config.json")), "ss1");
    expect(s.key).toBe(key);
    expect(s.tls.mode).toBe("psk");
    const tlsPsk = s.tls.mode === "psk" ? s.tls.psk : Buffer.alloc(0);
    expect(tlsPsk.equals(hmac(Buffer.from(key, "utf8"), "tidemark-v1 tls-psk"))).toBe(true);
    expect(tlsPsk.equals(Buffer.from(s.key, "utf8"))).toBe(false);
  });

  it('hmac: the proofs are HMAC-SHA256 over wire.md\'s fields under "tidemark-v1 server" and "tidemark-v1 client"; for the same nonces a server proof never equals a client proof', () => {
    const key = Buffer.from("correct horse battery staple");
    const cn = randomBytes(32);
    const sn = randomBytes(32);
    expect(serverMac(key, cn, sn, 2).equals(hmac(key, "tidemark-v1 server", cn, sn, Buffer.of(0, 2)))).toBe(true);
    expect(clientMac(key, cn, sn, "link", 1).equals(hmac(key, "tidemark-v1 client", cn, sn, Buffer.of(1), Buffer.of(0, 1)))).toBe(true);
    expect(clientMac(key, cn, sn, "control", 0).equals(hmac(key, "tidemark-v1 client", cn, sn, Buffer.of(2), Buffer.of(0, 0)))).toBe(true);
    const servers = [0, 1, 2, 0x0100, 0x0201, 0xfffe].map((id) => serverMac(key, cn, sn, id).toString("hex"));
    const clients = [
      ["link", 1],
      ["link", 2],
      ["control", 0],
    ].map(([role, id]) => clientMac(key, cn, sn, role as "link" | "control", id as number).toString("hex"));
    for (const c of clients) expect(servers).not.toContain(c);
    // A fresh nonce on either side gives a different proof.
    expect(serverMac(key, randomBytes(32), sn, 2).equals(serverMac(key, cn, sn, 2))).toBe(false);
    expect(clientMac(key, cn, randomBytes(32), "link", 1).equals(clientMac(key, cn, sn, "link", 1))).toBe(false);
  });
});

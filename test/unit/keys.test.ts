// Keys out of the config (docs/security.md, Keys): the cluster key file's
// mode, the strength rule once a listener is outside loopback, the key a
// loopback-only cluster writes on first start, and the TLS private key's mode.
// Real files in a temporary folder; loadConfig reads them as a process would.
import { chmodSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { loadConfig } from "../../config/load.ts";
import { loadClusterKey, loadLinkSecrets, writeKeyFile } from "../../config/keys.ts";
import { exposedListeners, isLoopbackHost, KEY_CHARS_MIN, WELL_KNOWN_KEYS } from "../../config/key-rules.ts";
import { TidemarkError } from "../../appliance/errors/codes.ts";

const dirs: string[] = [];
afterAll(() => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

function folder(): string {
  const d = mkdtempSync(path.join(os.tmpdir(), "tidemark-keys-"));
  dirs.push(d);
  return d;
}

/** A two-subsystem config in `dir` on `host`, with `over` merged in; returns the loaded topology. */
function topo(dir: string, host: string, over: Record<string, unknown> = {}) {
  const cfg = {
    clusterKeyFile: "cluster.key",
    dataDir: "data",
    subsystems: [
      { id: 1, host, replicationPort: 31001, nbdPort: 31002, volumes: [{ name: "a", sizeMiB: 1 }] },
      { id: 2, host, replicationPort: 31003, nbdPort: 31004, volumes: [{ name: "b", sizeMiB: 1 }] },
    ],
    groups: [{ name: "C1", pairs: [{ primary: "a", secondary: "b" }] }],
    ...over,
  };
  const file = path.join(dir, "config.json");
  writeFileSync(file, JSON.stringify(cfg));
  return loadConfig(file);
}

function keyFile(dir: string, text: string, mode: number): string {
  const f = path.join(dir, "cluster.key");
  writeFileSync(f, text + "\n");
  chmodSync(f, mode);
  return f;
}

function refusal(f: () => unknown): TidemarkError {
  try {
    f();
  } catch (err) {
    expect(err).toBeInstanceOf(TidemarkError);
    expect((err as TidemarkError).code).toBe("TM_KEY");
    return err as TidemarkError;
  }
  throw new Error("expected a TM_KEY refusal");
}

const STRONG = "9f".repeat(32);

describe("keys", () => {
  it("keys: loopback hosts are 127.0.0.0/8, ::1 and localhost; 0.0.0.0, :: and a LAN address are not", () => {
    for (const h of ["127.0.0.1", "127.3.2.1", "::1", "[::1]", "localhost", "::ffff:127.0.0.1"]) expect(isLoopbackHost(h), h).toBe(true);
    for (const h of ["0.0.0.0", "::", "10.0.0.5", "128.0.0.1", "127.0.0.256", "db.example.com"]) expect(isLoopbackHost(h), h).toBe(false);
  });

  it("keys: a cluster key file of mode 0644 is refused, naming the file and the mode", () => {
    const dir = folder();
    const f = keyFile(dir, STRONG, 0o644);
    const err = refusal(() => loadClusterKey(topo(dir, "127.0.0.1")));
    expect(err.message).toContain(f);
    expect(err.message).toContain("readable by group or others (mode 0644)");
  });

  it("keys: a cluster key file of mode 0640 is refused too; 0600 and 0400 are read", () => {
    const dir = folder();
    keyFile(dir, STRONG, 0o640);
    refusal(() => loadClusterKey(topo(dir, "127.0.0.1")));
    keyFile(dir, STRONG, 0o600);
    expect(loadClusterKey(topo(dir, "127.0.0.1"))).toBe(STRONG);
    keyFile(dir, STRONG, 0o400);
    expect(loadClusterKey(topo(dir, "127.0.0.1"))).toBe(STRONG);
  });

  it("keys: the well-known default key is refused on a bind to 0.0.0.0, naming the listener; on loopback it is accepted", () => {
    const dir = folder();
    keyFile(dir, WELL_KNOWN_KEYS[0], 0o600);
    expect(loadClusterKey(topo(dir, "127.0.0.1"))).toBe(WELL_KNOWN_KEYS[0]);
    const err = refusal(() => loadClusterKey(topo(dir, "0.0.0.0")));
    expect(err.message).toContain("well-known default key");
    expect(err.message).toContain("subsystem#1 host 0.0.0.0");
  });

  it(`keys: a key under ${KEY_CHARS_MIN} characters is refused when the RCM alone binds a LAN address`, () => {
    const dir = folder();
    keyFile(dir, "x".repeat(KEY_CHARS_MIN - 1), 0o600);
    const t = topo(dir, "127.0.0.1", { rcm: { host: "10.1.2.3", port: 31005 } });
    expect(exposedListeners(t.config)).toEqual(["rcm host 10.1.2.3"]);
    expect(refusal(() => loadClusterKey(t)).message).toContain(`${KEY_CHARS_MIN - 1} characters, fewer than ${KEY_CHARS_MIN}`);
  });

  it("keys: an inline clusterKey and linkTls off are refused outside loopback, each naming its field; both work on loopback", () => {
    const dir = folder();
    const inline = { clusterKeyFile: undefined, clusterKey: STRONG };
    expect(loadClusterKey(topo(dir, "127.0.0.1", inline))).toBe(STRONG);
    expect(refusal(() => loadClusterKey(topo(dir, "0.0.0.0", inline))).message).toMatch(/clusterKey: an inline key is refused/);
    keyFile(dir, STRONG, 0o600);
    expect(loadLinkSecrets(topo(dir, "127.0.0.1", { linkTls: { mode: "off" } }), "ss1").tls.mode).toBe("off");
    expect(refusal(() => loadClusterKey(topo(dir, "0.0.0.0", { linkTls: { mode: "off" } }))).message).toMatch(/linkTls\.mode: "off" \(plain TCP\) is refused/);
  });

  it("keys: a loopback-only cluster writes a missing key file on first start: 64 hex characters, mode 0600; a second start reads the same key", () => {
    const dir = folder();
    const t = topo(dir, "127.0.0.1");
    const key = loadClusterKey(t);
    const f = path.join(dir, "cluster.key");
    expect(key).toMatch(/^[0-9a-f]{64}$/);
    expect(statSync(f).mode & 0o777).toBe(0o600);
    expect(loadClusterKey(topo(dir, "127.0.0.1"))).toBe(key);
  });

  it("keys: a cluster with a listener outside loopback never makes its own key: a missing file is refused, naming it", () => {
    const dir = folder();
    const err = refusal(() => loadClusterKey(topo(dir, "0.0.0.0")));
    expect(err.message).toContain(path.join(dir, "cluster.key"));
    expect(err.message).toContain("ENOENT");
  });

  it("keys: writeKeyFile refuses an existing file without force and keeps it; with force it writes a new key, mode 0600", () => {
    const dir = folder();
    const f = path.join(dir, "k");
    expect(writeKeyFile(f, false)).toBe(true);
    const first = readFileSync(f, "utf8");
    expect(writeKeyFile(f, false)).toBe(false);
    expect(readFileSync(f, "utf8")).toBe(first);
    expect(writeKeyFile(f, true)).toBe(true);
    expect(readFileSync(f, "utf8")).not.toBe(first);
    expect(statSync(f).mode & 0o777).toBe(0o600);
  });

  it("keys: x509 reads the CA, the node's certificate and key with {node} replaced; a private key of mode 0644 is refused, naming it", () => {
    const dir = folder();
    keyFile(dir, STRONG, 0o600);
    writeFileSync(path.join(dir, "ca.pem"), "CA");
    writeFileSync(path.join(dir, "ss1.pem"), "CERT");
    writeFileSync(path.join(dir, "ss1.key"), "KEY");
    chmodSync(path.join(dir, "ss1.key"), 0o600);
    const x509 = { linkTls: { mode: "x509", caFile: "ca.pem", certFile: "{node}.pem", keyFile: "{node}.key" } };
    const s = loadLinkSecrets(topo(dir, "127.0.0.1", x509), "ss1");
    expect(s.tls.mode === "x509" && [s.tls.ca.toString(), s.tls.cert.toString(), s.tls.key.toString()]).toEqual(["CA", "CERT", "KEY"]);
    chmodSync(path.join(dir, "ss1.key"), 0o644);
    const err = refusal(() => loadLinkSecrets(topo(dir, "127.0.0.1", x509), "ss1"));
    expect(err.message).toContain(`linkTls.keyFile ${path.join(dir, "ss1.key")} is readable by group or others`);
  });
});

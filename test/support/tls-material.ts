// Certificates and PSK files for the NBD TLS tests, made at test time in a
// temp folder with GnuTLS's certtool (never committed): a CA, a server
// certificate for 127.0.0.1/localhost, a client certificate the CA signed,
// an untrusted self-signed client certificate, and PSK files in psktool's
// `username:hexkey` format. The client folders follow the layout libnbd's
// tls-certificates= and qemu's tls-creds-x509 dir= read.
import { execFile, spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { chmod, copyFile, mkdir, writeFile } from "node:fs/promises";
import path from "node:path";
import { promisify } from "node:util";

const run = promisify(execFile);

export function haveCerttool(area: string): boolean {
  const ok = spawnSync("certtool", ["--version"], { stdio: "ignore" }).status === 0;
  if (!ok) console.warn(`${area}: certtool is not installed; the X.509 tests are skipped (apt-get install gnutls-bin)`);
  return ok;
}

export interface TlsMaterial {
  serverCert: string;
  serverKey: string;
  caCert: string;
  /** ca-cert.pem, client-cert.pem, client-key.pem: signed by the CA. */
  clientDir: string;
  /** The same names, the client certificate self-signed (untrusted). */
  untrustedClientDir: string;
  /** keys.psk with user alice (qemu's tls-creds-psk dir= reads keys.psk). */
  pskDir: string;
  pskFile: string;
  /** alice with another key. */
  wrongPskDir: string;
  wrongPskFile: string;
}

async function template(dir: string, name: string, lines: string[]): Promise<string> {
  const f = path.join(dir, `${name}.info`);
  await writeFile(f, lines.join("\n") + "\n");
  return f;
}

async function certtool(args: string[]): Promise<void> {
  await run("certtool", args, { timeout: 60_000 });
}

export async function makePsk(dir: string, user: string): Promise<{ dir: string; file: string }> {
  await mkdir(dir, { recursive: true });
  const file = path.join(dir, "keys.psk");
  await writeFile(file, `${user}:${randomBytes(32).toString("hex")}\n`, { mode: 0o600 });
  return { dir, file };
}

export async function makeTlsMaterial(dir: string, withCerts: boolean): Promise<TlsMaterial> {
  const psk = await makePsk(path.join(dir, "psk"), "alice");
  const wrong = await makePsk(path.join(dir, "psk-wrong"), "alice");
  const m: TlsMaterial = {
    serverCert: path.join(dir, "server-cert.pem"),
    serverKey: path.join(dir, "server-key.pem"),
    caCert: path.join(dir, "ca-cert.pem"),
    clientDir: path.join(dir, "client"),
    untrustedClientDir: path.join(dir, "client-untrusted"),
    pskDir: psk.dir,
    pskFile: psk.file,
    wrongPskDir: wrong.dir,
    wrongPskFile: wrong.file,
  };
  if (!withCerts) return m;
  const caKey = path.join(dir, "ca-key.pem");
  const clientKey = path.join(dir, "client-key.pem");
  const clientCert = path.join(dir, "client-cert.pem");
  const selfCert = path.join(dir, "self-client-cert.pem");
  for (const k of [caKey, m.serverKey, clientKey]) await certtool(["--generate-privkey", "--outfile", k]);
  await chmod(m.serverKey, 0o600);
  const ca = await template(dir, "ca", ["cn = tidemark test CA", "ca", "cert_signing_key", "expiration_days = 2"]);
  await certtool(["--generate-self-signed", "--load-privkey", caKey, "--template", ca, "--outfile", m.caCert]);
  const server = await template(dir, "server", ["cn = localhost", "dns_name = localhost", "ip_address = 127.0.0.1", "tls_www_server", "encryption_key", "signing_key", "expiration_days = 2"]);
  await certtool(["--generate-certificate", "--load-ca-certificate", m.caCert, "--load-ca-privkey", caKey, "--load-privkey", m.serverKey, "--template", server, "--outfile", m.serverCert]);
  const client = await template(dir, "client", ["cn = tidemark test client", "tls_www_client", "encryption_key", "signing_key", "expiration_days = 2"]);
  await certtool(["--generate-certificate", "--load-ca-certificate", m.caCert, "--load-ca-privkey", caKey, "--load-privkey", clientKey, "--template", client, "--outfile", clientCert]);
  await certtool(["--generate-self-signed", "--load-privkey", clientKey, "--template", client, "--outfile", selfCert]);
  for (const [d, cert] of [
    [m.clientDir, clientCert],
    [m.untrustedClientDir, selfCert],
  ] as const) {
    await mkdir(d, { recursive: true });
    await copyFile(m.caCert, path.join(d, "ca-cert.pem"));
    await copyFile(cert, path.join(d, "client-cert.pem"));
    await copyFile(clientKey, path.join(d, "client-key.pem"));
    await chmod(path.join(d, "client-key.pem"), 0o600);
  }
  return m;
}

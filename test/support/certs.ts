// A cluster CA and node certificates made with the openssl command, for the
// x509 link tests: EC P-256, valid one day, CN = the node's link identity.
import { execFileSync } from "node:child_process";
import { mkdirSync, readFileSync, chmodSync } from "node:fs";
import path from "node:path";

function openssl(args: string[], cwd: string): void {
  execFileSync("openssl", args, { cwd, stdio: ["ignore", "ignore", "pipe"] });
}

/** A self-signed CA in `dir`: `${name}.pem` and `${name}.key` (mode 0600). */
export function makeCa(dir: string, name: string): { certFile: string; keyFile: string } {
  mkdirSync(dir, { recursive: true });
  openssl(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", `${name}.key`, "-out", `${name}.pem`, "-subj", `/CN=${name}`, "-days", "1"], dir);
  chmodSync(path.join(dir, `${name}.key`), 0o600);
  return { certFile: path.join(dir, `${name}.pem`), keyFile: path.join(dir, `${name}.key`) };
}

/** A certificate for `cn` signed by `ca`: `${cn}.pem`, `${cn}.key` (0600). */
export function makeNodeCert(dir: string, ca: { certFile: string; keyFile: string }, cn: string, fileBase = cn): { certFile: string; keyFile: string } {
  openssl(["req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", `${fileBase}.key`, "-out", `${fileBase}.csr`, "-subj", `/CN=${cn}`], dir);
  openssl(["x509", "-req", "-in", `${fileBase}.csr`, "-CA", ca.certFile, "-CAkey", ca.keyFile, "-CAcreateserial", "-out", `${fileBase}.pem`, "-days", "1"], dir);
  chmodSync(path.join(dir, `${fileBase}.key`), 0o600);
  return { certFile: path.join(dir, `${fileBase}.pem`), keyFile: path.join(dir, `${fileBase}.key`) };
}

export function x509Of(ca: { certFile: string }, node: { certFile: string; keyFile: string }, identity: string) {
  return { mode: "x509" as const, identity, ca: readFileSync(ca.certFile), cert: readFileSync(node.certFile), key: readFileSync(node.keyFile) };
}

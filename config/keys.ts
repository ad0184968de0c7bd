// Reads the link secrets of one process (docs/security.md): the cluster key
// from clusterKeyFile (or inline, loopback only) and the TLS material of
// linkTls, checked by config/key-rules.ts. A first start of a loopback-only
// cluster writes a fresh key file, so `npm start` needs no set-up.
// Invariant: a key file readable by group or others is never used.
import { closeSync, fsyncSync, linkSync, openSync, readFileSync, statSync, unlinkSync, writeSync, mkdirSync } from "node:fs";
import path from "node:path";
import { randomBytes } from "node:crypto";
import { tmError } from "../appliance/errors/codes.ts";
import { pskOf, type LinkIdentity, type LinkTls } from "../appliance/replication/link-tls.ts";
import type { LoadedTopology } from "./load.ts";
import { exposedListeners, KEY_RANDOM_BYTES, keyProblem, linkConfigProblem, tooOpen } from "./key-rules.ts";

export interface LinkSecrets {
  /** The cluster key: keys the HMAC handshake, and the TLS PSK in mode psk. */
  key: string;
  tls: LinkTls;
}

/** Reads a secret file, refusing it when group or others can read it. */
export function readSecretFile(file: string, what: string): Buffer {
  let mode: number;
  try {
    mode = statSync(file).mode;
  } catch (err) {
    throw tmError("TM_KEY", `${what} ${file} cannot be read: ${(err as NodeJS.ErrnoException).code ?? String(err)}`, { file });
  }
  if (tooOpen(mode)) {
    throw tmError("TM_KEY", `${what} ${file} is readable by group or others (mode ${(mode & 0o777).toString(8).padStart(4, "0")}): chmod 600 ${file}`, { file, mode: mode & 0o777 });
  }
  try {
    return readFileSync(file);
  } catch (err) {
    throw tmError("TM_KEY", `${what} ${file} cannot be read: ${(err as NodeJS.ErrnoException).code ?? String(err)}`, { file });
  }
}

function readPublicFile(file: string, what: string): Buffer {
  try {
    return readFileSync(file);
  } catch (err) {
    throw tmError("TM_KEY", `${what} ${file} cannot be read: ${(err as NodeJS.ErrnoException).code ?? String(err)}`, { file });
  }
}

/**
 * Writes a fresh key (hex of KEY_RANDOM_BYTES random bytes) with mode 0600.
 * Without `force` an existing file is refused; the write goes to a temporary
 * file linked into place, so processes starting together agree on one key
 * (the loser of the link finds the winner's whole file). Returns false if the
 * file existed (and force was not given).
 */
export function writeKeyFile(file: string, force: boolean): boolean {
  mkdirSync(path.dirname(file), { recursive: true });
  const tmp = `${file}.${process.pid}.${randomBytes(4).toString("hex")}.tmp`;
  const fd = openSync(tmp, "wx", 0o600);
  try {
    writeSync(fd, randomBytes(KEY_RANDOM_BYTES).toString("hex") + "\n");
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
  try {
    if (force) {
      try {
        unlinkSync(file);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== "ENOENT") throw err;
      }
    }
    linkSync(tmp, file);
    return true;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "EEXIST") return false;
    throw tmError("TM_KEY", `cannot write the key file ${file}: ${(err as NodeJS.ErrnoException).code ?? String(err)}`, { file });
  } finally {
    unlinkSync(tmp);
  }
}

function fileOf(topo: LoadedTopology, p: string, identity: LinkIdentity): string {
  return path.resolve(path.dirname(topo.file), p.replaceAll("{node}", identity));
}

/** The cluster key, checked; a missing key file of a loopback-only cluster is created. */
export function loadClusterKey(topo: LoadedTopology): string {
  const cfg = topo.config;
  const exposed = exposedListeners(cfg);
  const refused = linkConfigProblem(cfg, exposed);
  if (refused) throw tmError("TM_KEY", `${topo.file}: ${refused}`, { file: topo.file });
  let key: string;
  let source: string;
  if (cfg.clusterKey !== undefined) {
    key = cfg.clusterKey;
    source = `clusterKey of ${topo.file}`;
  } else {
    const file = fileOf(topo, cfg.clusterKeyFile!, "");
    source = `cluster key file ${file}`;
    // Only a cluster on one host may make its own key: elsewhere each host would make a different one.
    if (exposed.length === 0 && !existsQuiet(file)) writeKeyFile(file, false);
    key = readSecretFile(file, "cluster key file").toString("utf8").trim();
  }
  const problem = keyProblem(key, source, exposed);
  if (problem) throw tmError("TM_KEY", problem, { source });
  return key;
}

function existsQuiet(file: string): boolean {
  try {
    statSync(file);
    return true;
  } catch {
    return false;
  }
}

/** The secrets process `identity` (ss<id>, rcm, cli) uses on its links; throws TM_KEY naming the file or field. */
export function loadLinkSecrets(topo: LoadedTopology, identity: LinkIdentity): LinkSecrets {
  const key = loadClusterKey(topo);
  const t = topo.config.linkTls;
  if (t.mode === "off") return { key, tls: { mode: "off", identity } };
  if (t.mode === "psk") return { key, tls: { mode: "psk", identity, psk: pskOf(key) } };
  return {
    key,
    tls: {
      mode: "x509",
      identity,
      ca: readPublicFile(fileOf(topo, t.caFile!, identity), "linkTls.caFile"),
      cert: readPublicFile(fileOf(topo, t.certFile!, identity), "linkTls.certFile"),
      key: readSecretFile(fileOf(topo, t.keyFile!, identity), "linkTls.keyFile"),
    },
  };
}

const cache = new WeakMap<object, Map<string, LinkSecrets>>();

/** loadLinkSecrets once per config object and identity: the CLI opens a connection per request. */
export function linkSecretsOf(topo: LoadedTopology, identity: LinkIdentity): LinkSecrets {
  let m = cache.get(topo.config);
  if (!m) cache.set(topo.config, (m = new Map()));
  let s = m.get(identity);
  if (!s) m.set(identity, (s = loadLinkSecrets(topo, identity)));
  return s;
}

// What makes a cluster key acceptable (docs/security.md, Keys): pure rules
// over the config and the key's text; config/keys.ts reads the files.
// Invariant: a cluster with a listener outside loopback never runs on a weak
// key, the well-known key, an inline key or plain TCP.
import type { Config } from "./schema.ts";

/** Characters a key needs once any listener is outside loopback; `tidemark keygen` writes 64 (32 random bytes in hex). */
export const KEY_CHARS_MIN = 32;
/** Bytes of randomness `tidemark keygen` and a first start write. */
export const KEY_RANDOM_BYTES = 32;

/** Keys published with tidemark (the old config/default.json's): anyone has them. */
export const WELL_KNOWN_KEYS: readonly string[] = ["tidemark-default-cluster-key-change-me"];

/** 127.0.0.0/8, ::1 and the name localhost (which resolves to them). */
export function isLoopbackHost(host: string): boolean {
  const h = host.replace(/^\[(.*)\]$/, "$1").toLowerCase();
  if (h === "localhost" || h === "::1" || h === "0:0:0:0:0:0:0:1") return true;
  const m = /^127\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/.exec(h) ?? /^::ffff:127\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/.exec(h);
  return !!m && m.slice(1).every((x) => Number(x) <= 255);
}

/** The config's listeners outside loopback, named as an admin reads them ("subsystem#3 host 0.0.0.0"); empty: loopback only. */
export function exposedListeners(config: Config): string[] {
  const out: string[] = [];
  for (const s of config.subsystems) {
    if (!isLoopbackHost(s.host)) out.push(`subsystem#${s.id} host ${s.host}`);
    if (s.linkEndpoint && !isLoopbackHost(s.linkEndpoint.host)) out.push(`subsystem#${s.id} linkEndpoint ${s.linkEndpoint.host}`);
  }
  if (config.rcm && !isLoopbackHost(config.rcm.host)) out.push(`rcm host ${config.rcm.host}`);
  return out;
}

/** Why `key` (from `source`) may not be used, or null. `exposed` is exposedListeners(config). */
export function keyProblem(key: string, source: string, exposed: string[]): string | null {
  if (key.length === 0) return `${source} is empty`;
  if (exposed.length === 0) return null;
  const why = `a listener is outside loopback (${exposed[0]})`;
  if (WELL_KNOWN_KEYS.includes(key)) return `${source} holds the well-known default key, refused because ${why}: write a fresh one with \`tidemark keygen\``;
  if (key.length < KEY_CHARS_MIN) return `${source} holds ${key.length} characters, fewer than ${KEY_CHARS_MIN}, refused because ${why}: write a fresh one with \`tidemark keygen\``;
  return null;
}

/** Why the config's link settings may not be used with these listeners, or null (the key itself is keyProblem's). */
export function linkConfigProblem(config: Config, exposed: string[]): string | null {
  if (exposed.length === 0) return null;
  if (config.clusterKey !== undefined) return `clusterKey: an inline key is refused because a listener is outside loopback (${exposed[0]}): move it to a file named by clusterKeyFile (mode 0600)`;
  if (config.linkTls.mode === "off") return `linkTls.mode: "off" (plain TCP) is refused because a listener is outside loopback (${exposed[0]}): use "psk" or "x509"`;
  return null;
}

/** A file mode that lets group or others read (or write) it. */
export function tooOpen(mode: number): boolean {
  return (mode & 0o077) !== 0;
}

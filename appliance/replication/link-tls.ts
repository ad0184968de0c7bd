// TLS for links and control connections (docs/security.md): the options Node's
// tls module gets for each mode, and what a connection reports of its TLS
// session (status, logs). Pure: the secrets come in as bytes (config/keys.ts
// reads the files); the sockets are link.ts's.
// Invariants: TLS 1.3 only, both sides authenticated (a PSK both hold, or a
// certificate the cluster CA signed on each side); "off" is plain TCP and is
// refused by config/keys.ts unless every listener is on loopback.
import { createHmac } from "node:crypto";
import type tls from "node:tls";

/** A process's name on the links: `ss<id>` for a subsystem, `rcm`, `cli`; a certificate's CN. */
export type LinkIdentity = string;

export type LinkTls =
  | { mode: "off"; identity: LinkIdentity }
  /** psk: the 32-byte key derived from the cluster key (pskOf); identity is sent in the clear in the ClientHello. */
  | { mode: "psk"; identity: LinkIdentity; psk: Buffer }
  /** x509: PEM bytes of the cluster CA, this process's certificate and its private key. */
  | { mode: "x509"; identity: LinkIdentity; ca: Buffer; cert: Buffer; key: Buffer };

export type LinkTlsMode = LinkTls["mode"];

/** What status shows of one connection's security. */
export interface LinkSecurity {
  tls: LinkTlsMode;
  /** e.g. "TLSv1.3"; null without TLS. */
  protocol: string | null;
  cipher: string | null;
  /** The peer's PSK identity or certificate CN; null without TLS (the HMAC handshake's node id is all there is). */
  peerIdentity: string | null;
}

/**
 * TLS 1.3 suites with a SHA-256 hash only: an external PSK is bound to
 * SHA-256 in OpenSSL, so a SHA-384 suite fails the PSK handshake (measured:
 * TLS_AES_256_GCM_SHA384 gets "handshake failure").
 */
export const LINK_TLS_CIPHERS = "TLS_AES_128_GCM_SHA256:TLS_CHACHA20_POLY1305_SHA256";

const PSK_LABEL = "tidemark-v1 tls-psk";

/** The TLS PSK: HMAC-SHA256(clusterKey, label), so the TLS key and the handshake's HMAC key are not the same bytes. */
export function pskOf(clusterKey: string): Buffer {
  return createHmac("sha256", Buffer.from(clusterKey, "utf8")).update(PSK_LABEL).digest();
}

/** Identities a link may claim: a subsystem, the RCM or the CLI (letters, digits, '-', '.', at most 64). */
const IDENTITY = /^[A-Za-z0-9][A-Za-z0-9.-]{0,63}$/;

export function isLinkIdentity(s: string): boolean {
  return IDENTITY.test(s);
}

/** The identity a replication link from or to subsystem `nodeId` must have. */
export function subsystemIdentity(nodeId: number): LinkIdentity {
  return `ss${nodeId}`;
}

/** Both sides' common options: TLS 1.3, the suites above, no session tickets (links are long-lived). */
const COMMON = { minVersion: "TLSv1.3", maxVersion: "TLSv1.3", ciphers: LINK_TLS_CIPHERS } as const;

/**
 * A PSK context's certificate authorities: none. PSK peers exchange no certificates, so no CA is
 * ever consulted; but a context given no `ca` gets Node's whole root store (some 140 certificates,
 * and NODE_EXTRA_CA_CERTS's), parsed at the process's first TLS connection or server: most of the
 * work `tidemark status` did after Node's own start (docs/benchmarks.md, CLI start).
 */
const PSK_NO_CA: string[] = [];

/**
 * Server options. `onPskIdentity` hears the identity a PSK client claimed (the
 * socket has no getter for it); it returns false to refuse that identity.
 */
export function tlsServerOptions(t: Exclude<LinkTls, { mode: "off" }>, handshakeTimeoutMs: number, onPskIdentity: (socket: tls.TLSSocket, identity: string) => boolean): tls.TlsOptions {
  if (t.mode === "psk") {
    return {
      ...COMMON,
      ca: PSK_NO_CA,
      handshakeTimeout: handshakeTimeoutMs,
      pskIdentityHint: t.identity,
      pskCallback: (socket: tls.TLSSocket, identity: string) => (isLinkIdentity(identity) && onPskIdentity(socket, identity) ? t.psk : null),
    };
  }
  return { ...COMMON, handshakeTimeout: handshakeTimeoutMs, ca: t.ca, cert: t.cert, key: t.key, requestCert: true, rejectUnauthorized: true };
}

/** Client options; `onPskHint` hears the server's identity (its PSK hint). */
export function tlsClientOptions(t: Exclude<LinkTls, { mode: "off" }>, onPskHint: (hint: string | null) => void): tls.ConnectionOptions {
  if (t.mode === "psk") {
    return {
      ...COMMON,
      ca: PSK_NO_CA,
      pskCallback: (hint: string | null) => {
        onPskHint(hint);
        return { psk: t.psk, identity: t.identity };
      },
      // No certificate in PSK mode: the PSK is the server's proof.
      checkServerIdentity: () => undefined,
    };
  }
  // The CA is the trust: a certificate names a node (CN), not a host name, so
  // the name check is the link's own (peer identity against the node id).
  return { ...COMMON, ca: t.ca, cert: t.cert, key: t.key, rejectUnauthorized: true, checkServerIdentity: () => undefined };
}

/** The CN of a peer certificate, or null. */
export function certIdentity(socket: tls.TLSSocket): string | null {
  const cn = socket.getPeerCertificate()?.subject?.CN;
  return typeof cn === "string" ? cn : Array.isArray(cn) ? (cn[0] ?? null) : null;
}

export function securityOf(mode: LinkTlsMode, socket: tls.TLSSocket | null, peerIdentity: string | null): LinkSecurity {
  if (mode === "off" || socket === null) return { tls: "off", protocol: null, cipher: null, peerIdentity: null };
  return { tls: mode, protocol: socket.getProtocol() ?? null, cipher: socket.getCipher()?.name ?? null, peerIdentity };
}

// NBD over TLS (NBD_OPT_STARTTLS) for one server: reads the certificate, key,
// client CA or PSK file once at start and builds the options each connection
// upgrades its socket with. A key or PSK file that group or others can read
// is refused, as ssh refuses such a key: the subsystem does not start.
import { readFileSync, statSync } from "node:fs";
import tls from "node:tls";
import { tmError } from "../errors/codes.ts";
import { parsePskFile } from "./psk-file.ts";

/** nbdkit's --tls: off (STARTTLS refused), on (offered), require (nothing else before it). */
export type NbdTlsMode = "off" | "on" | "require";

export interface NbdTlsFiles {
  /** PEM server certificate (chain) and its private key: X.509 mode. */
  certFile?: string;
  keyFile?: string;
  /** PEM CA bundle: when set, clients must present a certificate it signed. */
  caFile?: string;
  /** `username:hexkey` lines (psktool): PSK mode, exclusive with certFile. */
  pskFile?: string;
}

export interface NbdTls {
  mode: "on" | "require";
  kind: "x509" | "psk";
  /** Options for `new tls.TLSSocket(socket, options)` on the server side. */
  socketOptions: tls.TLSSocketOptions;
}

/**
 * TLS-PSK as GnuTLS clients (libnbd, qemu) offer it. Measured with libnbd
 * 1.14 (nbdinfo) and qemu-img: they negotiate TLS 1.3 with Node, whose
 * OpenSSL hands a TLS 1.3 external PSK to the same pskCallback when the
 * suite hashes with SHA-256 (GnuTLS's PSK default), e.g.
 * TLS_CHACHA20_POLY1305_SHA256. For TLS 1.2 clients the (EC)DHE-PSK and
 * PSK AEAD suites below are enabled (OpenSSL enables no PSK suite unasked).
 */
const PSK_CIPHERS = [
  "ECDHE-PSK-CHACHA20-POLY1305",
  "DHE-PSK-AES256-GCM-SHA384",
  "DHE-PSK-AES128-GCM-SHA256",
  "PSK-AES256-GCM-SHA384",
  "PSK-AES128-GCM-SHA256",
  "ECDHE-PSK-AES256-CBC-SHA384",
  "ECDHE-PSK-AES128-CBC-SHA256",
].join(":");

function readChecked(what: string, file: string, secret: boolean): Buffer {
  let mode: number;
  try {
    mode = statSync(file).mode;
  } catch (err) {
    throw tmError("TM_NBD_TLS_CONFIG", `nbdTls.${what} ${file}: ${(err as Error).message}`, { file }, { cause: err });
  }
  if (secret && (mode & 0o077) !== 0) {
    throw tmError(
      "TM_NBD_TLS_CONFIG",
      `nbdTls.${what} ${file} is readable by group or others (mode ${(mode & 0o777).toString(8)}): chmod 600 it`,
      { file, mode: (mode & 0o777).toString(8) },
    );
  }
  try {
    return readFileSync(file);
  } catch (err) {
    throw tmError("TM_NBD_TLS_CONFIG", `nbdTls.${what} ${file}: ${(err as Error).message}`, { file }, { cause: err });
  }
}

/** Reads and checks the files; undefined when mode is off. Throws TM_NBD_TLS_CONFIG naming the file. */
export function loadNbdTls(mode: NbdTlsMode, files: NbdTlsFiles): NbdTls | undefined {
  if (mode === "off") return undefined;
  if (files.pskFile !== undefined) {
    const parsed = parsePskFile(readChecked("pskFile", files.pskFile, true).toString("utf8"));
    if (!parsed.ok) throw tmError("TM_NBD_TLS_CONFIG", `nbdTls.pskFile ${files.pskFile}: ${parsed.reason}`, { file: files.pskFile });
    const keys = parsed.keys;
    // DHE-PSK needs finite-field parameters: without them OpenSSL silently
    // leaves those suites out ("auto": its built-in groups sized to the key).
    const secureContext = tls.createSecureContext({ ciphers: PSK_CIPHERS, minVersion: "TLSv1.2", maxVersion: "TLSv1.3", dhparam: "auto" });
    return {
      mode,
      kind: "psk",
      socketOptions: {
        isServer: true,
        secureContext,
        // An unknown identity gets null: the handshake fails and is logged.
        pskCallback: (_socket: tls.TLSSocket, identity: string) => keys.get(identity) ?? null,
      } as tls.TLSSocketOptions,
    };
  }
  if (files.certFile === undefined || files.keyFile === undefined) {
    throw tmError("TM_NBD_TLS_CONFIG", `nbdTls: mode ${mode} needs certFile and keyFile, or pskFile`, {});
  }
  const cert = readChecked("certFile", files.certFile, false);
  const key = readChecked("keyFile", files.keyFile, true);
  const ca = files.caFile === undefined ? undefined : readChecked("caFile", files.caFile, false);
  let secureContext: tls.SecureContext;
  try {
    secureContext = tls.createSecureContext({ cert, key, ca, minVersion: "TLSv1.2" });
  } catch (err) {
    throw tmError("TM_NBD_TLS_CONFIG", `nbdTls: certFile ${files.certFile} with keyFile ${files.keyFile}: ${(err as Error).message}`, { file: files.certFile }, { cause: err });
  }
  return {
    mode,
    kind: "x509",
    socketOptions: { isServer: true, secureContext, requestCert: ca !== undefined, rejectUnauthorized: ca !== undefined },
  };
}

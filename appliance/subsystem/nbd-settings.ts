// The subsystem's config (nbdTls, nbdLimits) turned into NbdServer options:
// TLS file paths resolved from the config file's folder and read at start.
import path from "node:path";
import type { NbdLimitsConfig, NbdTlsConfig } from "../../config/nbd-schema.ts";
import type { NbdServerOptions } from "../nbd/export.ts";
import { loadNbdTls, type NbdTls } from "../nbd/tls-setup.ts";

/** Reads and checks the TLS files (throws TM_NBD_TLS_CONFIG naming the file); undefined when off. */
export function loadSubsystemNbdTls(configFile: string, t: NbdTlsConfig | undefined): NbdTls | undefined {
  if (t === undefined || t.mode === "off") return undefined;
  const at = (f: string | undefined) => (f === undefined ? undefined : path.resolve(path.dirname(configFile), f));
  return loadNbdTls(t.mode, { certFile: at(t.certFile), keyFile: at(t.keyFile), caFile: at(t.caFile), pskFile: at(t.pskFile) });
}

export function nbdServerSettings(limits: NbdLimitsConfig | undefined, tls: NbdTls | undefined): Pick<NbdServerOptions, "limits" | "handshakeTimeoutMs" | "tlsMode" | "tls"> {
  const { handshakeTimeoutMs, ...rest } = limits ?? {};
  return { limits: rest, handshakeTimeoutMs, tlsMode: tls?.mode ?? "off", tls };
}

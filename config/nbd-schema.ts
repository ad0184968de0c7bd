// A subsystem's NBD server settings beyond its port: TLS (nbdkit's --tls
// meaning) and the server's bounds (docs/nbd.md, Limits). Kept apart from
// schema.ts so the NBD settings read in one place. Pure: no I/O (the files
// are read and their modes checked by appliance/nbd/tls-setup.ts at start).
import * as z from "zod/mini";
import "./zod-messages.ts";

const file = z.string().check(z.minLength(1));

export const nbdTlsSchema = z
  .strictObject({
    /** off: STARTTLS refused; on: offered, cleartext allowed; require: nothing but STARTTLS and ABORT before TLS. */
    mode: z._default(z.enum(["off", "on", "require"]), "off"),
    /** PEM server certificate (chain) and private key; relative paths from the config file's folder. */
    certFile: z.optional(file),
    keyFile: z.optional(file),
    /** PEM CA bundle: when set, a client must present a certificate it signed. */
    caFile: z.optional(file),
    /** psktool's `username:hexkey` lines (as nbdkit --tls-psk and qemu's tls-creds-psk read). */
    pskFile: z.optional(file),
  })
  .check(
    z.superRefine((t, ctx) => {
      const x509 = t.certFile !== undefined || t.keyFile !== undefined;
      if (t.pskFile !== undefined && (x509 || t.caFile !== undefined)) {
        ctx.addIssue({ code: "custom", path: ["pskFile"], message: "pskFile excludes certFile, keyFile and caFile: one kind of credentials per server" });
      } else if (x509 && (t.certFile === undefined || t.keyFile === undefined)) {
        ctx.addIssue({ code: "custom", path: [t.certFile === undefined ? "certFile" : "keyFile"], message: "certFile and keyFile go together" });
      } else if (t.mode !== "off" && t.pskFile === undefined && !x509) {
        ctx.addIssue({ code: "custom", path: ["mode"], message: `mode ${t.mode} needs certFile and keyFile, or pskFile` });
      } else if (t.caFile !== undefined && !x509) {
        ctx.addIssue({ code: "custom", path: ["caFile"], message: "caFile needs certFile and keyFile" });
      }
    }),
  );

const MiB = 1024 * 1024;
/** classic zod's z.number().int().min(min).max(max), its checks in the same order. */
const intIn = (min: number, max?: number) => z.number().check(z.int(), z.minimum(min), ...(max === undefined ? [] : [z.maximum(max)]));

export const nbdLimitsSchema = z.strictObject({
  /** Bytes held for clients across all connections; at least two 32 MiB requests (each charged 2 KiB more: REQUEST_COST_BYTES). */
  bufferBytesMax: z._default(intIn(64 * MiB + 4096), 256 * MiB),
  /** What one peer address's connections may hold of it together (capped at bufferBytesMax); at least one 32 MiB request. */
  bufferBytesPerPeerMax: z._default(intIn(32 * MiB + 2048), 128 * MiB),
  connectionsMax: z._default(intIn(1, 65536), 512),
  connectionsPerPeerMax: z._default(intIn(1, 65536), 64),
  connectionsPerExportMax: z._default(intIn(1, 65536), 64),
  /** Handshake (TLS included) deadline from accept. */
  handshakeTimeoutMs: z._default(intIn(100, 600_000), 30_000),
  /** A request half received, or replies not taken, for this long closes the connection. */
  stallTimeoutMs: z._default(intIn(100, 3_600_000), 30_000),
  /** Nothing in flight for this long closes the connection; 0 never (hosts idle for hours). */
  idleTimeoutMs: z._default(intIn(0, 7 * 24 * 3_600_000), 0),
});

export type NbdTlsConfig = z.infer<typeof nbdTlsSchema>;
export type NbdLimitsConfig = z.infer<typeof nbdLimitsSchema>;

// A subsystem's NBD server settings beyond its port: TLS (nbdkit's --tls
// meaning) and the server's bounds (docs/nbd.md, Limits). Kept apart from
// schema.ts so the NBD settings read in one place. Pure: no I/O (the files
// are read and their modes checked by appliance/nbd/tls-setup.ts at start).
import { z } from "zod";

const file = z.string().min(1);

export const nbdTlsSchema = z
  .object({
    /** off: STARTTLS refused; on: offered, cleartext allowed; require: nothing but STARTTLS and ABORT before TLS. */
    mode: z.enum(["off", "on", "require"]).default("off"),
    /** PEM server certificate (chain) and private key; relative paths from the config file's folder. */
    certFile: file.optional(),
    keyFile: file.optional(),
    /** PEM CA bundle: when set, a client must present a certificate it signed. */
    caFile: file.optional(),
    /** psktool's `username:hexkey` lines (as nbdkit --tls-psk and qemu's tls-creds-psk read). */
    pskFile: file.optional(),
  })
  .strict()
  .superRefine((t, ctx) => {
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
  });

const MiB = 1024 * 1024;

export const nbdLimitsSchema = z
  .object({
    /** Bytes held for clients across all connections; at least two 32 MiB requests (each charged 2 KiB more: REQUEST_COST_BYTES). */
    bufferBytesMax: z.number().int().min(64 * MiB + 4096).default(256 * MiB),
    /** What one peer address's connections may hold of it together (capped at bufferBytesMax); at least one 32 MiB request. */
    bufferBytesPerPeerMax: z.number().int().min(32 * MiB + 2048).default(128 * MiB),
    connectionsMax: z.number().int().min(1).max(65536).default(512),
    connectionsPerPeerMax: z.number().int().min(1).max(65536).default(64),
    connectionsPerExportMax: z.number().int().min(1).max(65536).default(64),
    /** Handshake (TLS included) deadline from accept. */
    handshakeTimeoutMs: z.number().int().min(100).max(600_000).default(30_000),
    /** A request half received, or replies not taken, for this long closes the connection. */
    stallTimeoutMs: z.number().int().min(100).max(3_600_000).default(30_000),
    /** Nothing in flight for this long closes the connection; 0 never (hosts idle for hours). */
    idleTimeoutMs: z.number().int().min(0).max(7 * 24 * 3_600_000).default(0),
  })
  .strict();

export type NbdTlsConfig = z.infer<typeof nbdTlsSchema>;
export type NbdLimitsConfig = z.infer<typeof nbdLimitsSchema>;

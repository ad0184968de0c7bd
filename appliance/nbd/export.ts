// What the NBD server serves: an export is a byte range with read, write,
// zero, trim and flush. The server validates every request (range, alignment,
// read-only) before it calls an export, so an export sees only valid requests.
import type { Logger } from "pino";
import type { NbdTls, NbdTlsMode } from "./tls-setup.ts";

export interface NbdExport {
  readonly name: string;
  readonly sizeBytes: number;
  readonly description?: string;
  /** Evaluated at the handshake: NBD flags are fixed for the life of a connection. */
  isReadOnly(): boolean;
  /** Resolves with exactly `length` bytes. */
  read(offset: number, length: number): Promise<Buffer>;
  write(offset: number, data: Buffer, fua: boolean): Promise<void>;
  writeZeroes(offset: number, length: number, fua: boolean): Promise<void>;
  /** A hint: the range's contents are undefined afterwards until rewritten. */
  trim(offset: number, length: number, fua: boolean): Promise<void>;
  /** Durable: every write completed before the call, on any connection, is on stable storage when this resolves. */
  flush(): Promise<void>;
}

export interface NbdExportProvider {
  get(name: string): NbdExport | undefined;
  list(): NbdExport[];
  /** The export an empty name selects; none configured means an empty name is refused. */
  defaultExport?: string;
}

export interface NbdServerOptions {
  exports: NbdExportProvider;
  logger: Logger;
  /** Largest READ/WRITE payload accepted and advertised (NBD_INFO_BLOCK_SIZE maximum); 4096 ..= 32 MiB. */
  maxPayloadBytes: number;
  /** A client that has not finished the handshake by then (a deadline from accept) is disconnected. Default 30 s. */
  handshakeTimeoutMs?: number;
  /** Bounds and timeouts; each field defaults to NBD_LIMITS_DEFAULT's. */
  limits?: Partial<NbdLimits>;
  /** STARTTLS: "off" (default) refuses it; "on" or "require" need `tls`. */
  tlsMode?: NbdTlsMode;
  tls?: NbdTls;
  /** Monotonic milliseconds; default performance.now. */
  now?: () => number;
}

/** The server-wide and per-connection bounds; docs/nbd.md, Limits, has each with its config name. */
export interface NbdLimits {
  /** Bytes held for clients across all connections (payloads, read replies); at least 64 MiB. */
  bufferBytesMax: number;
  /** Of bufferBytesMax, what the connections of one peer address may hold together; at least one 32 MiB request. */
  bufferBytesPerPeerMax: number;
  connectionsMax: number;
  connectionsPerPeerMax: number;
  connectionsPerExportMax: number;
  stallTimeoutMs: number;
  /** 0: an idle connection stays (a host's mounted disk may be idle for hours). */
  idleTimeoutMs: number;
}

export const NBD_LIMITS_DEFAULT: NbdLimits = {
  bufferBytesMax: 256 * 1024 * 1024,
  bufferBytesPerPeerMax: 128 * 1024 * 1024,
  connectionsMax: 512,
  connectionsPerPeerMax: 64,
  connectionsPerExportMax: 64,
  stallTimeoutMs: 30_000,
  idleTimeoutMs: 0,
};

// What the NBD server serves: an export is a byte range with read, write,
// zero, trim and flush. The server validates every request (range, alignment,
// read-only) before it calls an export, so an export sees only valid requests.
import type { Logger } from "pino";

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
  /** A client that has not finished the handshake by then is disconnected. Default 30 s. */
  handshakeTimeoutMs?: number;
}

// An NbdExport over a real file, for tests: one FileHandle shared by every
// connection, so flush (fdatasync) covers writes from all of them, which is
// what CAN_MULTI_CONN promises. Trim is a no-op hint; zeroes are written.
import { open, type FileHandle } from "node:fs/promises";
import type { NbdExport, NbdExportProvider } from "../../appliance/nbd/server.ts";

/** Zeroes are written in pieces of this size so a huge WRITE_ZEROES stays bounded in memory. */
const ZERO_CHUNK_BYTES = 1024 * 1024;

export interface FileExportOptions {
  name: string;
  description?: string;
  readOnly?: boolean;
  /** Creates or resizes the file to this size; default: the file's current size. */
  sizeBytes?: number;
}

export class FileExport implements NbdExport {
  private readOnly: boolean;

  private constructor(
    private readonly fh: FileHandle,
    readonly name: string,
    readonly sizeBytes: number,
    readonly description: string | undefined,
    readOnly: boolean,
  ) {
    this.readOnly = readOnly;
  }

  static async open(path: string, o: FileExportOptions): Promise<FileExport> {
    if (o.sizeBytes !== undefined) {
      // "a" creates the file if needed; the export itself is opened without O_APPEND.
      const sizer = await open(path, "a");
      await sizer.truncate(o.sizeBytes);
      await sizer.close();
    }
    const handle = await open(path, o.readOnly ? "r" : "r+");
    const size = (await handle.stat()).size;
    return new FileExport(handle, o.name, size, o.description, o.readOnly ?? false);
  }

  isReadOnly(): boolean {
    return this.readOnly;
  }

  /** For tests: takes effect at the next handshake, like a takeover would. */
  setReadOnly(readOnly: boolean): void {
    this.readOnly = readOnly;
  }

  async read(offset: number, length: number): Promise<Buffer> {
    const buf = Buffer.alloc(length);
    let at = 0;
    while (at < length) {
      const { bytesRead } = await this.fh.read(buf, at, length - at, offset + at);
      if (bytesRead === 0) break; // Past the file's end reads as zeroes.
      at += bytesRead;
    }
    return buf;
  }

  async write(offset: number, data: Buffer, fua: boolean): Promise<void> {
    let at = 0;
    while (at < data.length) {
      const { bytesWritten } = await this.fh.write(data, at, data.length - at, offset + at);
      at += bytesWritten;
    }
    if (fua) await this.fh.datasync();
  }

  async writeZeroes(offset: number, length: number, fua: boolean): Promise<void> {
    const zeroes = Buffer.alloc(Math.min(length, ZERO_CHUNK_BYTES));
    for (let at = 0; at < length; at += zeroes.length) {
      await this.write(offset + at, zeroes.subarray(0, Math.min(zeroes.length, length - at)), false);
    }
    if (fua) await this.fh.datasync();
  }

  async trim(_offset: number, _length: number, _fua: boolean): Promise<void> {
    // A hint (proto.md): ignoring it is allowed, and nothing is written, so FUA has nothing to persist.
  }

  async flush(): Promise<void> {
    await this.fh.datasync();
  }

  async close(): Promise<void> {
    await this.fh.close();
  }
}

export function fileExportProvider(exports: readonly NbdExport[], defaultExport?: string): NbdExportProvider {
  const byName = new Map(exports.map((e) => [e.name, e]));
  return { get: (name) => byName.get(name), list: () => [...byName.values()], defaultExport };
}

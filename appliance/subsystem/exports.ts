// The NBD exports of one subsystem: the NBD server knows nothing of
// replication, so the subsystem hands it one export per volume whose write
// path is either the primary's replicated write, a plain volume (in no
// pair), or nothing (a secondary volume is read-only while paired).
import type { Volume } from "../../disks/volume.ts";
import type { NbdExport, NbdExportProvider } from "../nbd/export.ts";
import type { PrimaryEngine } from "../primary/primary.ts";
import type { SecondaryEngine } from "../secondary/secondary.ts";

export function primaryExport(v: Volume, engine: PrimaryEngine): NbdExport {
  return {
    name: v.name,
    sizeBytes: v.sizeBytes,
    description: `tidemark primary volume ${v.name}`,
    // After a takeover the old primary is read-only for hosts that reconnect.
    isReadOnly: () => !engine.isWritable(v.name),
    // A failed primary volume answers EIO (primary.ts, failedVolumes).
    read: (offset, length) => engine.read(v.name, offset, length),
    write: (offset, data, fua) => engine.write(v.name, offset, data.length, data, fua),
    // A trim is replicated as zeroes, so primary and secondary read the same.
    writeZeroes: (offset, length, fua) => engine.write(v.name, offset, length, null, fua),
    trim: (offset, length, fua) => engine.write(v.name, offset, length, null, fua),
    flush: () => engine.flush(v.name),
  };
}

export function plainExport(v: Volume): NbdExport {
  const fuaSync = async (fua: boolean) => {
    if (fua) await v.sync();
  };
  return {
    name: v.name,
    sizeBytes: v.sizeBytes,
    description: `tidemark volume ${v.name} (not replicated)`,
    isReadOnly: () => false,
    read: (offset, length) => v.read(offset, length),
    write: async (offset, data, fua) => {
      await v.write(offset, data);
      await fuaSync(fua);
    },
    writeZeroes: async (offset, length, fua) => {
      await v.writeZeroes(offset, length);
      await fuaSync(fua);
    },
    trim: async (offset, length, fua) => {
      await v.writeZeroes(offset, length);
      await fuaSync(fua);
    },
    flush: () => v.sync(),
  };
}

/**
 * A secondary volume: read-only while its group replicates; after a takeover
 * hosts write it, and every write is marked in the secondary's bitmap.
 */
export function secondaryExport(v: Volume, engine: SecondaryEngine): NbdExport {
  return {
    name: v.name,
    sizeBytes: v.sizeBytes,
    description: `tidemark secondary volume ${v.name}`,
    isReadOnly: () => !engine.isWritable(v.name),
    read: (offset, length) => v.read(offset, length),
    write: async (offset, data, fua) => {
      await engine.hostWrite(v.name, offset, data.length, data);
      if (fua) await v.sync();
    },
    writeZeroes: async (offset, length, fua) => {
      await engine.hostWrite(v.name, offset, length, null);
      if (fua) await v.sync();
    },
    trim: async (offset, length, fua) => {
      await engine.hostWrite(v.name, offset, length, null);
      if (fua) await v.sync();
    },
    flush: () => v.sync(),
  };
}

export class ExportTable implements NbdExportProvider {
  private readonly byName = new Map<string, NbdExport>();
  constructor(readonly defaultExport?: string) {}
  add(e: NbdExport): void {
    this.byName.set(e.name, e);
  }
  get(name: string): NbdExport | undefined {
    return this.byName.get(name);
  }
  list(): NbdExport[] {
    return [...this.byName.values()];
  }
}

/** Which engine holds a volume right now; a failback changes the answer. */
export interface Roles {
  primary: PrimaryEngine | null;
  secondary: SecondaryEngine | null;
}

/**
 * One export per volume for the life of the process: every request asks the
 * roles of the moment, so a connection made before a failback writes through
 * the engine that holds the volume after it, never through a stopped one.
 */
export function volumeExport(v: Volume, roles: () => Roles): NbdExport {
  const plain = plainExport(v);
  // One export object per engine, not one per request: this is the write path.
  let cache: { engine: unknown; exp: NbdExport } | null = null;
  const route = (): NbdExport => {
    const r = roles();
    const engine = r.primary?.hasVolume(v.name) ? r.primary : r.secondary?.hasVolume(v.name) ? r.secondary : null;
    if (cache?.engine !== engine) {
      let exp = plain;
      if (r.primary && engine === r.primary) exp = primaryExport(v, r.primary);
      else if (r.secondary && engine === r.secondary) exp = secondaryExport(v, r.secondary);
      cache = { engine, exp };
    }
    return cache.exp;
  };
  return {
    name: v.name,
    sizeBytes: v.sizeBytes,
    get description() {
      return route().description;
    },
    isReadOnly: () => route().isReadOnly(),
    read: (offset, length) => route().read(offset, length),
    write: (offset, data, fua) => route().write(offset, data, fua),
    writeZeroes: (offset, length, fua) => route().writeZeroes(offset, length, fua),
    trim: (offset, length, fua) => route().trim(offset, length, fua),
    flush: () => route().flush(),
  };
}

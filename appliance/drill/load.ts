// Random host load for the drill: writes (and some WRITE_ZEROES) of mixed sizes over one region
// of a volume, and a model of what the region must hold. The model is the checker for the load:
// every acknowledged write is in it; a sector whose write failed or was cut off is "uncertain"
// (it may or may not be on disk) until a later acknowledged write covers it.
// Invariants: never two writes in flight that overlap (so the order the host saw is the only
// possible order), and the model only changes on a reply. The writer gets its clock (sleep) and
// randomness injected; LoadModel is pure.

export const SECTOR_BYTES = 512;

export class LoadModel {
  readonly image: Buffer;
  private readonly uncertain: Uint8Array;
  acked = 0;
  ackedBytes = 0;
  failed = 0;

  /** `initial`: what the region holds now (read from the volume before any load starts). */
  constructor(
    readonly regionStart: number,
    initial: Buffer,
  ) {
    if (regionStart % SECTOR_BYTES !== 0 || initial.length % SECTOR_BYTES !== 0) throw new Error(`load model: region ${regionStart}+${initial.length} is not sector aligned`);
    this.image = Buffer.from(initial);
    this.uncertain = new Uint8Array(initial.length / SECTOR_BYTES);
  }

  get regionBytes(): number {
    return this.image.length;
  }

  /** An acknowledged write (`data` null: zeroes) at a volume offset. */
  ack(offset: number, length: number, data: Buffer | null): void {
    const at = offset - this.regionStart;
    if (data) data.copy(this.image, at);
    else this.image.fill(0, at, at + length);
    this.uncertain.fill(0, at / SECTOR_BYTES, (at + length) / SECTOR_BYTES);
    this.acked++;
    this.ackedBytes += length;
  }

  /** A write whose outcome is unknown: failed, or its connection was lost before the reply. */
  lost(offset: number, length: number): void {
    const at = offset - this.regionStart;
    this.uncertain.fill(1, at / SECTOR_BYTES, (at + length) / SECTOR_BYTES);
    this.failed++;
  }

  /** Compares the region's actual bytes with the model, skipping uncertain sectors. */
  compare(actual: Buffer): { mismatchedSectors: number; firstMismatchOffset: number | null; uncertainSectors: number } {
    if (actual.length !== this.image.length) throw new Error(`load model: compared ${actual.length} bytes with a ${this.image.length}-byte region`);
    let mismatchedSectors = 0;
    let first: number | null = null;
    let uncertainSectors = 0;
    for (let s = 0; s < this.uncertain.length; s++) {
      if (this.uncertain[s]) {
        uncertainSectors++;
        continue;
      }
      const a = s * SECTOR_BYTES;
      if (this.image.compare(actual, a, a + SECTOR_BYTES, a, a + SECTOR_BYTES) !== 0) {
        mismatchedSectors++;
        first ??= this.regionStart + a;
      }
    }
    return { mismatchedSectors, firstMismatchOffset: first, uncertainSectors };
  }
}

/** What the load needs of a connection; appliance/nbd/client.ts's NbdClient fits. */
export interface LoadConnection {
  write(offset: number, data: Buffer): Promise<void>;
  writeZeroes(offset: number, length: number): Promise<void>;
  close(): Promise<void>;
}

export interface LoadOptions {
  model: LoadModel;
  connect: () => Promise<LoadConnection>;
  rand: () => number;
  /** Writes in flight at once on the connection. */
  queueDepth: number;
  /** Largest write in bytes (a multiple of 512). */
  writeBytesMax: number;
  /** Share of requests that are WRITE_ZEROES instead of WRITE. */
  zeroesShare: number;
  /** Checked before every request; true ends the load with nothing in flight. */
  until: () => boolean;
  sleep: (ms: number) => Promise<void>;
  /** Pause before reconnecting after an error (a killed primary, EPERM after a takeover). */
  reconnectPauseMs: number;
}

export interface LoadResult {
  writes: number;
  bytes: number;
  errors: number;
  lastError: string | null;
}

/** Drives the model's region until `until()`; reconnects after any error. */
export async function runLoad(o: LoadOptions): Promise<LoadResult> {
  const { model } = o;
  const inflight = new Set<{ start: number; end: number }>();
  const result: LoadResult = { writes: 0, bytes: 0, errors: 0, lastError: null };
  const sectorsMax = Math.max(1, Math.floor(o.writeBytesMax / SECTOR_BYTES));
  const regionSectors = model.regionBytes / SECTOR_BYTES;

  const pickRange = (): { start: number; end: number } => {
    for (;;) {
      // Mostly small writes, now and then a large one (the cube skews toward small).
      const sectors = Math.min(regionSectors, 1 + Math.floor(o.rand() ** 3 * sectorsMax));
      // Most hosts write 4 KiB-aligned; some do not, and the replication must not care.
      const unit = o.rand() < 0.7 ? 8 : 1;
      const slots = Math.floor((regionSectors - sectors) / unit);
      const start = model.regionStart + Math.floor(o.rand() * (slots + 1)) * unit * SECTOR_BYTES;
      const r = { start, end: start + sectors * SECTOR_BYTES };
      let clash = false;
      for (const h of inflight) if (h.start < r.end && r.start < h.end) clash = true;
      if (!clash) return r;
    }
  };

  const one = async (c: LoadConnection): Promise<void> => {
    const r = pickRange();
    const length = r.end - r.start;
    const zeroes = o.rand() < o.zeroesShare;
    let data: Buffer | null = null;
    if (!zeroes) {
      data = Buffer.allocUnsafe(length);
      for (let i = 0; i < length; i += 4) data.writeUInt32LE((o.rand() * 0x100000000) >>> 0, i);
    }
    inflight.add(r);
    try {
      if (data) await c.write(r.start, data);
      else await c.writeZeroes(r.start, length);
      model.ack(r.start, length, data);
      result.writes++;
      result.bytes += length;
    } catch (err) {
      model.lost(r.start, length);
      throw err;
    } finally {
      inflight.delete(r);
    }
  };

  while (!o.until()) {
    let conn: LoadConnection | null = null;
    try {
      conn = await o.connect();
      const c = conn;
      // The first failure stops every worker of this connection; all of them finish before it
      // is closed and replaced, so no request of an old connection outlives it.
      let broken = false;
      const workers = await Promise.allSettled(
        Array.from({ length: o.queueDepth }, async () => {
          while (!o.until() && !broken) {
            try {
              await one(c);
            } catch (err) {
              broken = true;
              throw err;
            }
          }
        }),
      );
      const failed = workers.find((w) => w.status === "rejected");
      if (failed) throw failed.reason;
    } catch (err) {
      result.errors++;
      result.lastError = (err as Error).message;
      await o.sleep(o.reconnectPauseMs);
    } finally {
      await conn?.close().catch(() => undefined);
    }
  }
  return result;
}

// Host writes for integration tests: random writes of mixed sizes through a
// real NBD connection, never two overlapping writes in flight on one volume,
// and a model of what the primary image must hold for every acknowledged
// write (sectors whose write was in flight when a process died are marked
// uncertain until a later acknowledged write covers them).
import type { NbdClient } from "./nbd-client.ts";

const SECTOR = 512;

export class VolumeModel {
  readonly image: Buffer;
  readonly uncertain: Uint8Array;
  acked = 0;
  ackedBytes = 0;

  constructor(readonly sizeBytes: number) {
    this.image = Buffer.alloc(sizeBytes);
    this.uncertain = new Uint8Array(sizeBytes / SECTOR);
  }

  ack(offset: number, data: Buffer): void {
    data.copy(this.image, offset);
    this.uncertain.fill(0, offset / SECTOR, (offset + data.length) / SECTOR);
    this.acked++;
    this.ackedBytes += data.length;
  }

  lost(offset: number, length: number): void {
    this.uncertain.fill(1, offset / SECTOR, (offset + length) / SECTOR);
  }

  /** First sector where `actual` differs from the model outside uncertain sectors, or -1. */
  firstMismatch(actual: Buffer): number {
    for (let s = 0; s < this.uncertain.length; s++) {
      if (this.uncertain[s]) continue;
      if (this.image.compare(actual, s * SECTOR, (s + 1) * SECTOR, s * SECTOR, (s + 1) * SECTOR) !== 0) return s * SECTOR;
    }
    return -1;
  }
}

export interface WriterOptions {
  rand: () => number;
  queueDepth: number;
  /** Largest write, bytes (a multiple of 512). */
  maxBytes: number;
  until: () => boolean;
  connect: () => Promise<NbdClient>;
  model: VolumeModel;
  onError?: (err: Error) => void;
}

/** Drives one volume until `until()`; reconnects when the connection is lost. */
export async function runWriter(o: WriterOptions): Promise<{ writes: number; bytes: number; reconnects: number }> {
  const inflight = new Set<{ start: number; end: number }>();
  let client: NbdClient | null = null;
  let writes = 0;
  let bytes = 0;
  let reconnects = 0;
  const size = o.model.sizeBytes;
  const pick = () => {
    for (;;) {
      const sectors = 1 + Math.floor(o.rand() ** 3 * (o.maxBytes / SECTOR));
      const len = sectors * SECTOR;
      const aligned4k = o.rand() < 0.7;
      const unit = aligned4k ? 4096 : SECTOR;
      const off = Math.floor((o.rand() * (size - len)) / unit) * unit;
      const r = { start: off, end: off + len };
      let clash = false;
      for (const h of inflight) if (h.start < r.end && r.start < h.end) clash = true;
      if (!clash) return r;
    }
  };
  const one = async (c: NbdClient) => {
    const r = pick();
    inflight.add(r);
    const data = Buffer.allocUnsafe(r.end - r.start);
    for (let i = 0; i < data.length; i += 4) data.writeUInt32LE((o.rand() * 0x100000000) >>> 0, i);
    try {
      await c.write(r.start, data);
      o.model.ack(r.start, data);
      writes++;
      bytes += data.length;
    } catch (err) {
      o.model.lost(r.start, data.length);
      throw err;
    } finally {
      inflight.delete(r);
    }
  };
  while (!o.until()) {
    try {
      client ??= await o.connect();
      const c = client;
      await Promise.all(
        Array.from({ length: o.queueDepth }, async () => {
          while (!o.until()) await one(c);
        }),
      );
    } catch (err) {
      o.onError?.(err as Error);
      client?.socket.destroy();
      client = null;
      reconnects++;
      await new Promise((r) => setTimeout(r, 100));
    }
  }
  await client?.close().catch(() => {});
  return { writes, bytes, reconnects };
}

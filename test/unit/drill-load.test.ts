// The drill's random host load (appliance/drill/load.ts) against in-memory volumes: the model
// holds exactly what acknowledged writes put there, a write whose connection failed leaves its
// sectors uncertain (never a false alarm), and a sector that differs from an acknowledged write
// is caught.
import { describe, expect, it } from "vitest";
import { LoadModel, SECTOR_BYTES, runLoad, type LoadConnection } from "../../appliance/drill/load.ts";
import { prng } from "../../appliance/drill/prng.ts";

const REGION = 1 << 20;

/** A volume in memory; each request fails with probability `failShare` (before or after reaching the volume, at random). */
function memoryVolume(size: number, rand: () => number, failShare = 0) {
  const image = Buffer.alloc(size);
  let overlapping = 0;
  const inflight = new Set<[number, number]>();
  const connect = async (): Promise<LoadConnection> => {
    const op = async (offset: number, length: number, apply: () => void) => {
      const r: [number, number] = [offset, offset + length];
      for (const [a, b] of inflight) if (a < r[1] && r[0] < b) overlapping++;
      inflight.add(r);
      try {
        await new Promise((res) => setImmediate(res));
        const fail = rand() < failShare;
        // A failed write may or may not have reached the volume: exactly the uncertainty the model keeps.
        if (!fail || rand() < 0.5) apply();
        if (fail) throw new Error("connection lost");
      } finally {
        inflight.delete(r);
      }
    };
    return {
      write: (offset, data) => op(offset, data.length, () => data.copy(image, offset)),
      writeZeroes: (offset, length) => op(offset, length, () => image.fill(0, offset, offset + length)),
      close: async () => undefined,
    };
  };
  return { image, connect, overlapping: () => overlapping };
}

async function drive(seed: number, failShare: number, writesMax = 400) {
  const rand = prng(seed);
  const start = 64 * 1024;
  const vol = memoryVolume(start + REGION, prng(seed + 1), failShare);
  vol.image.fill(0xee, start, start + REGION);
  const model = new LoadModel(start, vol.image.subarray(start, start + REGION));
  let n = 0;
  const result = await runLoad({
    model,
    connect: vol.connect,
    rand,
    queueDepth: 4,
    writeBytesMax: 64 * 1024,
    zeroesShare: 0.1,
    until: () => n++ >= writesMax,
    sleep: async () => undefined,
    reconnectPauseMs: 0,
  });
  return { vol, model, result, start };
}

describe("drill load", () => {
  it("drill load: acknowledged writes and zeroes (400 requests, queue depth 4) are what the region holds; no two writes in flight overlap", async () => {
    const { vol, model, result, start } = await drive(11, 0);
    expect(result.errors).toBe(0);
    expect(result.writes).toBeGreaterThan(300);
    expect(model.acked).toBe(result.writes);
    expect(model.compare(vol.image.subarray(start, start + REGION))).toEqual({ mismatchedSectors: 0, firstMismatchOffset: null, uncertainSectors: 0 });
    expect(model.image.equals(vol.image.subarray(start, start + REGION))).toBe(true);
    expect(vol.overlapping()).toBe(0);
    // Nothing outside the region was touched.
    expect(vol.image.subarray(0, start).every((b) => b === 0)).toBe(true);
  });

  it("drill load: failed writes (20%) leave their sectors uncertain, and the rest still matches", async () => {
    const { vol, model, result, start } = await drive(12, 0.2);
    expect(result.errors).toBeGreaterThan(10);
    expect(model.failed).toBeGreaterThan(10);
    const c = model.compare(vol.image.subarray(start, start + REGION));
    expect(c.mismatchedSectors).toBe(0);
    expect(c.uncertainSectors).toBeGreaterThan(0);
  });

  it("drill load: a sector that lost an acknowledged write is found, with its volume offset", async () => {
    const { vol, model, start } = await drive(13, 0);
    const sector = 777;
    vol.image[start + sector * SECTOR_BYTES + 5] ^= 0xff;
    expect(model.compare(vol.image.subarray(start, start + REGION))).toEqual({ mismatchedSectors: 1, firstMismatchOffset: start + sector * SECTOR_BYTES, uncertainSectors: 0 });
  });

  it("drill load: the model refuses a region that is not sector aligned", () => {
    expect(() => new LoadModel(100, Buffer.alloc(512))).toThrow(/not sector aligned/);
  });
});

// The drill's chain format, plan and checker, on hand-made sparse image files: the checker must
// pass a perfect prefix and fail, with the right message, on a gap, a torn block, a block from
// the future, a foreign block, and a missing acknowledged write.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { mkdtempSync, openSync, closeSync, ftruncateSync, writeSync, rmSync, readFileSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { CHAIN_BLOCK_BYTES, decodeChainBlock, encodeChainBlock, volumeTag } from "../../appliance/drill/chain-block.ts";
import { ChainPlanError, planChains, type ChainPlan, type PlanVolume } from "../../appliance/drill/chain-plan.ts";
import { checkChains, fileBlockReader, openFileBlockReader, readBlockFromFile, type CheckMode } from "../../appliance/drill/chain-checker.ts";
import { runChainWorkload, type ChainWriter } from "../../appliance/drill/chain-workload.ts";

const MIB = 1 << 20;
const VOLUMES: PlanVolume[] = [
  { name: "p1a", primaryId: 1, sizeBytes: 4 * MIB },
  { name: "p1b", primaryId: 1, sizeBytes: 4 * MIB },
  { name: "p2a", primaryId: 2, sizeBytes: 4 * MIB },
  { name: "p2b", primaryId: 2, sizeBytes: 4 * MIB },
];

let dir = "";
beforeAll(() => {
  dir = mkdtempSync(path.join(os.tmpdir(), "tidemark-chains-"));
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

let imageCount = 0;
/** Sparse image files, one per plan volume, holding the first `prefix[c]` positions of every chain c. */
function makeImages(plan: ChainPlan, prefix: number[]): Map<string, string> {
  const set = `set${imageCount++}`;
  const files = new Map(plan.volumes.map((v) => [v.name, path.join(dir, `${set}-${v.name}.img`)]));
  for (const v of plan.volumes) {
    const fd = openSync(files.get(v.name)!, "w");
    ftruncateSync(fd, v.sizeBytes);
    closeSync(fd);
  }
  for (let c = 0; c < plan.chains; c++) for (let p = 0; p < prefix[c]; p++) putBlock(files, plan, c, p);
  return files;
}

function putBlock(files: Map<string, string>, plan: ChainPlan, chain: number, pos: number, run = plan.run, at = plan.steps[chain][pos]): void {
  const s = plan.steps[chain][pos];
  const block = encodeChainBlock({ run, chain, pos, volumeTag: volumeTag(s.volume), blockIndex: s.blockIndex });
  writeAt(files.get(at.volume)!, at.blockIndex * CHAIN_BLOCK_BYTES, block);
}

function writeAt(file: string, offset: number, data: Buffer): void {
  const fd = openSync(file, "r+");
  writeSync(fd, data, 0, data.length, offset);
  closeSync(fd);
}

function check(plan: ChainPlan, files: Map<string, string>, records: { acked: number; issued: number }[], mode: CheckMode) {
  return checkChains({ plan, records, mode, readBlock: fileBlockReader((v) => files.get(v)!) });
}

const small = () => planChains({ volumes: VOLUMES, chains: 4, length: 8, seed: 42, regionStartBlock: 16, regionBlocks: 64 });
const recs = (n: number, acked: number, issued = acked) => Array.from({ length: n }, () => ({ acked, issued }));

describe("chains: block format", () => {
  it("chains: encode then decode gives the fields back; zeros decode as empty", () => {
    const f = { run: 0xfedcba9876543210n, chain: 7, pos: 123, volumeTag: volumeTag("p2b"), blockIndex: 2 ** 40 };
    const b = encodeChainBlock(f);
    expect(b.length).toBe(CHAIN_BLOCK_BYTES);
    expect(decodeChainBlock(b)).toEqual({ kind: "block", ...f });
    expect(decodeChainBlock(Buffer.alloc(CHAIN_BLOCK_BYTES))).toEqual({ kind: "empty" });
  });

  it("chains: a flipped byte anywhere, a zeroed sector or a bad magic decodes as torn", () => {
    const b = encodeChainBlock({ run: 5n, chain: 1, pos: 2, volumeTag: 3, blockIndex: 4 });
    for (const at of [0, 9, 21, 41, 47, 48, 1000, 4095]) {
      const x = Buffer.from(b);
      x[at] ^= 0x40;
      expect(decodeChainBlock(x).kind, `byte ${at}`).toBe("torn");
    }
    const half = Buffer.from(b);
    half.fill(0, 2048, 2560);
    expect(decodeChainBlock(half)).toMatchObject({ kind: "torn", why: expect.stringContaining("crc mismatch") });
    const head = Buffer.from(b);
    head.fill(0, 0, 512);
    expect(decodeChainBlock(head)).toMatchObject({ kind: "torn", why: expect.stringContaining("bad magic") });
    expect(decodeChainBlock(b.subarray(0, 512))).toMatchObject({ kind: "torn" });
  });

  it("chains: the filler depends on (run, chain, pos)", () => {
    const a = encodeChainBlock({ run: 1n, chain: 0, pos: 0, volumeTag: 0, blockIndex: 0 });
    const b = encodeChainBlock({ run: 1n, chain: 0, pos: 1, volumeTag: 0, blockIndex: 0 });
    const c = encodeChainBlock({ run: 2n, chain: 0, pos: 0, volumeTag: 0, blockIndex: 0 });
    expect(a.subarray(48).equals(b.subarray(48))).toBe(false);
    expect(a.subarray(48).equals(c.subarray(48))).toBe(false);
  });
});

describe("chains: plan", () => {
  it("chains: plan (64 chains x 40 over 2 primaries) uses distinct blocks inside the region and alternates primaries", () => {
    const plan = planChains({ volumes: VOLUMES, chains: 64, length: 40, seed: 9, regionStartBlock: 100, regionBlocks: 700 });
    const primaryOf = new Map(VOLUMES.map((v) => [v.name, v.primaryId]));
    const used = new Set<string>();
    for (const steps of plan.steps) {
      expect(steps.length).toBe(40);
      for (let p = 0; p < steps.length; p++) {
        const key = `${steps[p].volume}:${steps[p].blockIndex}`;
        expect(used.has(key), key).toBe(false);
        used.add(key);
        expect(steps[p].blockIndex).toBeGreaterThanOrEqual(100);
        expect(steps[p].blockIndex).toBeLessThan(800);
        if (p > 0) expect(primaryOf.get(steps[p].volume)).not.toBe(primaryOf.get(steps[p - 1].volume));
      }
    }
    expect(used.size).toBe(64 * 40);
    expect(new Set(plan.steps.flat().map((s) => s.volume))).toEqual(new Set(VOLUMES.map((v) => v.name)));
  });

  it("chains: the same seed gives the same plan and run; another seed another", () => {
    const a = planChains({ volumes: VOLUMES, chains: 8, length: 10, seed: 1 });
    const b = planChains({ volumes: VOLUMES, chains: 8, length: 10, seed: 1 });
    const c = planChains({ volumes: VOLUMES, chains: 8, length: 10, seed: 2 });
    expect(b).toEqual(a);
    expect(c.steps).not.toEqual(a.steps);
    expect(c.run).not.toBe(a.run);
    expect(planChains({ volumes: VOLUMES, chains: 8, length: 10, seed: 1, run: 77n }).run).toBe(77n);
  });

  it("chains: a plan refuses one primary, and a region too small for it", () => {
    expect(() => planChains({ volumes: VOLUMES.slice(0, 2), chains: 1, length: 2, seed: 1 })).toThrow(ChainPlanError);
    expect(() => planChains({ volumes: VOLUMES, chains: 10, length: 10, seed: 1, regionBlocks: 20 })).toThrow(/no free block left/);
  });
});

describe("chains: checker on hand-made images", () => {
  it("chains: perfect prefixes pass in prefix mode, and in complete mode when they cover every acknowledged write", async () => {
    const plan = small();
    const files = makeImages(plan, [0, 3, 8, 5]);
    const prefix = await check(plan, files, [{ acked: 0, issued: 1 }, { acked: 5, issued: 6 }, { acked: 8, issued: 8 }, { acked: 5, issued: 6 }], "prefix");
    expect(prefix).toMatchObject({ ok: true, violations: [], prefixLengths: [0, 3, 8, 5], chains: 4, blocksRead: 32 });
    expect(prefix.counts).toEqual({ torn: 0, foreign: 0, gaps: 0, future: 0, missing: 0 });
    const complete = await check(plan, files, [{ acked: 0, issued: 0 }, { acked: 3, issued: 3 }, { acked: 8, issued: 8 }, { acked: 4, issued: 5 }], "complete");
    expect(complete).toMatchObject({ ok: true, violations: [], prefixLengths: [0, 3, 8, 5] });
  });

  it("chains: a chain gap fails with the first gap", async () => {
    const plan = small();
    const files = makeImages(plan, [2, 2, 2, 2]);
    putBlock(files, plan, 1, 4);
    putBlock(files, plan, 1, 6);
    const r = await check(plan, files, recs(4, 7, 8), "prefix");
    expect(r.ok).toBe(false);
    expect(r.violations).toEqual(["chain 1: pos 2 missing but pos 4 present"]);
    expect(r.prefixLengths).toEqual([2, 2, 2, 2]);
    expect(r.counts).toEqual({ torn: 0, foreign: 0, gaps: 1, future: 0, missing: 0 });
  });

  it("chains: a torn block (one byte flipped) fails with torn", async () => {
    const plan = small();
    const files = makeImages(plan, [8, 8, 8, 8]);
    const s = plan.steps[3][5];
    const file = files.get(s.volume)!;
    const img = readFileSync(file);
    img[s.blockIndex * CHAIN_BLOCK_BYTES + 3000] ^= 1;
    writeFileSync(file, img);
    const r = await check(plan, files, recs(4, 8), "prefix");
    expect(r.ok).toBe(false);
    expect(r.violations).toHaveLength(1);
    expect(r.violations[0]).toMatch(new RegExp(`^chain 3 pos 5 on ${s.volume} block ${s.blockIndex}: torn \\(crc mismatch \\(stored 0x[0-9a-f]{8}, computed 0x[0-9a-f]{8}\\)\\)$`));
    expect(r.prefixLengths[3]).toBe(5);
    expect(r.counts).toEqual({ torn: 1, foreign: 0, gaps: 0, future: 0, missing: 0 });
  });

  it("chains: a torn write (only the first 2048 bytes of a position reached the disk) fails with torn, crc mismatch", async () => {
    const plan = small();
    const files = makeImages(plan, [3, 3, 3, 3]);
    const s = plan.steps[0][3];
    const block = encodeChainBlock({ run: plan.run, chain: 0, pos: 3, volumeTag: volumeTag(s.volume), blockIndex: s.blockIndex });
    writeAt(files.get(s.volume)!, s.blockIndex * CHAIN_BLOCK_BYTES, block.subarray(0, 2048));
    const r = await check(plan, files, recs(4, 3, 4), "prefix");
    expect(r.violations).toEqual([expect.stringMatching(new RegExp(`^chain 0 pos 3 on ${s.volume} block ${s.blockIndex}: torn \\(crc mismatch `))]);
    expect(r.counts.torn).toBe(1);
  });

  it("chains: a gap, a torn block and a block from the future in one set of images are each reported, once, with their own message", async () => {
    const plan = small();
    const files = makeImages(plan, [5, 5, 5, 5]);
    putBlock(files, plan, 0, 6); // chain 0: pos 5 missing, pos 6 present
    const t = plan.steps[1][2];
    writeAt(files.get(t.volume)!, t.blockIndex * CHAIN_BLOCK_BYTES + 100, Buffer.from([0xff, 0x00, 0xff])); // chain 1: torn at pos 2
    const records = [{ acked: 7, issued: 7 }, { acked: 5, issued: 5 }, { acked: 3, issued: 4 }, { acked: 5, issued: 6 }]; // chain 2: 5 present, 4 issued
    const r = await check(plan, files, records, "prefix");
    expect(r.ok).toBe(false);
    expect(r.violations).toEqual([
      "chain 0: pos 5 missing but pos 6 present",
      expect.stringMatching(new RegExp(`^chain 1 pos 2 on ${t.volume} block ${t.blockIndex}: torn \\(crc mismatch`)),
      "block from the future: chain 2 pos 4 present but only 4 writes were issued",
    ]);
    expect(r.counts).toEqual({ torn: 1, foreign: 0, gaps: 1, future: 1, missing: 0 });
    expect(r.prefixLengths).toEqual([5, 2, 5, 5]);
  });

  it("chains: a block from the future fails with that message", async () => {
    const plan = small();
    const files = makeImages(plan, [8, 4, 8, 8]);
    const r = await check(plan, files, [...recs(1, 8), { acked: 2, issued: 3 }, ...recs(2, 8)], "prefix");
    expect(r.ok).toBe(false);
    expect(r.violations).toEqual(["block from the future: chain 1 pos 3 present but only 3 writes were issued"]);
    expect(r.counts).toEqual({ torn: 0, foreign: 0, gaps: 0, future: 1, missing: 0 });
  });

  it("chains: a block of another run, or another chain's block, is foreign", async () => {
    const plan = small();
    const files = makeImages(plan, [3, 3, 3, 3]);
    putBlock(files, plan, 0, 3, plan.run + 1n);
    putBlock(files, plan, 2, 0, plan.run, plan.steps[1][5]);
    const r = await check(plan, files, recs(4, 3, 4), "prefix");
    expect(r.ok).toBe(false);
    expect(r.violations).toHaveLength(2);
    expect(r.violations[0]).toMatch(/^chain 0 pos 3 on \w+ block \d+: foreign block \(found run \d+ chain 0 pos 3 /);
    expect(r.violations[1]).toMatch(/^chain 1 pos 5 on \w+ block \d+: foreign block \(found run \d+ chain 2 pos 0 /);
    expect(r.counts.foreign).toBe(2);
  });

  it("chains: complete mode fails when an acknowledged position is missing; prefix mode accepts it", async () => {
    const plan = small();
    const files = makeImages(plan, [8, 8, 6, 8]);
    const s = plan.steps[2][6];
    expect((await check(plan, files, recs(4, 8), "prefix")).ok).toBe(true);
    const r = await check(plan, files, recs(4, 8), "complete");
    expect(r.ok).toBe(false);
    expect(r.violations).toEqual([`chain 2: acknowledged pos 6 on ${s.volume} block ${s.blockIndex} not present (8 acknowledged, prefix 6)`]);
    expect(r.counts.missing).toBe(1);
  });

  it("chains: readBlockFromFile and openFileBlockReader read at blockIndex * 4096 and refuse a read past the end", async () => {
    const file = path.join(dir, "short.img");
    const block = encodeChainBlock({ run: 3n, chain: 0, pos: 0, volumeTag: 0, blockIndex: 2 });
    writeFileSync(file, Buffer.concat([Buffer.alloc(2 * CHAIN_BLOCK_BYTES), block]));
    expect((await readBlockFromFile(file, 2)).equals(block)).toBe(true);
    expect(decodeChainBlock(await readBlockFromFile(file, 1)).kind).toBe("empty");
    await expect(readBlockFromFile(file, 3)).rejects.toThrow(/short read/);
    const reader = openFileBlockReader(() => file);
    try {
      const [a, b] = await Promise.all([reader.readBlock("any", 2), reader.readBlock("any", 1)]);
      expect(a.equals(block)).toBe(true);
      expect(decodeChainBlock(b).kind).toBe("empty");
      await expect(reader.readBlock("any", 3)).rejects.toThrow(`${file}: short read of block 3`);
    } finally {
      await reader.close();
    }
  });
});

describe("chains: workload against in-memory volumes", () => {
  /** Volumes as buffers; a write to a volume of `failPrimary` fails once `failAfter` writes have been acknowledged overall. */
  function memory(plan: ChainPlan, o: { failPrimary?: number; failAfter?: number } = {}) {
    const primaryOf = new Map(plan.volumes.map((v) => [v.name, v.primaryId]));
    const images = new Map(plan.volumes.map((v) => [v.name, Buffer.alloc(v.sizeBytes)]));
    let writes = 0;
    let connects = 0;
    const connect = async (volume: string): Promise<ChainWriter> => {
      connects++;
      return {
        write: async (offset, data) => {
          await new Promise((r) => setImmediate(r));
          if (primaryOf.get(volume) === o.failPrimary && writes >= (o.failAfter ?? 0)) throw new Error("EPERM");
          data.copy(images.get(volume)!, offset);
          writes++;
        },
        close: async () => undefined,
      };
    };
    const readBlock = async (v: string, b: number) => images.get(v)!.subarray(b * CHAIN_BLOCK_BYTES, (b + 1) * CHAIN_BLOCK_BYTES);
    return { connect, readBlock, connects: () => connects };
  }

  it("chains: workload (16 chains x 20) completes every chain and passes the complete check", async () => {
    const plan = planChains({ volumes: VOLUMES, chains: 16, length: 20, seed: 5 });
    const m = memory(plan);
    const records = await runChainWorkload({ plan, connect: m.connect, chainsInFlightMax: 8 });
    expect(records.every((r) => r.acked === 20 && r.issued === 20 && r.error === undefined)).toBe(true);
    expect(m.connects()).toBe(4);
    const r = await checkChains({ plan, records, mode: "complete", readBlock: m.readBlock });
    expect(r).toMatchObject({ ok: true, blocksRead: 320 });
  });

  it("chains: a primary that starts refusing writes (EPERM after 50 writes) stops every chain with issued = acked + 1", async () => {
    const plan = planChains({ volumes: VOLUMES, chains: 16, length: 20, seed: 6 });
    const m = memory(plan, { failPrimary: 2, failAfter: 50 });
    const records = await runChainWorkload({ plan, connect: m.connect, reconnectAttemptsMax: 2, sleep: async () => undefined });
    for (const r of records) {
      expect(r.error).toMatch(/EPERM/);
      expect(r.issued).toBe(r.acked + 1);
      expect(VOLUMES.find((v) => v.name === plan.steps[r.chain][r.acked].volume)!.primaryId).toBe(2);
      expect(r.reconnects).toBe(2);
    }
    const check = await checkChains({ plan, records, mode: "complete", readBlock: m.readBlock });
    expect(check.ok).toBe(true);
    expect(check.prefixLengths).toEqual(records.map((r) => r.acked));
  });

  it("chains: until() stops every chain between writes, leaving nothing in flight", async () => {
    const plan = planChains({ volumes: VOLUMES, chains: 8, length: 50, seed: 7 });
    const m = memory(plan);
    let n = 0;
    const records = await runChainWorkload({ plan, connect: m.connect, until: () => ++n > 100 });
    expect(records.every((r) => r.issued === r.acked && r.acked < 50)).toBe(true);
    expect((await checkChains({ plan, records, mode: "complete", readBlock: m.readBlock })).ok).toBe(true);
  });
});

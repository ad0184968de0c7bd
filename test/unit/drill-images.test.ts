// The drill's image comparison (appliance/drill/images.ts) on real files: cmp(1) says whether two
// images are equal, and a difference is reported with how many 4 KiB blocks differ and which.
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { cmpImages, readRange } from "../../appliance/drill/images.ts";

const dir = mkdtempSync(path.join(os.tmpdir(), "tidemark-images-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
const B = 4096;

describe("drill images", () => {
  it("drill images: equal images compare equal; two changed blocks are named (cmp's first byte, the count, the block numbers)", async () => {
    const a = Buffer.alloc(3 * (1 << 20), 7);
    const b = Buffer.from(a);
    b[1 * B + 10] ^= 1;
    b[300 * B + 4095] ^= 1;
    writeFileSync(path.join(dir, "a"), a);
    writeFileSync(path.join(dir, "b"), b);
    writeFileSync(path.join(dir, "c"), a);
    expect(await cmpImages(path.join(dir, "a"), path.join(dir, "c"))).toBeNull();
    const diff = await cmpImages(path.join(dir, "a"), path.join(dir, "b"));
    expect(diff).toMatch(/differ: (byte|char) 4107/);
    expect(diff).toContain("; 2 differing 4 KiB blocks (first: 1, 300)");
  });

  it("drill images: a shorter image differs in the blocks it lacks; readRange refuses to read past an end", async () => {
    writeFileSync(path.join(dir, "long"), Buffer.alloc(4 * B));
    writeFileSync(path.join(dir, "short"), Buffer.alloc(2 * B));
    expect(await cmpImages(path.join(dir, "long"), path.join(dir, "short"))).toMatch(/EOF.*; 2 differing 4 KiB blocks \(first: 2, 3\)/);
    expect((await readRange(path.join(dir, "long"), B, 2 * B)).length).toBe(2 * B);
    await expect(readRange(path.join(dir, "short"), B, 2 * B)).rejects.toThrow(`${path.join(dir, "short")}: ends at ${2 * B}, before ${3 * B}`);
  });
});

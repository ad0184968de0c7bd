// Volumes on regular files in a temp dir: sparse creation, aligned positional
// I/O checked against an in-memory model (seeded), the validation and error
// codes, and flock exclusion within this process and across processes.
import { spawn } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  openVolume,
  READ_BYTES_MAX,
  SECTOR_BYTES,
  ZERO_CHUNK_BYTES,
  type Volume,
} from "../../disks/volume.ts";
import { prng as rng } from "../../appliance/drill/prng.ts";
import { holdLockInChild, stopChild } from "../support/lock-holder.ts";
import { expectCode } from "../support/volume-errors.ts";

const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
const MiB = 1024 * 1024;
let dir: string;

beforeAll(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), "tidemark-disks-"));
});
afterAll(() => {
  fs.rmSync(dir, { recursive: true, force: true });
});



function tmpPath(name: string): string {
  return path.join(dir, name);
}

describe("disks: creation and sizing", () => {
  it("disks: creates a sparse file with its parent folders (64 MiB)", async () => {
    const p = tmpPath("nested/a/b/sparse.img");
    const v = await openVolume({ name: "sparse", path: p, createSizeBytes: 64 * MiB });
    try {
      expect(v.kind).toBe("file");
      expect(v.sizeBytes).toBe(64 * MiB);
      expect(v.name).toBe("sparse");
      expect(v.path).toBe(p);
      const st = fs.statSync(p);
      expect(st.size).toBe(64 * MiB);
      // st.blocks counts 512-byte units actually allocated: a sparse file has almost none.
      expect(st.blocks * 512).toBeLessThan(MiB);
      expect(st.mode & 0o777).toBe(0o600);
    } finally {
      await v.close();
    }
  });

  it("disks: an existing file keeps its size whatever createSizeBytes says (1 MiB vs 4 MiB)", async () => {
    const p = tmpPath("existing.img");
    fs.writeFileSync(p, Buffer.alloc(MiB, 7));
    const v = await openVolume({ name: "existing", path: p, createSizeBytes: 4 * MiB });
    expect(v.sizeBytes).toBe(MiB);
    expect((await v.read(0, 512)).every((b) => b === 7)).toBe(true);
    await v.close();
    expect(fs.statSync(p).size).toBe(MiB);

    const big = await openVolume({ name: "existing", path: p, createSizeBytes: 512 });
    expect(big.sizeBytes).toBe(MiB);
    await big.close();
    expect(fs.statSync(p).size).toBe(MiB);
  });

  it("disks: a missing file without createSizeBytes is TM_VOLUME_MISSING naming the path", async () => {
    const p = tmpPath("nope/missing.img");
    const err = await expectCode(openVolume({ name: "ghost", path: p }), "TM_VOLUME_MISSING");
    expect(err.message).toContain(p);
    expect(err.message).toContain("ghost");
    expect(err.volume).toBe("ghost");
    expect(err.path).toBe(p);
    expect(fs.existsSync(p)).toBe(false);
  });

  it("disks: a missing block device is TM_VOLUME_MISSING and no file is made in /dev", async () => {
    const p = `/dev/tidemark-test-missing-${process.pid}`;
    const err = await expectCode(openVolume({ name: "dev", path: p, createSizeBytes: MiB }), "TM_VOLUME_MISSING");
    expect(err.message).toContain(p);
    expect(fs.existsSync(p)).toBe(false);
  });

  it("disks: read-only never creates (TM_VOLUME_MISSING)", async () => {
    const p = tmpPath("ro-missing.img");
    await expectCode(openVolume({ name: "ro", path: p, createSizeBytes: MiB, readOnly: true }), "TM_VOLUME_MISSING");
    expect(fs.existsSync(p)).toBe(false);
  });

  it("disks: sizes that are not positive multiples of 512 are TM_VOLUME_SIZE", async () => {
    const odd = tmpPath("odd.img");
    fs.writeFileSync(odd, Buffer.alloc(1000));
    await expectCode(openVolume({ name: "odd", path: odd }), "TM_VOLUME_SIZE");
    const empty = tmpPath("empty.img");
    fs.writeFileSync(empty, "");
    const err = await expectCode(openVolume({ name: "empty", path: empty, createSizeBytes: MiB }), "TM_VOLUME_SIZE");
    expect(err.message).toContain("remove it to recreate");
    expect(fs.statSync(empty).size).toBe(0);
    for (const bad of [0, -512, 1000, 1.5 * 512, Number.NaN]) {
      await expectCode(openVolume({ name: "bad", path: tmpPath(`bad-${bad}.img`), createSizeBytes: bad }), "TM_VOLUME_SIZE");
    }
    // The failed opens released their locks: the odd file can be locked again.
    fs.truncateSync(odd, 1024);
    await (await openVolume({ name: "odd", path: odd })).close();
  });

  it("disks: a directory or a character device is TM_VOLUME_KIND", async () => {
    const d = tmpPath("a-directory");
    fs.mkdirSync(d);
    await expectCode(openVolume({ name: "dir", path: d }), "TM_VOLUME_KIND");
    await expectCode(openVolume({ name: "dir", path: d, readOnly: true }), "TM_VOLUME_KIND");
    await expectCode(openVolume({ name: "null", path: "/dev/null" }), "TM_VOLUME_KIND");
  });
});

describe("disks: I/O", () => {
  let v: Volume;
  const size = 8 * MiB;
  const p = () => tmpPath("io.img");

  beforeAll(async () => {
    v = await openVolume({ name: "io", path: p(), createSizeBytes: size });
  });
  afterAll(async () => {
    await v.close();
  });

  it("disks: random aligned writes, zeroes and reads match a model (seed 20240611, 400 ops)", async () => {
    const rand = rng(20240611);
    const model = Buffer.alloc(size);
    const sectors = size / SECTOR_BYTES;
    const pick = (maxSectors: number) => {
      const len = (1 + Math.floor(rand() * maxSectors)) * SECTOR_BYTES;
      const off = Math.floor(rand() * (sectors - len / SECTOR_BYTES + 1)) * SECTOR_BYTES;
      return { off, len };
    };
    for (let i = 0; i < 400; i++) {
      const r = rand();
      if (r < 0.5) {
        const { off, len } = pick(rand() < 0.9 ? 16 : 2048);
        const data = Buffer.allocUnsafe(len);
        for (let j = 0; j < len; j += 4) data.writeUInt32LE((rand() * 2 ** 32) >>> 0, j);
        await v.write(off, data);
        data.copy(model, off);
      } else if (r < 0.6) {
        const { off, len } = pick(rand() < 0.5 ? 8 : 6000);
        await v.writeZeroes(off, len);
        model.fill(0, off, off + len);
      } else {
        const { off, len } = pick(rand() < 0.9 ? 16 : 4096);
        const got = await v.read(off, len);
        expect(got.length).toBe(len);
        if (!got.equals(model.subarray(off, off + len))) throw new Error(`op ${i}: read [${off}, ${off + len}) differs from model`);
      }
    }
    await v.sync();
    expect((await v.read(0, size)).equals(model)).toBe(true);
    // The bytes are in the file itself, not only behind our handle.
    expect(fs.readFileSync(p()).equals(model)).toBe(true);
    // The edges of the volume are reachable.
    await v.write(size - SECTOR_BYTES, Buffer.alloc(SECTOR_BYTES, 0xab));
    expect((await v.read(size - SECTOR_BYTES, SECTOR_BYTES)).every((b) => b === 0xab)).toBe(true);
    expect((await v.read(0, 0)).length).toBe(0);
  });

  it("disks: concurrent writes to disjoint ranges all land (64 x 64 KiB)", async () => {
    const chunk = 64 * 1024;
    await Promise.all(Array.from({ length: 64 }, (_, i) => v.write(i * chunk, Buffer.alloc(chunk, i + 1))));
    const all = await v.read(0, 64 * chunk);
    for (let i = 0; i < 64; i++) {
      expect(all.subarray(i * chunk, (i + 1) * chunk).every((b) => b === i + 1)).toBe(true);
    }
  });

  it("disks: writeZeroes spanning several chunks leaves its neighbours alone", async () => {
    const off = 512 * 3;
    const len = 2 * ZERO_CHUNK_BYTES + 512 * 5;
    await v.write(0, Buffer.alloc(off + len + 4096, 0xee));
    await v.writeZeroes(off, len);
    const got = await v.read(0, off + len + 4096);
    expect(got.subarray(0, off).every((b) => b === 0xee)).toBe(true);
    expect(got.subarray(off, off + len).every((b) => b === 0)).toBe(true);
    expect(got.subarray(off + len).every((b) => b === 0xee)).toBe(true);
  });

  it("disks: misaligned requests are TM_VOLUME_ALIGN with offset and length", async () => {
    const err = await expectCode(v.read(1, 512), "TM_VOLUME_ALIGN");
    expect(err).toMatchObject({ volume: "io", path: p(), offset: 1, length: 512 });
    await expectCode(v.read(512, 100), "TM_VOLUME_ALIGN");
    await expectCode(v.write(0, Buffer.alloc(513)), "TM_VOLUME_ALIGN");
    await expectCode(v.write(100, Buffer.alloc(512)), "TM_VOLUME_ALIGN");
    await expectCode(v.writeZeroes(512, 1), "TM_VOLUME_ALIGN");
  });

  it("disks: out-of-range requests are TM_VOLUME_RANGE and touch nothing", async () => {
    const before = fs.statSync(p()).size;
    const err = await expectCode(v.write(size - 512, Buffer.alloc(1024)), "TM_VOLUME_RANGE");
    expect(err).toMatchObject({ volume: "io", offset: size - 512, length: 1024 });
    expect(err.message).toContain(String(size));
    await expectCode(v.read(size, 512), "TM_VOLUME_RANGE");
    await expectCode(v.writeZeroes(size, 512), "TM_VOLUME_RANGE");
    await expectCode(v.read(-512, 512), "TM_VOLUME_RANGE");
    await expectCode(v.read(Number.NaN, 512), "TM_VOLUME_RANGE");
    await expectCode(v.read(2 ** 60, 512), "TM_VOLUME_RANGE");
    expect(fs.statSync(p()).size).toBe(before);
  });

  it("disks: a read longer than READ_BYTES_MAX is TM_VOLUME_RANGE", async () => {
    const bigPath = tmpPath("big.img");
    const big = await openVolume({ name: "big", path: bigPath, createSizeBytes: 2 * READ_BYTES_MAX });
    try {
      await expectCode(big.read(0, READ_BYTES_MAX + 512), "TM_VOLUME_RANGE");
      expect((await big.read(0, READ_BYTES_MAX)).length).toBe(READ_BYTES_MAX);
    } finally {
      await big.close();
      fs.rmSync(bigPath);
    }
  });
});

describe("disks: read-only and closed volumes", () => {
  it("disks: a read-only volume reads and refuses writes with TM_VOLUME_READONLY", async () => {
    const p = tmpPath("ro.img");
    fs.writeFileSync(p, Buffer.alloc(4096, 3));
    const v = await openVolume({ name: "ro", path: p, readOnly: true });
    try {
      expect((await v.read(0, 4096)).every((b) => b === 3)).toBe(true);
      await expectCode(v.write(0, Buffer.alloc(512)), "TM_VOLUME_READONLY");
      await expectCode(v.writeZeroes(0, 512), "TM_VOLUME_READONLY");
      // Read-only opens are exclusive too: one opener per volume, whatever its mode.
      await expectCode(openVolume({ name: "ro2", path: p, readOnly: true }), "TM_VOLUME_LOCKED");
    } finally {
      await v.close();
    }
    expect(fs.readFileSync(p).every((b) => b === 3)).toBe(true);
  });

  it("disks: every call after close is TM_VOLUME_CLOSED; close twice is fine", async () => {
    const v = await openVolume({ name: "closed", path: tmpPath("closed.img"), createSizeBytes: MiB });
    await v.close();
    await v.close();
    await expectCode(v.read(0, 512), "TM_VOLUME_CLOSED");
    await expectCode(v.write(0, Buffer.alloc(512)), "TM_VOLUME_CLOSED");
    await expectCode(v.writeZeroes(0, 512), "TM_VOLUME_CLOSED");
    await expectCode(v.sync(), "TM_VOLUME_CLOSED");
  });

  it("disks: close waits for writes already in flight", async () => {
    const p = tmpPath("inflight.img");
    const v = await openVolume({ name: "inflight", path: p, createSizeBytes: 4 * MiB });
    const w = v.write(0, Buffer.alloc(4 * MiB, 9));
    await v.close();
    await w;
    expect(fs.readFileSync(p).every((b) => b === 9)).toBe(true);
  });
});

/** Runs openVolume on `file` in a separate Node process (via tsx); returns what it printed. */
async function openInChild(file: string): Promise<string> {
  const script = tmpPath(`open-child-${process.pid}.mts`);
  const volumeUrl = pathToFileURL(path.join(repoRoot, "disks/volume.ts")).href;
  fs.writeFileSync(
    script,
    `import { openVolume } from ${JSON.stringify(volumeUrl)};
try {
  const v = await openVolume({ name: "child", path: process.env.TM_LOCK_PATH! });
  await v.close();
  console.log("OPENED");
} catch (err) {
  console.log((err as { code?: string }).code, (err as Error).message);
}
`,
  );
  const child = spawn(process.execPath, ["--import", "tsx", script], {
    cwd: repoRoot,
    env: { ...process.env, TM_LOCK_PATH: file },
  });
  let out = "";
  let err = "";
  child.stdout.on("data", (d: Buffer) => (out += d.toString()));
  child.stderr.on("data", (d: Buffer) => (err += d.toString()));
  const code = await new Promise<number | null>((resolve) => child.on("exit", resolve));
  if (code !== 0) throw new Error(`child exited ${code}: ${err}`);
  return out.trim();
}

describe("disks: locking", () => {
  it("disks: a second open in the same process is TM_VOLUME_LOCKED until close", async () => {
    const p = tmpPath("lock-same.img");
    const v = await openVolume({ name: "first", path: p, createSizeBytes: MiB });
    const err = await expectCode(openVolume({ name: "second", path: p }), "TM_VOLUME_LOCKED");
    expect(err.message).toContain(p);
    expect(err.message).toContain("second");
    expect(err.volume).toBe("second");
    // createSizeBytes on a locked existing file does not bypass the lock.
    await expectCode(openVolume({ name: "third", path: p, createSizeBytes: MiB }), "TM_VOLUME_LOCKED");
    await v.close();
    const again = await openVolume({ name: "second", path: p });
    await again.close();
  });

  it("disks: a flock held by another process makes open fail with TM_VOLUME_LOCKED", async () => {
    const p = tmpPath("lock-child.img");
    fs.writeFileSync(p, Buffer.alloc(MiB));
    const child = await holdLockInChild(p);
    try {
      const err = await expectCode(openVolume({ name: "parent", path: p }), "TM_VOLUME_LOCKED");
      expect(err.message).toContain(p);
    } finally {
      await stopChild(child);
    }
    // The holder is gone, so is its lock.
    await (await openVolume({ name: "parent", path: p })).close();
  });

  it("disks: another process's openVolume fails with TM_VOLUME_LOCKED while we hold it, and succeeds after close", async () => {
    const p = tmpPath("lock-tsx.img");
    const v = await openVolume({ name: "holder", path: p, createSizeBytes: MiB });
    try {
      const out = await openInChild(p);
      expect(out).toMatch(/^TM_VOLUME_LOCKED /);
      expect(out).toContain(p);
    } finally {
      await v.close();
    }
    expect(await openInChild(p)).toBe("OPENED");
  });
});

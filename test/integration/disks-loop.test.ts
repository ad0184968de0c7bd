// Volumes on a real Linux block device: a loop device over a temp file, made
// with losetup. Needs root and /dev/loop-control; without them every test here
// skips and the reason is printed. The loop device is detached in afterAll
// whatever happened, so a failed run does not leak /dev/loopN.
import { execFileSync } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { attachLoop, detachLoop, loopSupported } from "../../disks/loop-device.ts";
import { openVolume, type Volume } from "../../disks/volume.ts";
import { holdLockInChild, stopChild } from "../support/lock-holder.ts";
import { expectCode } from "../support/volume-errors.ts";

const MiB = 1024 * 1024;
const support = loopSupported();
if (!support.ok) console.warn(`disks-loop: skipping loop-device tests: ${support.why}`);



describe.skipIf(!support.ok)("disks: loop device", () => {
  const backingBytes = 48 * MiB;
  let dir = "";
  let backing = "";
  let dev: string | undefined;
  const opened: Volume[] = [];

  async function open(name: string, readOnly = false): Promise<Volume> {
    const v = await openVolume({ name, path: dev!, readOnly });
    opened.push(v);
    return v;
  }

  beforeAll(async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), "tidemark-loop-"));
    backing = path.join(dir, "backing.img");
    fs.writeFileSync(backing, "");
    fs.truncateSync(backing, backingBytes);
    dev = await attachLoop(backing);
  });

  afterAll(async () => {
    // Close before detaching: the kernel defers a detach while the device is open.
    for (const v of opened) await v.close().catch((err) => console.warn(`disks-loop: close ${v.name}: ${String(err)}`));
    if (dev !== undefined) {
      await detachLoop(dev).catch((err) => console.warn(`disks-loop: could not detach ${dev}: ${String(err)}`));
    }
    if (dir !== "") fs.rmSync(dir, { recursive: true, force: true });
  });

  it("disks: attachLoop gives a /dev/loopN whose size by SEEK_END equals the file's (48 MiB)", async () => {
    expect(dev).toMatch(/^\/dev\/loop\d+$/);
    const v = await open("loop-size");
    try {
      expect(v.kind).toBe("block");
      expect(v.sizeBytes).toBe(backingBytes);
      expect(v.sizeBytes).toBe(fs.statSync(backing).size);
    } finally {
      await v.close();
    }
  });

  it("disks: writes through the device read back, and after sync are in the backing file", async () => {
    const v = await open("loop-io");
    try {
      const pattern = (i: number) => Buffer.alloc(64 * 1024, (i * 37 + 11) & 0xff);
      const offsets = [0, 128 * 1024, 512 * 1001, 7 * MiB + 512, backingBytes - 64 * 1024];
      for (const [i, off] of offsets.entries()) await v.write(off, pattern(i));
      for (const [i, off] of offsets.entries()) expect((await v.read(off, 64 * 1024)).equals(pattern(i))).toBe(true);
      await v.writeZeroes(MiB, 3 * MiB);
      expect((await v.read(MiB, 3 * MiB)).every((b) => b === 0)).toBe(true);
      await v.sync();
      const fd = fs.openSync(backing, "r");
      try {
        for (const [i, off] of offsets.entries()) {
          const got = Buffer.alloc(64 * 1024);
          fs.readSync(fd, got, 0, got.length, off);
          expect(got.equals(pattern(i))).toBe(true);
        }
      } finally {
        fs.closeSync(fd);
      }
      await expectCode(v.read(backingBytes, 512), "TM_VOLUME_RANGE");
      await expectCode(v.write(256, Buffer.alloc(512)), "TM_VOLUME_ALIGN");
    } finally {
      await v.close();
    }
  });

  it("disks: a second open of the device is TM_VOLUME_LOCKED, released on close", async () => {
    const v = await open("loop-first");
    try {
      const err = await expectCode(openVolume({ name: "loop-second", path: dev! }), "TM_VOLUME_LOCKED");
      expect(err.message).toContain(dev!);
      expect(err.message).toContain("loop-second");
      await expectCode(openVolume({ name: "loop-ro", path: dev!, readOnly: true }), "TM_VOLUME_LOCKED");
    } finally {
      await v.close();
    }
    const again = await open("loop-second");
    await again.close();
  });

  it("disks: a flock on the device held by another process is TM_VOLUME_LOCKED", async () => {
    const child = await holdLockInChild(dev!);
    try {
      const err = await expectCode(openVolume({ name: "loop-parent", path: dev! }), "TM_VOLUME_LOCKED");
      expect(err.message).toContain("flock");
    } finally {
      await stopChild(child);
    }
    await (await open("loop-parent")).close();
  });
});

// A full file system is the one I/O error a test can make on demand: a 1 MiB
// tmpfs under a 4 MiB sparse volume. Needs root to mount.
const canMount = process.platform === "linux" && process.getuid?.() === 0;
if (!canMount) console.warn("disks-loop: skipping the ENOSPC test: mounting a tmpfs needs root on Linux");
describe.skipIf(!canMount)("disks: I/O errors", () => {
  let mnt = "";
  let mounted = false;

  beforeAll(() => {
    mnt = fs.mkdtempSync(path.join(os.tmpdir(), "tidemark-enospc-"));
    try {
      execFileSync("mount", ["-t", "tmpfs", "-o", "size=1m", "tidemark-enospc", mnt], { stdio: "pipe" });
      mounted = true;
    } catch (err) {
      console.warn(`disks-loop: cannot mount a tmpfs, skipping the ENOSPC test: ${String(err)}`);
    }
  });

  afterAll(() => {
    if (mounted) execFileSync("umount", [mnt]);
    if (mnt !== "") fs.rmSync(mnt, { recursive: true, force: true });
  });

  it("disks: ENOSPC on a full file system is TM_VOLUME_IO with sysCode ENOSPC (1 MiB tmpfs, 4 MiB volume)", async (ctx) => {
    if (!mounted) ctx.skip("cannot mount a 1 MiB tmpfs here (needs root and the mount command); the reason is printed by beforeAll");
    const v = await openVolume({ name: "full", path: path.join(mnt, "full.img"), createSizeBytes: 4 * MiB });
    try {
      const err = await expectCode(v.write(0, Buffer.alloc(2 * MiB, 1)), "TM_VOLUME_IO");
      expect(err.sysCode).toBe("ENOSPC");
      expect(err.volume).toBe("full");
      expect(err.offset).toBe(0);
      expect(err.cause).toBeDefined();
      const z = await expectCode(v.writeZeroes(2 * MiB, 2 * MiB), "TM_VOLUME_IO");
      expect(z.sysCode).toBe("ENOSPC");
    } finally {
      await v.close();
    }
  });
});

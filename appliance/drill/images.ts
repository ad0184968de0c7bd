// Reading and comparing images (files or block devices) the way a user would check them: cmp(1),
// and plain positional reads. Nothing here knows what tidemark keeps inside.
import { execFile } from "node:child_process";
import { open } from "node:fs/promises";
import { CHAIN_BLOCK_BYTES } from "./chain-block.ts";

/** cmp(1) of two images: null when identical, else what differs (cmp's line and how many 4 KiB blocks). */
export async function cmpImages(a: string, b: string): Promise<string | null> {
  const said = await new Promise<string | null>((resolve) => {
    execFile("cmp", [a, b], (err, stdout, stderr) => {
      if (!err) return resolve(null);
      const sys = (err as NodeJS.ErrnoException).code;
      resolve(sys === "ENOENT" ? "cmp is not installed (Debian package: diffutils)" : (stdout + stderr).trim() || `cmp exit ${String(sys)}`);
    });
  });
  if (said === null) return null;
  // cmp names the first byte only; which blocks differ tells a resync bug from a stray write.
  const blocks = await differingBlocks(a, b).catch((e: Error) => ({ count: -1, first: [] as number[], why: e.message }));
  const detail = blocks.count < 0 ? "" : `; ${blocks.count} differing 4 KiB blocks${blocks.first.length ? ` (first: ${blocks.first.join(", ")})` : ""}`;
  return `${said}${detail}`;
}

async function differingBlocks(a: string, b: string): Promise<{ count: number; first: number[] }> {
  const [fa, fb] = [await open(a, "r"), await open(b, "r")];
  try {
    const chunk = 1 << 20;
    const ba = Buffer.alloc(chunk);
    const bb = Buffer.alloc(chunk);
    let count = 0;
    const first: number[] = [];
    for (let off = 0; ; off += chunk) {
      const [ra, rb] = await Promise.all([fa.read(ba, 0, chunk, off), fb.read(bb, 0, chunk, off)]);
      const n = Math.max(ra.bytesRead, rb.bytesRead);
      if (n === 0) break;
      for (let i = 0; i < n; i += CHAIN_BLOCK_BYTES) {
        const end = Math.min(i + CHAIN_BLOCK_BYTES, n);
        if (ra.bytesRead < end || rb.bytesRead < end || ba.compare(bb, i, end, i, end) !== 0) {
          count++;
          if (first.length < 5) first.push((off + i) / CHAIN_BLOCK_BYTES);
        }
      }
      if (n < chunk) break;
    }
    return { count, first };
  } finally {
    await fa.close();
    await fb.close();
  }
}

export async function readRange(file: string, offset: number, length: number): Promise<Buffer> {
  const fh = await open(file, "r");
  try {
    const buf = Buffer.alloc(length);
    let got = 0;
    while (got < length) {
      const { bytesRead } = await fh.read(buf, got, length - got, offset + got);
      if (bytesRead === 0) throw new Error(`${file}: ends at ${offset + got}, before ${offset + length}`);
      got += bytesRead;
    }
    return buf;
  } finally {
    await fh.close();
  }
}

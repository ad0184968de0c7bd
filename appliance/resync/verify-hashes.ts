// Block hashes of an online verify (docs/verify.md): XXH3-128 of each 4 KiB
// block, and the data of a VERIFY record (u64 run stamp, then one 16-byte hash
// per block, big-endian). Pure: buffers in, buffers and numbers out. Both
// sides hash with the same function over the same bytes of the same moment,
// so two equal blocks always give equal hashes and a difference is real.
import { xxh3 } from "@node-rs/xxhash";
import { VERIFY_BLOCK_BYTES, VERIFY_HASH_BYTES, VERIFY_HEADER_BYTES, verifyDataBytes } from "../replication/frames.ts";
import { assert } from "../invariant.ts";

/** Writes the XXH3-128 of each 4 KiB block of `blocks` into `out` from `at`. */
function hashInto(blocks: Buffer, out: Buffer, at: number): void {
  for (let i = 0; i < blocks.length; i += VERIFY_BLOCK_BYTES) {
    const h = xxh3.xxh128(blocks.subarray(i, i + VERIFY_BLOCK_BYTES));
    out.writeBigUInt64BE(h >> 64n, at);
    out.writeBigUInt64BE(h & 0xffff_ffff_ffff_ffffn, at + 8);
    at += VERIFY_HASH_BYTES;
  }
}

/** A VERIFY record's data for `blocks` (whole 4 KiB blocks) read at the run stamped `runTs`. */
export function verifyData(runTs: bigint, blocks: Buffer): Buffer {
  assert(blocks.length > 0 && blocks.length % VERIFY_BLOCK_BYTES === 0, `verify hashes whole 4 KiB blocks, not ${blocks.length} bytes`);
  const out = Buffer.allocUnsafe(verifyDataBytes(blocks.length));
  out.writeBigUInt64BE(runTs, 0);
  hashInto(blocks, out, VERIFY_HEADER_BYTES);
  return out;
}

/** The run stamp of a VERIFY record's data. */
export function verifyRunTs(data: Buffer): bigint {
  return data.readBigUInt64BE(0);
}

export interface BlockMismatch {
  /** Index of the block within the record's range. */
  index: number;
  primaryHash: string;
  secondaryHash: string;
}

/** Compares the primary's hashes (a VERIFY record's data) with the secondary's blocks of the same range. */
export function compareBlocks(data: Buffer, blocks: Buffer): BlockMismatch[] {
  assert(data.length === verifyDataBytes(blocks.length), `verify data of ${data.length} bytes does not cover ${blocks.length} bytes of blocks`);
  const mine = Buffer.allocUnsafe(data.length - VERIFY_HEADER_BYTES);
  hashInto(blocks, mine, 0);
  const out: BlockMismatch[] = [];
  for (let i = 0, at = 0; at < mine.length; i++, at += VERIFY_HASH_BYTES) {
    const theirs = data.subarray(VERIFY_HEADER_BYTES + at, VERIFY_HEADER_BYTES + at + VERIFY_HASH_BYTES);
    const ours = mine.subarray(at, at + VERIFY_HASH_BYTES);
    if (!theirs.equals(ours)) out.push({ index: i, primaryHash: theirs.toString("hex"), secondaryHash: ours.toString("hex") });
  }
  return out;
}

// The on-disk format of one causal-chain block (docs/chains.md byte for byte). Pure: no I/O.
// Invariants: a block is exactly 4096 bytes, self-identifying (run, chain, position, volume, block)
// and covered whole by a CRC32C; decode never throws and calls anything it cannot vouch for torn.
import { crc32c } from "@node-rs/crc32";
import { assert } from "../invariant.ts";

export const CHAIN_BLOCK_BYTES = 4096;
/** "TMCH": tells a chain block from host data or another tool's pattern. */
export const CHAIN_BLOCK_MAGIC = 0x544d4348;
export const CHAIN_BLOCK_VERSION = 1;
/** Bytes before the filler; the filler runs from here to the end of the block. */
export const CHAIN_BLOCK_HEADER_BYTES = 48;

const OFF_MAGIC = 0;
const OFF_VERSION = 4;
const OFF_FLAGS = 6;
const OFF_RUN = 8;
const OFF_CHAIN = 16;
const OFF_POS = 20;
const OFF_VOLUME_TAG = 24;
const OFF_RESERVED_A = 28;
const OFF_BLOCK_INDEX = 32;
const OFF_CRC = 40;
const OFF_RESERVED_B = 44;

const U32_MAX = 0xffffffff;
const U64_MAX = (1n << 64n) - 1n;

export interface ChainBlockFields {
  /** Identifies one drill round, so a block an earlier round left behind is never taken for this one's. */
  run: bigint;
  chain: number;
  pos: number;
  /** volumeTag() of the (primary) volume name the plan puts this block on. */
  volumeTag: number;
  blockIndex: number;
}

export type DecodedChainBlock =
  | { kind: "empty" }
  | { kind: "torn"; why: string }
  | ({ kind: "block" } & ChainBlockFields);

/** CRC32C of the volume name's UTF-8 bytes: a block copied to the wrong volume shows it. */
export function volumeTag(name: string): number {
  return crc32c(Buffer.from(name, "utf8"));
}

/** The filler's PRNG seed: a 32-bit mix of (run, chain, pos), so a block of another position never matches. */
function fillerSeed(run: bigint, chain: number, pos: number): number {
  let h = Number(run & 0xffffffffn) ^ Math.imul(Number(run >> 32n) >>> 0, 0x9e3779b1);
  h = Math.imul(h ^ chain, 0x85ebca6b) >>> 0;
  h = Math.imul(h ^ (h >>> 13) ^ pos, 0xc2b2ae35) >>> 0;
  return (h ^ (h >>> 16)) >>> 0;
}

/** Writes the deterministic filler of (run, chain, pos) into buf[CHAIN_BLOCK_HEADER_BYTES..] (mulberry32 words, big-endian). */
function writeFiller(buf: Buffer, run: bigint, chain: number, pos: number): void {
  let a = fillerSeed(run, chain, pos);
  for (let off = CHAIN_BLOCK_HEADER_BYTES; off < CHAIN_BLOCK_BYTES; off += 4) {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    buf.writeUInt32BE((t ^ (t >>> 14)) >>> 0, off);
  }
}

function isU32(n: number): boolean {
  return Number.isInteger(n) && n >= 0 && n <= U32_MAX;
}

export function encodeChainBlock(f: ChainBlockFields): Buffer {
  assert(f.run >= 0n && f.run <= U64_MAX, `chain block run ${f.run} is not a u64`);
  assert(isU32(f.chain) && isU32(f.pos) && isU32(f.volumeTag), `chain block fields out of u32 range: ${JSON.stringify({ chain: f.chain, pos: f.pos, volumeTag: f.volumeTag })}`);
  assert(Number.isSafeInteger(f.blockIndex) && f.blockIndex >= 0, `chain block index ${f.blockIndex} is not a safe non-negative integer`);
  const buf = Buffer.alloc(CHAIN_BLOCK_BYTES);
  buf.writeUInt32BE(CHAIN_BLOCK_MAGIC, OFF_MAGIC);
  buf.writeUInt16BE(CHAIN_BLOCK_VERSION, OFF_VERSION);
  buf.writeBigUInt64BE(f.run, OFF_RUN);
  buf.writeUInt32BE(f.chain, OFF_CHAIN);
  buf.writeUInt32BE(f.pos, OFF_POS);
  buf.writeUInt32BE(f.volumeTag, OFF_VOLUME_TAG);
  buf.writeBigUInt64BE(BigInt(f.blockIndex), OFF_BLOCK_INDEX);
  writeFiller(buf, f.run, f.chain, f.pos);
  buf.writeUInt32BE(crc32c(buf), OFF_CRC);
  return buf;
}

function isAllZero(b: Buffer): boolean {
  for (let i = 0; i < b.length; i++) if (b[i] !== 0) return false;
  return true;
}

const hex = (n: number) => `0x${n.toString(16).padStart(8, "0")}`;

export function decodeChainBlock(bytes: Uint8Array): DecodedChainBlock {
  const b = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (b.length !== CHAIN_BLOCK_BYTES) return { kind: "torn", why: `block is ${b.length} bytes, not ${CHAIN_BLOCK_BYTES}` };
  if (isAllZero(b)) return { kind: "empty" };
  const magic = b.readUInt32BE(OFF_MAGIC);
  if (magic !== CHAIN_BLOCK_MAGIC) return { kind: "torn", why: `bad magic ${hex(magic)}` };
  const version = b.readUInt16BE(OFF_VERSION);
  if (version !== CHAIN_BLOCK_VERSION) return { kind: "torn", why: `unknown format version ${version}` };
  const stored = b.readUInt32BE(OFF_CRC);
  const zeroed = Buffer.from(b);
  zeroed.writeUInt32BE(0, OFF_CRC);
  const computed = crc32c(zeroed);
  if (stored !== computed) return { kind: "torn", why: `crc mismatch (stored ${hex(stored)}, computed ${hex(computed)})` };
  // The CRC matched, so what follows can only fail for a block written by a buggy or foreign encoder.
  if (b.readUInt16BE(OFF_FLAGS) !== 0 || b.readUInt32BE(OFF_RESERVED_A) !== 0 || b.readUInt32BE(OFF_RESERVED_B) !== 0) {
    return { kind: "torn", why: "nonzero reserved field" };
  }
  const blockIndex = b.readBigUInt64BE(OFF_BLOCK_INDEX);
  if (blockIndex > BigInt(Number.MAX_SAFE_INTEGER)) return { kind: "torn", why: `block index ${blockIndex} out of range` };
  const f: ChainBlockFields = {
    run: b.readBigUInt64BE(OFF_RUN),
    chain: b.readUInt32BE(OFF_CHAIN),
    pos: b.readUInt32BE(OFF_POS),
    volumeTag: b.readUInt32BE(OFF_VOLUME_TAG),
    blockIndex: Number(blockIndex),
  };
  const filler = Buffer.alloc(CHAIN_BLOCK_BYTES);
  writeFiller(filler, f.run, f.chain, f.pos);
  if (filler.compare(b, CHAIN_BLOCK_HEADER_BYTES, CHAIN_BLOCK_BYTES, CHAIN_BLOCK_HEADER_BYTES, CHAIN_BLOCK_BYTES) !== 0) {
    return { kind: "torn", why: "filler does not match (run, chain, pos)" };
  }
  return { kind: "block", ...f };
}

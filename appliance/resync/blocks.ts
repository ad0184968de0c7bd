// Byte ranges to bitmap blocks (4 KiB). Pure. A range that touches any byte
// of a block marks the whole block: a resync copies whole blocks.
export const BITMAP_BLOCK_BYTES = 4096;

export function blockSpan(offset: number, length: number): { first: number; last: number } {
  if (length <= 0) throw new Error(`block span of an empty range at ${offset}`);
  return { first: Math.floor(offset / BITMAP_BLOCK_BYTES), last: Math.floor((offset + length - 1) / BITMAP_BLOCK_BYTES) };
}

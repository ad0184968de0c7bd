// Where a drill round writes on each volume, and what is left to clear. Pure: plain values only.
// The random load owns the first quarter of every volume and the causal chains the rest, so the
// load can never overwrite a chain position and the checker reads only chain blocks.
import { CHAIN_BLOCK_BYTES } from "./chain-block.ts";

/**
 * The random load writes the first quarter of every volume, the chains the rest: chains need
 * many distinct blocks (each position has its own) to still be running when the takeover comes.
 */
export function regions(volumeBytes: number) {
  const blocks = Math.floor(volumeBytes / CHAIN_BLOCK_BYTES);
  const chainStartBlock = Math.floor(blocks / 4);
  return { loadBytes: chainStartBlock * CHAIN_BLOCK_BYTES, chainStartBlock, chainBlocks: blocks - chainStartBlock };
}

const ZERO_BLOCK = Buffer.alloc(CHAIN_BLOCK_BYTES);

/** Runs of 4 KiB blocks that are not all zero, as [first block, count]; runs closer than a few blocks merge into one request. */
export function nonZeroRuns(region: Buffer, mergeGapBlocks = 16): [number, number][] {
  const runs: [number, number][] = [];
  const blocks = Math.floor(region.length / CHAIN_BLOCK_BYTES);
  for (let b = 0; b < blocks; b++) {
    const at = b * CHAIN_BLOCK_BYTES;
    if (ZERO_BLOCK.compare(region, at, at + CHAIN_BLOCK_BYTES) === 0) continue;
    const last = runs[runs.length - 1];
    if (last && b - (last[0] + last[1]) <= mergeGapBlocks) last[1] = b - last[0] + 1;
    else runs.push([b, 1]);
  }
  return runs;
}

// Where every causal chain writes: a deterministic plan from a seed. Pure: no I/O, no Math.random.
// Invariants: consecutive positions of a chain are on volumes of different primaries, every
// (volume, block) is used at most once in the whole plan, and every block lies in the region.
import { CHAIN_BLOCK_BYTES } from "./chain-block.ts";
import { prng } from "./prng.ts";
import type { ErrorCode } from "../errors/codes.ts";

export interface PlanVolume {
  /** The primary volume's name (the one hosts write over NBD). */
  name: string;
  /** Subsystem id of the primary that serves it. */
  primaryId: number;
  sizeBytes: number;
}

export interface ChainPlanInput {
  volumes: PlanVolume[];
  /** First block of the chain region on every volume (default 0); random load may use the rest. */
  regionStartBlock?: number;
  /** Blocks in the region (default: up to the end of each volume). */
  regionBlocks?: number;
  chains: number;
  length: number;
  seed: number;
  /** The round's run id, written into every block (default: derived from the seed). */
  run?: bigint;
}

export interface PlannedBlock {
  volume: string;
  blockIndex: number;
}

export interface ChainPlan {
  run: bigint;
  seed: number;
  chains: number;
  length: number;
  volumes: PlanVolume[];
  regionStartBlock: number;
  /** steps[chain][pos]: where that position is written. */
  steps: PlannedBlock[][];
}

/** Bounds that keep a plan (and the drill's reads of it) finite. */
export const PLAN_CHAINS_MAX = 65_536;
export const PLAN_LENGTH_MAX = 1_000_000;
export const PLAN_BLOCKS_MAX = 4_000_000;

export class ChainPlanError extends Error {
  readonly code = "TM_CHAIN_PLAN" satisfies ErrorCode;
  constructor(message: string) {
    super(`chain plan: ${message}`);
    this.name = "ChainPlanError";
  }
}


/** splitmix64 of the seed: a nonzero run id that differs for every seed. */
export function runFromSeed(seed: number): bigint {
  const M = (1n << 64n) - 1n;
  let z = (BigInt(seed >>> 0) + 0x9e3779b97f4a7c15n) & M;
  z = ((z ^ (z >> 30n)) * 0xbf58476d1ce4e5b9n) & M;
  z = ((z ^ (z >> 27n)) * 0x94d049bb133111ebn) & M;
  z = z ^ (z >> 31n);
  return z === 0n ? 1n : z;
}

/**
 * Draws distinct block indices of [start, start+count) without materializing the range: a
 * Fisher-Yates shuffle whose swapped slots live in a map, so memory grows with the draws only.
 */
class BlockPool {
  private readonly swapped = new Map<number, number>();
  private left: number;
  constructor(
    private readonly start: number,
    count: number,
  ) {
    this.left = count;
  }
  get free(): number {
    return this.left;
  }
  draw(rand: () => number): number {
    const j = Math.floor(rand() * this.left);
    const last = this.left - 1;
    const picked = this.swapped.get(j) ?? j;
    this.swapped.set(j, this.swapped.get(last) ?? last);
    this.swapped.delete(last);
    this.left--;
    return this.start + picked;
  }
}

function pick<T>(rand: () => number, xs: T[]): T {
  return xs[Math.floor(rand() * xs.length)];
}

export function planChains(input: ChainPlanInput): ChainPlan {
  const { volumes, chains, length, seed } = input;
  const start = input.regionStartBlock ?? 0;
  if (!Number.isInteger(chains) || chains < 1 || chains > PLAN_CHAINS_MAX) throw new ChainPlanError(`chains must be 1..${PLAN_CHAINS_MAX}, got ${chains}`);
  if (!Number.isInteger(length) || length < 1 || length > PLAN_LENGTH_MAX) throw new ChainPlanError(`length must be 1..${PLAN_LENGTH_MAX}, got ${length}`);
  if (chains * length > PLAN_BLOCKS_MAX) throw new ChainPlanError(`${chains} x ${length} blocks is more than ${PLAN_BLOCKS_MAX}`);
  if (!Number.isSafeInteger(start) || start < 0) throw new ChainPlanError(`regionStartBlock must be a non-negative integer, got ${start}`);
  const names = new Set<string>();
  for (const v of volumes) {
    if (names.has(v.name)) throw new ChainPlanError(`volume ${v.name} is listed twice`);
    names.add(v.name);
  }
  const primaries = [...new Set(volumes.map((v) => v.primaryId))].sort((a, b) => a - b);
  if (primaries.length < 2) throw new ChainPlanError(`chains must cross primaries, but the volumes live on ${primaries.length} primary`);

  // One pool of free blocks per volume, restricted to the region.
  const pools = new Map<string, BlockPool>();
  for (const v of [...volumes].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0))) {
    const volumeBlocks = Math.floor(v.sizeBytes / CHAIN_BLOCK_BYTES);
    const end = input.regionBlocks === undefined ? volumeBlocks : Math.min(volumeBlocks, start + input.regionBlocks);
    pools.set(v.name, new BlockPool(start, Math.max(0, end - start)));
  }
  const byPrimary = new Map<number, string[]>(primaries.map((p) => [p, volumes.filter((v) => v.primaryId === p).map((v) => v.name).sort()]));
  const withRoom = (p: number) => byPrimary.get(p)!.filter((n) => pools.get(n)!.free > 0);

  const rand = prng(seed);
  const steps: PlannedBlock[][] = [];
  for (let c = 0; c < chains; c++) {
    const chain: PlannedBlock[] = [];
    let prev = -1;
    for (let pos = 0; pos < length; pos++) {
      const candidates = primaries.filter((p) => p !== prev && withRoom(p).length > 0);
      if (candidates.length === 0) {
        throw new ChainPlanError(`the region has no free block left for chain ${c} pos ${pos} on a primary other than #${prev}: enlarge the region or plan fewer blocks`);
      }
      const primary = pick(rand, candidates);
      const volume = pick(rand, withRoom(primary));
      chain.push({ volume, blockIndex: pools.get(volume)!.draw(rand) });
      prev = primary;
    }
    steps.push(chain);
  }
  return { run: input.run ?? runFromSeed(seed), seed, chains, length, volumes: volumes.map((v) => ({ ...v })), regionStartBlock: start, steps };
}

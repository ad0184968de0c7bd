// The consistency check a user would write: read every planned block back (image file, loop
// device or NBD export) and require each chain to be present exactly up to a prefix. It trusts
// nothing inside tidemark: only the plan, what the workload was told, and the bytes read.
import { open, type FileHandle } from "node:fs/promises";
import { CHAIN_BLOCK_BYTES, decodeChainBlock, volumeTag } from "./chain-block.ts";
import type { ChainPlan } from "./chain-plan.ts";

/** Reads block `blockIndex` (4096 bytes) of a plan volume, named by its primary name; callers map it to the copy they check. */
export type ReadBlock = (volume: string, blockIndex: number) => Promise<Buffer>;

/**
 * "prefix": after a takeover, any prefix 0..issued of each chain is right.
 * "complete": after quiesce, every acknowledged position must be there too.
 */
export type CheckMode = "prefix" | "complete";

export interface ChainCheckOptions {
  plan: ChainPlan;
  /** Per chain, indexed by chain id: what the workload sent and was told. */
  records: readonly { acked: number; issued: number }[];
  readBlock: ReadBlock;
  mode: CheckMode;
  /** Reads outstanding at once (default READS_IN_FLIGHT_DEFAULT_MAX). */
  readsInFlightMax?: number;
}

/** Violations by rule, so a report can say "gaps 0, torn 0" without parsing messages. */
export interface ViolationCounts {
  torn: number;
  foreign: number;
  gaps: number;
  future: number;
  /** complete mode: acknowledged positions not present. */
  missing: number;
}

export interface ChainCheckResult {
  ok: boolean;
  violations: string[];
  counts: ViolationCounts;
  /** Per chain: k such that positions 0..k-1 are present and intact. */
  prefixLengths: number[];
  chains: number;
  blocksRead: number;
}

export const READS_IN_FLIGHT_DEFAULT_MAX = 32;

type Seen = { kind: "absent" } | { kind: "present" } | { kind: "bad"; rule: "torn" | "foreign"; violation: string };

async function readAll<T>(count: number, inFlightMax: number, read: (i: number) => Promise<T>): Promise<T[]> {
  const out = new Array<T>(count);
  let next = 0;
  await Promise.all(
    Array.from({ length: Math.max(1, Math.min(inFlightMax, count)) }, async () => {
      while (next < count) {
        const i = next++;
        out[i] = await read(i);
      }
    }),
  );
  return out;
}

export async function checkChains(o: ChainCheckOptions): Promise<ChainCheckResult> {
  const { plan, records, mode } = o;
  if (records.length !== plan.chains) throw new Error(`chain check: ${records.length} records for ${plan.chains} chains`);
  const tags = new Map(plan.volumes.map((v) => [v.name, volumeTag(v.name)]));
  const where = plan.steps.flatMap((steps, chain) => steps.map((s, pos) => ({ chain, pos, ...s })));

  const seen = await readAll(where.length, o.readsInFlightMax ?? READS_IN_FLIGHT_DEFAULT_MAX, async (i): Promise<Seen> => {
    const { chain, pos, volume, blockIndex } = where[i];
    const at = `chain ${chain} pos ${pos} on ${volume} block ${blockIndex}`;
    const d = decodeChainBlock(await o.readBlock(volume, blockIndex));
    if (d.kind === "empty") return { kind: "absent" };
    if (d.kind === "torn") return { kind: "bad", rule: "torn", violation: `${at}: torn (${d.why})` };
    if (d.run !== plan.run || d.chain !== chain || d.pos !== pos || d.volumeTag !== tags.get(volume) || d.blockIndex !== blockIndex) {
      const found = `run ${d.run} chain ${d.chain} pos ${d.pos} volume tag 0x${d.volumeTag.toString(16)} block ${d.blockIndex}`;
      return { kind: "bad", rule: "foreign", violation: `${at}: foreign block (found ${found}, expected run ${plan.run})` };
    }
    return { kind: "present" };
  });

  const violations: string[] = [];
  const counts: ViolationCounts = { torn: 0, foreign: 0, gaps: 0, future: 0, missing: 0 };
  const prefixLengths: number[] = [];
  for (let chain = 0; chain < plan.chains; chain++) {
    const s = seen.slice(chain * plan.length, (chain + 1) * plan.length);
    const { acked, issued } = records[chain];
    for (const x of s) {
      if (x.kind !== "bad") continue;
      violations.push(x.violation);
      counts[x.rule]++;
    }
    let k = 0;
    while (k < s.length && s[k].kind === "present") k++;
    prefixLengths.push(k);
    // A gap: an empty position with a later one present. A bad position is reported above already.
    if (k < s.length && s[k].kind === "absent") {
      const q = s.findIndex((x, i) => i > k && x.kind === "present");
      if (q >= 0) {
        violations.push(`chain ${chain}: pos ${k} missing but pos ${q} present`);
        counts.gaps++;
      }
    }
    const future = s.findIndex((x, i) => i >= issued && x.kind === "present");
    if (future >= 0) {
      violations.push(`block from the future: chain ${chain} pos ${future} present but only ${issued} writes were issued`);
      counts.future++;
    }
    if (mode === "complete" && k < acked) {
      const { volume, blockIndex } = plan.steps[chain][k];
      violations.push(`chain ${chain}: acknowledged pos ${k} on ${volume} block ${blockIndex} not present (${acked} acknowledged, prefix ${k})`);
      counts.missing++;
    }
  }
  return { ok: violations.length === 0, violations, counts, prefixLengths, chains: plan.chains, blocksRead: where.length };
}

async function readBlockAt(fh: FileHandle, path: string, blockIndex: number): Promise<Buffer> {
  const buf = Buffer.alloc(CHAIN_BLOCK_BYTES);
  let got = 0;
  while (got < buf.length) {
    const { bytesRead } = await fh.read(buf, got, buf.length - got, blockIndex * CHAIN_BLOCK_BYTES + got);
    if (bytesRead === 0) throw new Error(`${path}: short read of block ${blockIndex} (${got} of ${buf.length} bytes; the image ends there)`);
    got += bytesRead;
  }
  return buf;
}

/** Positional read of one 4096-byte block of an image file or a block device. */
export async function readBlockFromFile(path: string, blockIndex: number): Promise<Buffer> {
  const fh = await open(path, "r");
  try {
    return await readBlockAt(fh, path, blockIndex);
  } finally {
    await fh.close();
  }
}

/**
 * A ReadBlock over image files or devices that keeps one handle per file open until close():
 * a check reads thousands of blocks, and an open per block would cost more than the reads.
 */
export function openFileBlockReader(pathOf: (volume: string) => string): { readBlock: ReadBlock; close: () => Promise<void> } {
  const handles = new Map<string, Promise<FileHandle>>();
  const readBlock: ReadBlock = async (volume, blockIndex) => {
    const file = pathOf(volume);
    let h = handles.get(file);
    if (!h) {
      h = open(file, "r");
      handles.set(file, h);
    }
    return readBlockAt(await h, file, blockIndex);
  };
  const close = async () => {
    const all = [...handles.values()];
    handles.clear();
    await Promise.all(all.map((h) => h.then((fh) => fh.close()).catch(() => undefined)));
  };
  return { readBlock, close };
}

/** A ReadBlock over image files or devices: `pathOf` maps a plan volume to the file of the copy being checked. */
export function fileBlockReader(pathOf: (volume: string) => string): ReadBlock {
  return (volume, blockIndex) => readBlockFromFile(pathOf(volume), blockIndex);
}

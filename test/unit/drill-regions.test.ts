// Where a drill round writes (appliance/drill/regions.ts): the load and chain regions split a
// volume without overlap, and the blocks a round must clear are found as merged runs.
import { describe, expect, it } from "vitest";
import { nonZeroRuns, regions } from "../../appliance/drill/regions.ts";

const B = 4096;

describe("drill regions", () => {
  it("drill regions: a 32 MiB volume is 2048 blocks of load, then 6144 blocks of chains", () => {
    expect(regions(32 << 20)).toEqual({ loadBytes: 2048 * B, chainStartBlock: 2048, chainBlocks: 6144 });
    const r = regions(5 * B + 100);
    expect(r.chainStartBlock + r.chainBlocks).toBe(5);
    expect(r.loadBytes).toBe(r.chainStartBlock * B);
  });

  it("drill regions: non-zero blocks come back as runs; gaps up to the merge distance are bridged, a single byte counts", () => {
    const region = Buffer.alloc(100 * B);
    expect(nonZeroRuns(region)).toEqual([]);
    for (const b of [0, 1, 2, 10, 40, 99]) region[b * B + (b % 7) * 511] = 1;
    region[60 * B + B - 1] = 0xff;
    expect(nonZeroRuns(region, 0)).toEqual([[0, 3], [10, 1], [40, 1], [60, 1], [99, 1]]);
    expect(nonZeroRuns(region, 8)).toEqual([[0, 11], [40, 1], [60, 1], [99, 1]]);
    expect(nonZeroRuns(region, 30)).toEqual([[0, 61], [99, 1]]);
    expect(nonZeroRuns(region, 38)).toEqual([[0, 100]]);
  });
});

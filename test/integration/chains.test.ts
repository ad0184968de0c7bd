// Causal chains over NBD on real processes (the seed's Fig. 1): chains cross p1a, p1b (primary
// #1) and p2a, p2b (primary #2); after quiesce every acknowledged position must be on the
// primaries and on their secondaries, read back from the image files by the drill's checker.
import { afterEach, describe, expect, it } from "vitest";
import { TestCluster, fig1Config } from "../support/cluster.ts";
import { planChains } from "../../appliance/drill/chain-plan.ts";
import { runChainWorkload } from "../../appliance/drill/chain-workload.ts";
import { checkChains, fileBlockReader } from "../../appliance/drill/chain-checker.ts";

const VOLUME_MIB = 16;
const CHAINS = 32;
const LENGTH = 50;
let cluster: TestCluster | null = null;

afterEach(async () => {
  await cluster?.destroy();
  cluster = null;
});

describe("chains: Fig. 1 topology on real processes", () => {
  it(`chains: ${CHAINS} chains x ${LENGTH} across primaries #1 and #2, quiesce: every acknowledged position on primaries and secondaries`, async () => {
    const seed = Number(process.env.TIDEMARK_SEED ?? 1);
    cluster = TestCluster.create(await fig1Config({ volumeMiB: VOLUME_MIB }));
    const c = cluster;
    await c.startAll();
    const primaries = ["p1a", "p1b", "p2a", "p2b"];
    const volumes = primaries.map((name) => ({ name, primaryId: c.topo.volumes.get(name)!.subsystemId, sizeBytes: VOLUME_MIB << 20 }));
    // Chains use the upper half of each volume, leaving the lower half to other load.
    const plan = planChains({ volumes, chains: CHAINS, length: LENGTH, seed, regionStartBlock: (VOLUME_MIB << 20) / 4096 / 2 });
    console.log(`chains seed ${seed} run ${plan.run}`);

    const t0 = Date.now();
    const records = await runChainWorkload({ plan, connect: (v) => c.nbd(v) });
    const writeMs = Date.now() - t0;
    expect(records.map((r) => r.error).filter(Boolean)).toEqual([]);
    expect(records.every((r) => r.acked === LENGTH && r.issued === LENGTH)).toBe(true);
    const q0 = Date.now();
    await c.quiesce();
    const quiesceMs = Date.now() - q0;

    const onPrimaries = await checkChains({ plan, records, mode: "complete", readBlock: fileBlockReader((v) => c.volumeFile(v)) });
    expect(onPrimaries.violations).toEqual([]);
    const secondaryOf = new Map(c.topo.pairs.map((p) => [p.primary.name, p.secondary.name]));
    expect(primaries.every((p) => secondaryOf.has(p))).toBe(true);
    const onSecondaries = await checkChains({ plan, records, mode: "complete", readBlock: fileBlockReader((v) => c.volumeFile(secondaryOf.get(v)!)) });
    expect(onSecondaries.violations).toEqual([]);
    expect(onSecondaries.prefixLengths.every((k) => k === LENGTH)).toBe(true);

    const writes = CHAINS * LENGTH;
    console.log(
      `chains: ${CHAINS} chains x ${LENGTH} positions = ${writes} dependent writes in ${writeMs} ms (${((writes / writeMs) * 1000).toFixed(0)} writes/s); ` +
        `quiesce ${quiesceMs} ms; checked ${onPrimaries.blocksRead} blocks on primaries and ${onSecondaries.blocksRead} on secondaries (${[...secondaryOf].map(([p, s]) => `${p}->${s}`).join(", ")})`,
    );
    expect(c.unexpectedDeaths()).toEqual([]);
  });
});

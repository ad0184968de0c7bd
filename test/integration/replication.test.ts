// End-to-end replication on real processes and real files: the seed's Fig. 1
// (primaries #1, #2; secondaries #3, #4, #5; group C1), host writes over NBD.
import { afterEach, describe, expect, it } from "vitest";
import { readFile } from "node:fs/promises";
import { TestCluster, cmp, fig1Config, prng } from "../support/cluster.ts";
import { VolumeModel, runWriter } from "../support/workload.ts";

const VOLUME_MIB = 16;
let cluster: TestCluster | null = null;

afterEach(async () => {
  await cluster?.destroy();
  cluster = null;
});

interface Sampled {
  samples: number;
  maxLagMs: number;
  violations: string[];
}

/** Polls every secondary: an applied RCR above 112 is a violation. */
function sampleStatuses(c: TestCluster, stop: () => boolean, out: Sampled = { samples: 0, maxLagMs: 0, violations: [] }): Promise<Sampled> {
  return (async () => {
    while (!stop()) {
      try {
        const doc = await c.status();
        for (const g of doc.groups) if (g.lagMs !== null) out.maxLagMs = Math.max(out.maxLagMs, g.lagMs);
        for (const id of [3, 4, 5]) {
          if (!c.alive(id)) continue;
          const s = await c.rawStatus(id);
          for (const g of s.secondary ?? []) {
            if (BigInt(g.lastAppliedTs) > BigInt(g.second)) {
              out.violations.push(`#${id} ${g.name}: applied ts ${g.lastAppliedTs} above 112 ${g.second}`);
            }
          }
        }
        out.samples++;
      } catch {
        /* a subsystem being restarted */
      }
      await new Promise((r) => setTimeout(r, 50));
    }
    return out;
  })();
}

async function checkPairsIdentical(c: TestCluster): Promise<void> {
  for (const p of c.pairFiles()) {
    expect(await cmp(p.primary, p.secondary), `cmp ${p.name}`).toBeNull();
  }
}

async function checkModels(c: TestCluster, models: Map<string, VolumeModel>): Promise<void> {
  for (const [vol, m] of models) {
    const img = await readFile(c.volumeFile(vol));
    const at = m.firstMismatch(img);
    expect(at, `primary ${vol}: acknowledged write missing at byte ${at}`).toBe(-1);
  }
}

describe("replication: Fig. 1 topology on real processes", () => {
  it("replication: concurrent random writes of mixed sizes to every primary (2x3, 6 s) leave every secondary identical after quiesce", async () => {
    const seed = Number(process.env.TIDEMARK_SEED ?? 1);
    console.log(`replication seed ${seed}`);
    cluster = TestCluster.create(await fig1Config({ volumeMiB: VOLUME_MIB }));
    const c = cluster;
    await c.startAll();
    const rand = prng(seed);
    const models = new Map(["p1a", "p1b", "p2a", "p2b"].map((v) => [v, new VolumeModel(VOLUME_MIB << 20)]));
    const endAt = Date.now() + 6000;
    // Writes go on past 6 s until the sampler has looked twice: on a loaded
    // machine one status round can take seconds (at most 60 s in all).
    const live: Sampled = { samples: 0, maxLagMs: 0, violations: [] };
    const until = () => (Date.now() > endAt && live.samples > 1) || Date.now() > endAt + 54_000;
    let writing = true;
    const sampler = sampleStatuses(c, () => !writing, live);
    const t0 = Date.now();
    const results = await Promise.all(
      [...models].map(([vol, model]) =>
        runWriter({ rand, queueDepth: 8, maxBytes: 256 * 1024, until, connect: () => c.nbd(vol), model }),
      ),
    );
    const secs = (Date.now() - t0) / 1000;
    writing = false;
    const sampled = await sampler;
    const writes = results.reduce((a, r) => a + r.writes, 0);
    const bytes = results.reduce((a, r) => a + r.bytes, 0);
    const q0 = Date.now();
    await c.quiesce();
    console.log(
      `replication: ${writes} writes, ${(bytes / 1048576).toFixed(1)} MiB in ${secs.toFixed(1)} s = ${(writes / secs).toFixed(0)} writes/s, ` +
        `${(bytes / 1048576 / secs).toFixed(1)} MiB/s; largest lag ${sampled.maxLagMs.toFixed(1)} ms over ${sampled.samples} samples; quiesce ${Date.now() - q0} ms`,
    );
    expect(results.every((r) => r.reconnects === 0)).toBe(true);
    expect(writes).toBeGreaterThan(100);
    // The sampler must have looked at the group while it was written; how often depends on the machine.
    expect(sampled.samples).toBeGreaterThan(1);
    expect(sampled.violations).toEqual([]);
    await checkPairsIdentical(c);
    await checkModels(c, models);
    expect(c.unexpectedDeaths()).toEqual([]);
  });

  it("replication: kill -9 of secondary #3 and of primary #2 under load, both restarted: identical after quiesce, no acknowledged write lost", async () => {
    cluster = TestCluster.create(await fig1Config({ volumeMiB: VOLUME_MIB }));
    const c = cluster;
    await c.startAll();
    const rand = prng(7);
    const models = new Map(["p1a", "p1b", "p2a", "p2b"].map((v) => [v, new VolumeModel(VOLUME_MIB << 20)]));
    let stop = false;
    const writers = Promise.all(
      [...models].map(([vol, model]) =>
        runWriter({ rand, queueDepth: 8, maxBytes: 128 * 1024, until: () => stop, connect: () => c.nbd(vol), model }),
      ),
    );
    const pause = (ms: number) => new Promise((r) => setTimeout(r, ms));
    await pause(1500);
    await c.kill(3);
    await pause(1000);
    await c.start(3);
    await pause(1000);
    await c.kill(2);
    await pause(500);
    await c.start(2);
    await pause(1500);
    stop = true;
    const results = await writers;
    expect(results.find((r, i) => i >= 2)!.reconnects, "writers of primary #2 saw it die").toBeGreaterThan(0);
    await c.quiesce();
    await checkPairsIdentical(c);
    await checkModels(c, models);
    expect(await c.waitForLog(2, /previous run did not stop cleanly/)).toContain("previous run did not stop cleanly");
    expect(c.unexpectedDeaths()).toEqual([]);
  });
});

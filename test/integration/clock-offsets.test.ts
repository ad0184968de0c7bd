// Measured clock offsets (issue 15; appliance/rcm/clock-offsets.ts), on real
// processes of one host, each subsystem with its own real-time clock offset
// (libfaketime, as test/support/netns-hosts.ts sets it; CLOCK_MONOTONIC is left
// alone), clock "realtime" with commit wait. The RCM measures every
// subsystem's offset; within maxClockOffsetMs it reports it and the group
// keeps replicating; beyond it the group is suspended with a reason naming
// both subsystems and the offset.
import { afterEach, describe, expect, it } from "vitest";
import { askRcm } from "../../appliance/cli/rcm-client.ts";
import { TestCluster, fig1Config, freePort } from "../support/cluster.ts";
import { faketimeEnv, libfaketimePath } from "../support/netns-hosts.ts";

const UNAVAILABLE = libfaketimePath() === null ? "libfaketime is not installed (apt-get install faketime)" : null;
if (UNAVAILABLE) console.warn(`clock-offsets tests skipped: ${UNAVAILABLE}`);

const BOUND_MS = 10;
const pause = (ms: number) => new Promise((r) => setTimeout(r, ms));

interface OffsetReport {
  subsystems: { subsystem: number; offsetMs: number; uncertaintyMs: number; roundTripMs: number }[];
  widest: { ahead: number; behind: number; offsetMs: number; uncertaintyMs: number } | null;
  boundMs: number;
}

let cluster: TestCluster | null = null;
afterEach(async () => {
  await cluster?.destroy();
  cluster = null;
});

/** The fig. 1 cluster with the RCM, subsystem #2 running `skewMs` ahead. */
async function skewedCluster(skewMs: number): Promise<TestCluster> {
  const cfg = await fig1Config({
    volumeMiB: 4,
    extra: { clock: "realtime", maxClockOffsetMs: BOUND_MS, rcm: { port: await freePort(), failureTimeoutMs: 2000, checkIntervalMs: 200 } },
  });
  const env = Object.entries(faketimeEnv(skewMs)).map(([k, v]) => `${k}=${v}`);
  // `env` execs the command in place, so the pid the cluster holds is the subsystem's.
  cluster = TestCluster.create(cfg, "tidemark-offsets-", { launch: (id, argv) => (id === 2 ? ["env", ...env, ...argv] : argv) });
  await cluster.startAll();
  await cluster.startRcm();
  return cluster;
}

/** The RCM's offsets once every subsystem has an estimate. */
async function offsets(c: TestCluster): Promise<OffsetReport> {
  for (let i = 0; ; i++) {
    const r = (await askRcm<{ clockOffsets: OffsetReport | null }>(c.topo, { op: "status" }, 10_000)).clockOffsets;
    if (r && r.subsystems.length === c.ids.length) return r;
    if (i > 100) throw new Error(`the RCM measured no offset for every subsystem: ${JSON.stringify(r)}`);
    await pause(200);
  }
}

describe("measured clock offsets", () => {
  it("a subsystem 4 ms ahead (bound 10 ms): the RCM measures about 4 ms for it and about 0 for the rest, and the group keeps replicating", async (ctx) => {
    if (UNAVAILABLE) ctx.skip(UNAVAILABLE);
    const c = await skewedCluster(4);
    await pause(3000);
    const r = await offsets(c);
    console.log(`clock offsets, #2 at +4 ms: ${JSON.stringify(r.subsystems.map((s) => [s.subsystem, s.offsetMs, s.uncertaintyMs]))}`);
    const of = (id: number) => r.subsystems.find((s) => s.subsystem === id)!;
    for (const id of c.ids.filter((i) => i !== 2)) expect(Math.abs(of(id).offsetMs - of(1).offsetMs)).toBeLessThanOrEqual(of(id).uncertaintyMs + of(1).uncertaintyMs);
    expect(Math.abs(of(2).offsetMs - of(1).offsetMs - 4)).toBeLessThanOrEqual(of(2).uncertaintyMs + of(1).uncertaintyMs);
    expect(r.widest?.ahead).toBe(2);
    const st = await c.status();
    expect(st.groups[0].state).toBe("active");
  });

  it("a subsystem 40 ms ahead (bound 10 ms): the group is suspended, the reason naming both subsystems and the offset", async (ctx) => {
    if (UNAVAILABLE) ctx.skip(UNAVAILABLE);
    const c = await skewedCluster(40);
    let reason: string | null = null;
    for (let i = 0; i < 100 && reason === null; i++) {
      const g = (await c.status()).groups[0];
      if (g.state === "suspended") reason = g.reason;
      else await pause(200);
    }
    console.log(`clock offsets, #2 at +40 ms: suspended with "${reason}"`);
    expect(reason).toMatch(/clock of subsystem #2 is (3\d|4\d)\.\d ms \(±\d+\.\d\) ahead of subsystem #[1345]'s, beyond maxClockOffsetMs 10/);
    const r = await offsets(c);
    expect(r.widest?.ahead).toBe(2);
    expect(r.widest!.offsetMs).toBeGreaterThan(30);
    // What the admin reads.
    const shown = await c.cli(["status", "--config", c.configFile]);
    console.log(shown.stdout.slice(shown.stdout.indexOf("CLOCKS")));
    expect(shown.stdout).toMatch(/CLOCKS {2}measured by the RCM; maxClockOffsetMs 10/);
    expect(shown.stdout).toMatch(/widest: #2 is (3\d|4\d)\.\d ms \(±\d+\.\d\) ahead of #[1345]: BEYOND the bound/);
  });
});

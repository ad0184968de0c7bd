// Measured clock offsets (issue 15; appliance/rcm/clock-offsets.ts), on real
// processes of one host, each subsystem with its own real-time clock offset
// (libfaketime, as appliance/drill/netns-hosts.ts sets it; CLOCK_MONOTONIC is left
// alone), clock "realtime" with commit wait. The RCM measures every
// subsystem's offset; within maxClockOffsetMs it reports it and the group
// keeps replicating; beyond it the group is suspended with a reason naming
// both subsystems and the offset.
import { afterEach, describe, expect, it } from "vitest";
import { askRcm } from "../../appliance/cli/rcm-client.ts";
import { TestCluster, fig1Config, freePort } from "../support/cluster.ts";
import { faketimeEnv, libfaketimePath } from "../../appliance/drill/netns-hosts.ts";
import { planChains } from "../../appliance/drill/chain-plan.ts";
import { runChainWorkload } from "../../appliance/drill/chain-workload.ts";
import { checkChains, fileBlockReader } from "../../appliance/drill/chain-checker.ts";

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
    extra: { clock: "realtime", maxClockOffsetMs: BOUND_MS, rcm: { port: await freePort(), metricsPort: await freePort(), failureTimeoutMs: 2000, checkIntervalMs: 200 } },
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
    // In the RCM's metrics too (docs/metrics.md, "The RCM's series").
    const rcm = c.topo.config.rcm!;
    const text = await (await fetch(`http://${rcm.host}:${rcm.metricsPort}/metrics`)).text();
    const of2 = Number(/^tidemark_rcm_clock_offset_seconds\{subsystem="2"\} (\S+)$/m.exec(text)?.[1]);
    const of1 = Number(/^tidemark_rcm_clock_offset_seconds\{subsystem="1"\} (\S+)$/m.exec(text)?.[1]);
    console.log(`clock offsets, #2 at +40 ms: metrics #2 ${of2} s, #1 ${of1} s`);
    expect(of2 - of1).toBeGreaterThan(0.03);
    expect(of2 - of1).toBeLessThan(0.05);
    expect(text).toMatch(/^tidemark_rcm_clock_widest_offset_seconds\{ahead="2",behind="[1345]"\} 0\.0[34]\d*$/m);
    expect(text).toMatch(/^tidemark_rcm_clock_offset_bound_seconds 0\.01$/m);
    // What the admin reads.
    const shown = await c.cli(["status", "--config", c.configFile]);
    console.log(shown.stdout.slice(shown.stdout.indexOf("CLOCKS")));
    expect(shown.stdout).toMatch(/CLOCKS {2}measured by the RCM; maxClockOffsetMs 10/);
    expect(shown.stdout).toMatch(/widest: #2 is (3\d|4\d)\.\d ms \(±\d+\.\d\) ahead of #[1345]: BEYOND the bound/);
  });

  it("a subsystem 40 ms ahead while hosts write causal chains across #1 and #2 from the start: suspended within a probe interval, taken over, and the chains broken before the first measurement counted", async (ctx) => {
    if (UNAVAILABLE) ctx.skip(UNAVAILABLE);
    // Beyond the bound the commit wait no longer orders a write on #1 after one on #2 it
    // depends on (#2 stamps 40 ms ahead). The suspension stops replication once the RCM has
    // measured the clocks; the writes stamped before that first measurement are not protected
    // (docs/clock.md, "Before the first measurement"), and a takeover's Ts can fall between two
    // of them. So this test holds the suspension and the takeover, and prints how many chain
    // positions that window broke: 0 in most runs, 1 and 3 of about 960 in two of its first five.
    const c = await skewedCluster(40);
    const primaries = ["p1a", "p1b", "p2a", "p2b"];
    const volumes = primaries.map((name) => ({ name, primaryId: c.topo.volumes.get(name)!.subsystemId, sizeBytes: 4 << 20 }));
    const plan = planChains({ volumes, chains: 16, length: 60, seed: 40 });
    let writing = true;
    const run = runChainWorkload({ plan, connect: (v) => c.nbd(v), until: () => !writing });
    let suspendedAt = 0;
    const t0 = Date.now();
    for (let i = 0; i < 150 && suspendedAt === 0; i++) {
      if ((await c.status()).groups[0].state === "suspended") suspendedAt = Date.now();
      else await pause(100);
    }
    expect(suspendedAt, "the group was never suspended").toBeGreaterThan(0);
    await pause(1000);
    writing = false;
    const records = await run;
    expect(records.map((r) => r.error).filter(Boolean)).toEqual([]);
    const acked = records.reduce((n, r) => n + r.acked, 0);
    const t = await c.cli(["takeover", "--config", c.configFile, "--group", "C1", "--json"]);
    expect(t.code, t.stderr).toBe(0);
    const secondaryOf = new Map(c.topo.pairs.map((p) => [p.primary.name, p.secondary.name]));
    const onSecondaries = await checkChains({ plan, records, mode: "prefix", readBlock: fileBlockReader((v) => c.volumeFile(secondaryOf.get(v)!)) });
    console.log(
      `clock offsets, #2 at +40 ms with chains: suspended ${suspendedAt - t0} ms after the first status; ${acked} chain writes acknowledged; ` +
        `on the secondaries after the takeover prefix lengths ${Math.min(...onSecondaries.prefixLengths)}..${Math.max(...onSecondaries.prefixLengths)}, violations ${onSecondaries.violations.length}`,
    );
    if (onSecondaries.violations.length > 0) console.log(`clock offsets: chains broken in the second before the first measurement (docs/clock.md): ${onSecondaries.violations.join("; ")}`);
    // The suspension came within about one probe interval of the processes' start (the chains' start).
    expect(suspendedAt - t0).toBeLessThan(5000);
    expect(acked).toBeGreaterThan(0);
    // Only the order of writes stamped in that window can suffer: no block is torn, foreign or
    // from a write never issued, whatever the clocks.
    expect({ torn: onSecondaries.counts.torn, foreign: onSecondaries.counts.foreign, future: onSecondaries.counts.future }).toEqual({ torn: 0, foreign: 0, future: 0 });
  });
});

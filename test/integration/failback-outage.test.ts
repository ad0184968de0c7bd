// Issue 16 end to end on real processes: the primary site goes down and comes
// back. Primary #1 is killed -9 under writes, the RCM suspends the group on its
// own, the admin takes it over, hosts move to the secondaries, #1 is restarted,
// and `tidemark resync --reverse` fails back in one step (it takes #1 over
// first, as the takeover would have), then `tidemark swap` brings the config's
// primaries back. Causal chains are prefixes on the secondaries after the
// takeover and the same prefixes on the old primaries after the failback;
// `cmp` finds every pair identical after the reverse resync and after the
// swap. The admin's commands run as typed, and their output is printed as a
// transcript.
import { afterEach, describe, expect, it } from "vitest";
import { readFile } from "node:fs/promises";
import { TestCluster, cmp, fig1Config, freePort, prng } from "../support/cluster.ts";
import { VolumeModel, runWriter } from "../support/workload.ts";
import { LinkProxy } from "../../appliance/drill/link-proxy.ts";
import { planChains, type ChainPlan } from "../../appliance/drill/chain-plan.ts";
import { runChainWorkload } from "../../appliance/drill/chain-workload.ts";
import { checkChains, fileBlockReader } from "../../appliance/drill/chain-checker.ts";
import { quiesce } from "../../appliance/cli/quiesce.ts";
import { liveTopology } from "../../appliance/cli/live-topology.ts";

const VOLUME_MIB = 8;
const HALF = (VOLUME_MIB << 20) / 2;
const PRIMARY_VOLUMES = ["p1a", "p1b", "p2a", "p2b"];
const SECONDARY_VOLUMES = ["s3a", "s3b", "s4a", "s5a"];
/** The RCM suspends on a subsystem or link gone this long. */
// Long enough that a restarted subsystem slow to answer a handshake on a loaded machine is not an outage.
const FAILURE_TIMEOUT_MS = 3000;
const cleanup: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const f of cleanup.splice(0).reverse()) await f();
});
const pause = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Fig. 1 with an RCM that suspends on its own; #1's incoming links (once it is a secondary) pass a proxy that can hang. */
async function outageCluster(prefix: string) {
  const cfg = await fig1Config({
    volumeMiB: VOLUME_MIB,
    extra: { linkTimeoutMs: 1500, rcm: { port: await freePort(), autoSuspend: true, failureTimeoutMs: FAILURE_TIMEOUT_MS, checkIntervalMs: 100 } },
  });
  const ss1 = cfg.subsystems.find((s) => s.id === 1)!;
  const proxy = new LinkProxy("127.0.0.1", ss1.replicationPort);
  await proxy.listen("127.0.0.1", 0);
  (ss1 as Record<string, unknown>).linkEndpoint = { host: "127.0.0.1", port: proxy.port };
  const c = TestCluster.create(cfg, prefix);
  cleanup.push(async () => {
    await proxy.close();
    await c.destroy();
  });
  await c.startAll();
  await c.startRcm();
  return { c, proxy };
}

/** The admin's terminal: each command as typed (the config path shown as FILE) and what it printed. */
class Terminal {
  readonly lines: string[] = [];
  constructor(private readonly c: TestCluster) {}

  /** A command's lines stay together where it was typed, even when notes are made while it runs. */
  async run(args: string[]): Promise<{ code: number; out: string }> {
    const [cmd, ...rest] = args;
    const t = Date.now();
    const slot = this.lines.push(`$ tidemark ${[cmd, "--config", "FILE", ...rest].join(" ")}`);
    const r = await this.c.cli([cmd, "--config", this.c.configFile, ...rest]);
    const out = (r.stdout + r.stderr).split(this.c.configFile).join("FILE").trimEnd();
    this.lines.splice(slot, 0, ...(out ? out.split("\n") : []), `[exit ${r.code}, ${Date.now() - t} ms]`, "");
    return { code: r.code, out };
  }

  note(text: string): void {
    this.lines.push(`# ${text}`, "");
  }

  print(title: string): void {
    console.log(`${title}\n${this.lines.join("\n")}`);
  }
}

/** What `tidemark quiesce` does, in-process (not one of the admin's steps; a command's start-up costs seconds on a loaded machine). */
async function quiesced(c: TestCluster): Promise<void> {
  await quiesce(await liveTopology(c.topo), "C1", 60_000);
}

async function expectIdentical(c: TestCluster, when: string): Promise<void> {
  for (const p of c.pairFiles()) expect(await cmp(p.primary, p.secondary), `${when}: ${p.name} differs`).toBe(null);
}

/**
 * The writers' model, with one more doubt: a write whose connection was lost
 * may still be executed by the server after a later write to the same
 * sectors on the next connection was acknowledged, so its sectors stay
 * uncertain for good.
 */
class HostModel extends VolumeModel {
  private readonly everLost = new Uint8Array(this.uncertain.length);
  override lost(offset: number, length: number): void {
    super.lost(offset, length);
    this.everLost.fill(1, offset / 512, (offset + length) / 512);
  }
  override firstMismatch(actual: Buffer): number {
    for (let s = 0; s < this.uncertain.length; s++) {
      if (this.uncertain[s] || this.everLost[s]) continue;
      if (this.image.compare(actual, s * 512, (s + 1) * 512, s * 512, (s + 1) * 512) !== 0) return s * 512;
    }
    return -1;
  }
}

/**
 * Random writes on the lower half of each volume until `until()`; write
 * errors are kept per volume. The models start from the volumes' images as
 * they are now (after a takeover, the secondaries hold the primaries' image
 * as of Ts), so every sector of them is checked.
 */
async function writeLowerHalves(c: TestCluster, volumes: string[], seed: number, until: () => boolean) {
  const rand = prng(seed);
  const models = new Map<string, VolumeModel>();
  const errors = new Map<string, string[]>();
  for (const v of volumes) {
    const model = new HostModel(HALF);
    (await readFile(c.volumeFile(v))).copy(model.image, 0, 0, HALF);
    models.set(v, model);
  }
  const run = Promise.all(
    volumes.map((v) => {
      const model = models.get(v)!;
      const onError = (err: Error) => errors.set(v, [...(errors.get(v) ?? []), err.message]);
      return runWriter({ rand, queueDepth: 4, maxBytes: 64 * 1024, until, connect: () => c.nbd(v), model, onError });
    }),
  );
  return { run, models, errors };
}

async function waitFor<T>(what: string, timeoutMs: number, probe: () => Promise<T | null | undefined | false>): Promise<T> {
  const until = Date.now() + timeoutMs;
  for (;;) {
    const v = await probe().catch(() => null);
    if (v) return v;
    if (Date.now() > until) throw new Error(`${what}: not within ${timeoutMs} ms`);
    await pause(50);
  }
}

/**
 * The outage up to #1's return: chains and load on every primary volume,
 * kill -9 #1, the RCM's own suspension, the takeover, the chains checked on
 * the secondaries, hosts writing the secondaries' lower halves (still writing
 * when this returns), #1 restarted and fenced.
 */
async function outage(c: TestCluster, term: Terminal, seed: number, o: { statusWhileDown: boolean }) {
  const volumes = PRIMARY_VOLUMES.map((name) => ({ name, primaryId: c.topo.volumes.get(name)!.subsystemId, sizeBytes: VOLUME_MIB << 20 }));
  const plan: ChainPlan = planChains({ volumes, chains: 16, length: 150, seed, regionStartBlock: HALF / 4096 });
  let stop = false;
  const chains = runChainWorkload({ plan, connect: (v) => c.nbd(v), until: () => stop, reconnectAttemptsMax: 1000, reconnectPauseMs: 50 });
  const load = await writeLowerHalves(c, PRIMARY_VOLUMES, seed * 31, () => stop);
  await pause(700);
  await c.kill(1);
  term.note("primary #1 was killed -9 under writes; the RCM suspends the group on its own");
  await waitFor("the RCM's own suspension", 20_000, async () => {
    const g = (await c.status()).groups[0];
    return g.state === "suspended" && g.synchronizedTs !== null && /rcm/.test(g.suspendedBy ?? "");
  });
  if (o.statusWhileDown) {
    const suspended = await term.run(["status"]);
    expect(suspended.code, "status exits 3 while a subsystem is down").toBe(3);
    expect(suspended.out).toMatch(/^#1\s+DOWN\s+-\s+127\.0\.0\.1:\d+\s+127\.0\.0\.1:\d+$/m);
    expect(suspended.out).toMatch(/^ {2}#1 DOWN: subsystem #1 at 127\.0\.0\.1:\d+ is unreachable/m);
  }

  const takeover = await term.run(["takeover", "--group", "C1"]);
  expect(takeover.code, takeover.out).toBe(0);
  expect(takeover.out).toContain("C1: takeover complete");
  expect(takeover.out).toMatch(/primary #1: unreachable .*fenced by generation when it comes back; once it is back, 'tidemark resync --group C1 --reverse' takes it over and fails back/);
  stop = true;
  const records = await chains;
  await load.run.catch(() => null);

  // The takeover's image: every chain exactly a prefix on the secondaries.
  const secondaryOf = new Map(c.topo.pairs.map((p) => [p.primary.name, p.secondary.name]));
  const onSecondaries = await checkChains({ plan, records, mode: "prefix", readBlock: fileBlockReader((v) => c.volumeFile(secondaryOf.get(v)!)) });
  expect(onSecondaries.violations, "chains on the secondaries after the takeover").toEqual([]);
  const acked = records.reduce((n, r) => n + r.acked, 0);
  const present = onSecondaries.prefixLengths.reduce((n, k) => n + k, 0);
  expect(present, "chain writes on the secondaries").toBeGreaterThan(0);

  // Hosts move to the secondaries and keep writing them (lower halves only: the chains stay as the takeover left them).
  let hostsStop = false;
  const onSecondaryHosts = await writeLowerHalves(c, SECONDARY_VOLUMES, seed * 37, () => hostsStop);
  await pause(400);
  term.note("hosts write the secondary volumes; primary #1 is restarted");
  await c.start(1);
  // Back, it streams at its old generation; the secondaries refuse it and it fences itself.
  await waitFor("#1 fenced by the secondaries", 15_000, async () => (await c.rawStatus(1)).primary!.groups[0].state === "fenced");
  return { plan, records, acked, onSecondaries, hosts: { ...onSecondaryHosts, stop: () => (hostsStop = true) } };
}

function reportHosts(results: { writes: number; reconnects: number }[], errors: Map<string, string[]>): void {
  const failed = [...errors].map(([v, e]) => `${v}: ${e.length} (first: ${e[0]})`);
  console.log(
    `hosts on the secondaries: ${results.reduce((n, r) => n + r.writes, 0)} writes acknowledged, ${results.reduce((n, r) => n + r.reconnects, 0)} reconnects${failed.length ? `; write errors ${failed.join("; ")}` : ""}`,
  );
}

/** After the failback: the chains on the config's primaries are exactly the prefixes the takeover left. */
async function expectSamePrefixes(c: TestCluster, o: Awaited<ReturnType<typeof outage>>): Promise<void> {
  const back = await checkChains({ plan: o.plan, records: o.records, mode: "prefix", readBlock: fileBlockReader((v) => c.volumeFile(v)) });
  expect(back.violations, "chains on the old primaries after the failback").toEqual([]);
  expect(back.prefixLengths, "the old primaries hold the takeover's chains, no more, no less").toEqual(o.onSecondaries.prefixLengths);
}

/** What hosts wrote on the secondaries (lower halves) is on both sides. */
async function expectHostWrites(c: TestCluster, models: Map<string, VolumeModel>): Promise<void> {
  for (const p of c.topo.pairs) {
    const model = models.get(p.secondary.name)!;
    for (const name of [p.secondary.name, p.primary.name]) {
      const image = (await readFile(c.volumeFile(name))).subarray(0, HALF);
      const at = model.firstMismatch(image);
      expect(at, `${name}: what hosts wrote on ${p.secondary.name}`).toBe(-1);
    }
  }
}

/** Swap back, hosts write the config's primaries again, then cmp. */
async function swapBack(c: TestCluster, term: Terminal, seed: number): Promise<void> {
  const sw = await term.run(["swap", "--group", "C1"]);
  expect(sw.code, sw.out).toBe(0);
  expect(sw.out).toMatch(/group C1 swapped: direction reverse -> forward/);
  expect(sw.out).toMatch(/group C1 is paired again at generation \d+/);
  let stop = false;
  const load = await writeLowerHalves(c, PRIMARY_VOLUMES, seed * 41, () => stop);
  await pause(400);
  stop = true;
  await load.run;
  await quiesced(c);
  await expectIdentical(c, "after the swap back");
  const st = await c.status();
  expect(st.groups[0]).toMatchObject({ state: "active", direction: "forward" });
  expect(st.pairs.every((p) => p.state === "paired")).toBe(true);
}

describe("failback after an outage: the primary that was down comes back (issue 16)", () => {
  it("failback: kill -9 #1 under writes, the RCM suspends, takeover, hosts on the secondaries, #1 back, resync --reverse in one step, swap back; chains and cmp", async () => {
    const t0 = Date.now();
    const { c } = await outageCluster("tidemark-outage-");
    const term = new Terminal(c);
    try {
      const o = await outage(c, term, 16, { statusWhileDown: true });
      // What the admin sees once #1 is back, and the one command that follows.
      const back = await term.run(["status"]);
      expect(back.code).toBe(0);
      expect(back.out).toMatch(/primary #1 is back \(fenced, generation \d+\) after the takeover at generation \d+, which could not reach it; next: tidemark resync --group C1 --reverse/);
      const plan = await term.run(["takeover", "--group", "C1", "--dry-run"]);
      expect(plan.code, plan.out).toBe(0);
      expect(plan.out).toMatch(/C1 is taken over already at generation \d+/);
      expect(plan.out).toMatch(/primary #1: back after the takeover, which could not reach it: fenced at generation \d+; next: 'tidemark resync --group C1 --reverse'/);

      const rev = await term.run(["resync", "--group", "C1", "--reverse"]);
      expect(rev.code, rev.out).toBe(0);
      expect(rev.out).toMatch(/primary #1 was unreachable when C1 was taken over at generation \d+ and came back fenced at generation \d+: taken over now/);
      expect(rev.out).toMatch(/group C1 now replicates from the config's secondaries to its primaries \(direction reverse\)/);
      expect(rev.out).toMatch(/group C1 is paired again at generation \d+/);
      o.hosts.stop();
      reportHosts(await o.hosts.run, o.hosts.errors);
      await quiesced(c);
      await expectIdentical(c, "after the reverse resync");
      await expectSamePrefixes(c, o);
      await expectHostWrites(c, o.hosts.models);
      const st = await c.status();
      expect(st.groups[0]).toMatchObject({ state: "active", direction: "reverse", returning: [] });

      await swapBack(c, term, 16);
      expect((await term.run(["status"])).out).toMatch(/^GROUP C1 {2}state active/m);
      console.log(`failback after an outage: ${o.acked} chain writes acknowledged, ${o.onSecondaries.prefixLengths.reduce((n, k) => n + k, 0)} on the secondaries at the takeover; ${Date.now() - t0} ms`);
      expect(c.unexpectedDeaths()).toEqual([]);
    } finally {
      term.print("the admin's terminal:");
    }
  }, 120_000);

  it("failback: #1 killed again in the middle of the reverse resync; restarted, the reverse resync run again finishes it; cmp after it and after the swap", async () => {
    const t0 = Date.now();
    const { c, proxy } = await outageCluster("tidemark-outage-kill-");
    const term = new Terminal(c);
    try {
      const o = await outage(c, term, 61, { statusWhileDown: false });
      // The copies to #1 stall (its links hang), so the resync is surely in its middle when #1 dies.
      proxy.hang();
      const first = term.run(["resync", "--group", "C1", "--reverse"]);
      await waitFor("#1 holding for the reverse resync", 30_000, async () => {
        const s = await c.rawStatus(1);
        return s.directions?.C1 === "reverse" && s.secondary?.[0].state === "resyncing";
      });
      const copying = await waitFor("a new primary with copies unacknowledged by #1", 10_000, async () => {
        for (const id of [3, 4, 5]) {
          const g = (await c.rawStatus(id)).primary?.groups[0];
          if (g?.state === "copying") return `#${id} ${g.copy?.phase ?? "copying"}`;
        }
        return null;
      });
      await c.kill(1);
      term.note(`meanwhile, during the command above: primary #1 (a secondary now) killed -9 in the middle of the copy (${copying}); it stays away, and the RCM suspends the group`);
      const r1 = await first;
      expect(r1.code, "the reverse resync stops when the group is suspended under it").not.toBe(0);
      expect(r1.out).toMatch(/suspended or taken over during the resync|cannot be reached/);
      proxy.restore();
      await c.start(1);
      term.note("primary #1 restarted; the reverse resync is run again");
      const r2 = await term.run(["resync", "--group", "C1", "--reverse"]);
      expect(r2.code, r2.out).toBe(0);
      expect(r2.out).toMatch(/group C1 is paired again at generation \d+/);
      o.hosts.stop();
      reportHosts(await o.hosts.run, o.hosts.errors);
      await quiesced(c);
      await expectIdentical(c, "after the reverse resync run again");
      await expectSamePrefixes(c, o);
      await expectHostWrites(c, o.hosts.models);
      await swapBack(c, term, 61);
      console.log(`failback with #1 killed mid-resync: ${Date.now() - t0} ms`);
      expect(c.unexpectedDeaths()).toEqual([]);
    } finally {
      term.print("the admin's terminal (#1 killed again during the reverse resync):");
    }
  }, 120_000);
});

// Resync end to end (issue 4): the initial copy of a group, a resync after a
// suspension and after a takeover, on real processes with an RCM; images
// compared with cmp once writes stop and the group is quiesced.
import { afterEach, describe, expect, it } from "vitest";
import path from "node:path";
import { randomFillSync } from "node:crypto";
import Database from "better-sqlite3";
import { TestCluster, cmp, fig1Config, freePort, prng } from "../support/cluster.ts";
import { VolumeModel, runWriter } from "../support/workload.ts";
import type { ProcedureReport } from "../../appliance/rcm/procedure.ts";
import { askRcm } from "../../appliance/cli/rcm-client.ts";
import { ControlClient } from "../../appliance/cli/control-client.ts";
import type { ResyncProgress, ResyncStart } from "../../appliance/rcm/resync.ts";

const cleanup: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const f of cleanup.splice(0).reverse()) await f();
});
const pause = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function cluster(volumeMiB: number, prefix: string) {
  const cfg = await fig1Config({ volumeMiB, extra: { rcm: { port: await freePort(), autoSuspend: false, checkIntervalMs: 100 } } });
  const c = TestCluster.create(cfg, prefix);
  cleanup.push(() => c.destroy());
  await c.startAll();
  await c.startRcm();
  return c;
}

async function cliJson<T>(c: TestCluster, args: string[]): Promise<T> {
  const r = await c.cli([...args, "--config", c.configFile, "--group", "C1", "--json"]);
  if (r.code !== 0) throw new Error(`tidemark ${args.join(" ")} failed (${r.code}): ${r.stderr}`);
  return JSON.parse(r.stdout) as T;
}

async function expectIdentical(c: TestCluster): Promise<void> {
  for (const p of c.pairFiles()) expect(await cmp(p.primary, p.secondary), `${p.name}: primary and secondary images differ`).toBe(null);
}

/** Random writes on every primary volume until `until()`; returns the writers' promise. */
function load(c: TestCluster, seed: number, volumeMiB: number, until: () => boolean) {
  const rand = prng(seed);
  return Promise.all(
    ["p1a", "p1b", "p2a", "p2b"].map((v) =>
      runWriter({ rand, queueDepth: 4, maxBytes: 128 * 1024, until, connect: () => c.nbd(v), model: new VolumeModel(volumeMiB << 20) }),
    ),
  );
}

async function groupStates(c: TestCluster): Promise<{ primaries: string[]; secondaries: string[] }> {
  const primaries: string[] = [];
  const secondaries: string[] = [];
  for (const id of [1, 2, 3, 4, 5]) {
    const s = await c.rawStatus(id);
    for (const g of s.primary?.groups ?? []) primaries.push(g.state);
    for (const g of s.secondary ?? []) secondaries.push(g.state);
  }
  return { primaries, secondaries };
}

async function waitPaired(c: TestCluster, timeoutMs = 60_000): Promise<void> {
  const until = Date.now() + timeoutMs;
  for (;;) {
    const st = await groupStates(c);
    if (st.primaries.every((s) => s === "active") && st.secondaries.every((s) => s === "active")) return;
    if (Date.now() > until) throw new Error(`group not paired within ${timeoutMs} ms: ${JSON.stringify(st)}`);
    await pause(100);
  }
}

describe("resync: initial copy, after a suspension, after a takeover", () => {
  it("resync: a new group's initial copy of 256 MiB volumes that hosts write during the copy ends identical after quiesce", async () => {
    // Volumes with data before the group's first start: the copy has real work.
    const MIB = 256;
    const cfg = await fig1Config({ volumeMiB: MIB, extra: { rcm: { port: await freePort(), autoSuspend: false, checkIntervalMs: 100 } } });
    const c = TestCluster.create(cfg, "tidemark-initial-");
    cleanup.push(() => c.destroy());
    c.prefill((_name, buf) => {
      // Every other MiB holds data: the copier sees data runs and holes.
      for (let off = 0; off < buf.length; off += 2 << 20) randomFillSync(buf, off, 1 << 20);
    }, ["p1a", "p1b", "p2a", "p2b"]);
    await c.startAll({ paired: false });
    let stop = false;
    const writers = load(c, 11, MIB, () => stop).catch(() => null);
    // kill -9 primary #1 in the middle of its copy; restarted, it goes on from its persisted cursor.
    for (;;) {
      const g = (await c.rawStatus(1)).primary!.groups[0];
      if ((g.copy?.doneBlocks ?? 0) > 2048) break;
      expect(g.state, "primary #1 still copying when it is killed").toBe("copying");
      await pause(20);
    }
    await c.kill(1);
    const db = new Database(path.join(c.dir, "data/ss1/state.db"), { readonly: true });
    const persisted = (db.prepare("SELECT coalesce(sum(next_off), 0) AS n FROM copy_cursor").get() as { n: number }).n;
    const left = db.prepare("SELECT count(*) AS n FROM copy_cursor").get() as { n: number };
    db.close();
    expect(left.n, "cursors left to copy after the kill").toBeGreaterThan(0);
    await c.start(1);
    const until = Date.now() + 120_000;
    for (;;) {
      const st = await groupStates(c);
      if (st.primaries.every((s) => s === "active") && st.secondaries.every((s) => s === "active")) break;
      expect(Date.now() < until, `initial copy not done: ${JSON.stringify(st)}`).toBe(true);
      await pause(200);
    }
    await pause(300);
    stop = true;
    await writers;
    await c.quiesce();
    await expectIdentical(c);
    // Half of each volume held data before the start: the copy read it; the other half were holes, sent as zero runs.
    const completed = (id: number) =>
      c
        .readLog(id)
        .split("\n")
        .filter((l) => l.includes("copy complete and acknowledged"))
        .map((l) => JSON.parse(l) as { blocks: number; dataBytes: number; zeroBytes: number });
    const two = completed(2);
    expect(two.length, "primary #2 completed one initial copy").toBe(1);
    expect(two[0].dataBytes, "half of each volume held data: read and sent").toBeGreaterThanOrEqual(2 * (MIB / 2) * 1024 * 1024);
    expect(two[0].zeroBytes, "the holes went as zero runs").toBeGreaterThan(0);
    // Primary #1 resumed from the cursor it had persisted: after the restart it copied only what was left.
    const one = completed(1);
    expect(one.length).toBe(1);
    const total = (2 * MIB * 1024 * 1024) / 4096;
    console.log(`initial copy: primary #1 killed with ${persisted / 4096} blocks persisted as copied; ${one[0].blocks} of ${total} copied after the restart`);
    expect(persisted).toBeGreaterThan(0);
    expect(one[0].blocks).toBeLessThanOrEqual(total - persisted / 4096);
  }, 240_000);

  it("resync: after a planned suspension with host writes on the primaries, resync copies only the bitmap and the images end identical", async () => {
    const MIB = 16;
    const c = await cluster(MIB, "tidemark-resync-");
    await waitPaired(c);
    const suspended = await cliJson<ProcedureReport>(c, ["suspend"]);
    expect(suspended.complete).toBe(true);
    let stop = false;
    let writers = load(c, 21, MIB, () => stop);
    await pause(800);
    stop = true;
    await writers;
    const st = await c.rawStatus(1);
    const bitmap = st.primary!.groups[0].bitmapBlocks;
    expect(bitmap, "writes during the suspension are in primary #1's bitmap").toBeGreaterThan(0);
    // Hosts keep writing during the resync.
    stop = false;
    writers = load(c, 22, MIB, () => stop);
    const r = await cliJson<{ start: ResyncStart; final: ResyncProgress }>(c, ["resync"]);
    expect(r.start.nothingToDo).toBe(false);
    expect(r.final.done).toBe(true);
    const copied = r.start.primaries.reduce((n, p) => n + p.remainingBlocks, 0);
    expect(copied, "only the dirty blocks are copied").toBeLessThan((4 * MIB * 1024 * 1024) / 4096);
    stop = true;
    await writers;
    await c.quiesce();
    await expectIdentical(c);
    const again = await cliJson<{ start: ResyncStart }>(c, ["resync"]);
    expect(again.start.nothingToDo, "a paired group has nothing to resync").toBe(true);
  }, 180_000);

  it("resync: after a takeover and host writes on the secondaries, a forward resync discards them and the images end identical", async () => {
    const MIB = 16;
    const c = await cluster(MIB, "tidemark-resync-to-");
    await waitPaired(c);
    let stop = false;
    let writers: Promise<unknown> = load(c, 31, MIB, () => stop);
    await pause(500);
    const t = await cliJson<ProcedureReport>(c, ["takeover"]);
    stop = true;
    await writers.catch(() => null);
    expect(t.complete).toBe(true);
    // Hosts write the taken-over secondaries.
    const s = await c.nbd("s3a");
    await s.write(0, Buffer.alloc(65536, 0xab));
    await s.close();
    expect((await c.rawStatus(3)).secondary![0].bitmapBlocks).toBeGreaterThan(0);
    stop = false;
    writers = load(c, 32, MIB, () => stop).catch(() => null);
    const r = await cliJson<{ start: ResyncStart; final: ResyncProgress }>(c, ["resync"]);
    expect(r.start.secondaryBlocks, "the secondaries' bitmaps are copied too").toBeGreaterThan(0);
    stop = true;
    await writers;
    await c.quiesce();
    await expectIdentical(c);
    expect((await c.rawStatus(3)).secondary![0].bitmapBlocks, "the barrier cleared the secondary's bitmap").toBe(0);
  }, 180_000);

  it("failback: suspend, take over, run on the secondaries, resync --reverse, swap back: identical at every step, the secondaries' writes reach the primaries", async () => {
    const MIB = 16;
    const c = await cluster(MIB, "tidemark-failback-");
    let stop = false;
    let writers: Promise<unknown> = load(c, 41, MIB, () => stop);
    await pause(400);
    await cliJson<ProcedureReport>(c, ["suspend"]);
    await pause(200);
    stop = true;
    await writers.catch(() => null);
    await cliJson<ProcedureReport>(c, ["takeover"]);
    // Hosts now run on the secondary volumes.
    const onSecondaries = (seed: number) => {
      const rand = prng(seed);
      return Promise.all(
        ["s3a", "s3b", "s4a", "s5a"].map((v) => runWriter({ rand, queueDepth: 4, maxBytes: 64 * 1024, until: () => stop, connect: () => c.nbd(v), model: new VolumeModel(MIB << 20) })),
      );
    };
    stop = false;
    writers = onSecondaries(42);
    await pause(500);
    // Failback while hosts keep writing the secondaries.
    const back = await cliJson<{ failback: { direction: string }; start: ResyncStart; final: ResyncProgress }>(c, ["resync", "--reverse"]);
    expect(back.failback.direction).toBe("reverse");
    expect(back.final.done).toBe(true);
    const st1 = await c.rawStatus(1);
    expect(st1.directions?.C1).toBe("reverse");
    expect(st1.secondary?.[0].state, "the old primary is the secondary now").toBe("active");
    stop = true;
    await writers;
    await c.quiesce();
    await expectIdentical(c);
    // A marker the hosts wrote on the secondaries must end on the config's primaries.
    const marker = Buffer.alloc(4096, 0x5a);
    const w = await c.nbd("s4a");
    await w.write(8192, marker);
    await w.close();
    // Swap back: the config's primaries become primary again, nothing acknowledged is lost.
    const sw = await cliJson<{ swap: { from: string; direction: string; frozenAt: string }; final: ResyncProgress }>(c, ["swap"]);
    expect(sw.swap).toMatchObject({ from: "reverse", direction: "forward" });
    expect(sw.final.done).toBe(true);
    expect((await c.rawStatus(1)).primary?.groups[0].state).toBe("active");
    const r = await c.nbd("p1b");
    expect((await r.read(8192, 4096)).equals(marker), "the write made on s4a before the swap is on p1b").toBe(true);
    await r.close();
    stop = false;
    writers = load(c, 43, MIB, () => stop);
    await pause(400);
    stop = true;
    await writers;
    await c.quiesce();
    await expectIdentical(c);
    // Malformed resync and turn requests are refused by name; the subsystem stays up and unchanged.
    const cc = await ControlClient.connect(c.topo, 3);
    await expect(cc.request({ op: "turn", group: "C1", direction: "sideways", generation: 99, ts: "1" })).rejects.toThrow(/direction must be "forward" or "reverse"/);
    await expect(cc.request({ op: "turn", group: "C1", direction: "reverse", generation: "x", ts: "1" })).rejects.toThrow(/generation must be a positive integer/);
    await expect(cc.request({ op: "resync-begin", group: "C1", generation: -1 })).rejects.toThrow(/generation must be a positive integer/);
    cc.close();
    expect((await c.rawStatus(3)).directions?.C1).toBe("forward");
    expect(c.unexpectedDeaths()).toEqual([]);
  }, 240_000);

  it("initial copy: a pair added to a group that replicates shows as copy-pending, the RCM copies it, and it ends identical", async () => {
    const MIB = 16;
    const cfg = await fig1Config({ volumeMiB: MIB, extra: { rcm: { port: await freePort(), autoSuspend: true, failureTimeoutMs: 60_000, checkIntervalMs: 100 } } });
    const pairs = cfg.groups[0].pairs;
    const added = pairs.pop()!; // p2b -> s5a comes later
    const c = TestCluster.create(cfg, "tidemark-newpair-");
    cleanup.push(() => c.destroy());
    await c.startAll();
    // Data on p2b before it is paired: the initial copy must carry it.
    const w = await c.nbd("p2b");
    for (let i = 0; i < 64; i++) await w.write(i * 65536, Buffer.alloc(65536, i + 1));
    await w.close();
    await c.stopAll();
    pairs.push(added);
    c.rewriteConfig(cfg);
    await c.startAll({ paired: false });
    const before = await c.status();
    expect(before.pairs.find((p) => p.primary.volume === "p2b")?.state, "the new pair waits for its copy").toBe("copy-pending");
    await c.startRcm();
    const until = Date.now() + 60_000;
    for (;;) {
      const st = await c.status();
      if (st.pairs.every((p) => p.state === "paired")) break;
      expect(Date.now() < until, `pairs not paired: ${JSON.stringify(st.pairs.map((p) => [p.primary.volume, p.state]))}`).toBe(true);
      await pause(200);
    }
    await c.quiesce();
    await expectIdentical(c);
  }, 180_000);

  it("initial copy: a suspension in the middle of it, then a resync, still ends identical (no run is skipped)", async () => {
    const MIB = 256;
    const cfg = await fig1Config({ volumeMiB: MIB, extra: { rcm: { port: await freePort(), autoSuspend: false, checkIntervalMs: 100 } } });
    const c = TestCluster.create(cfg, "tidemark-initial-suspend-");
    cleanup.push(() => c.destroy());
    c.prefill((_name, buf) => randomFillSync(buf), ["p1a", "p1b"]);
    await c.startAll({ paired: false });
    await c.startRcm();
    for (;;) {
      const g = (await c.rawStatus(1)).primary!.groups[0];
      if ((g.copy?.doneBlocks ?? 0) > 1024 || g.state !== "copying") break;
      await pause(5);
    }
    // In-process, not through the CLI: the copy must still be running when the suspension lands.
    const suspended = await askRcm<ProcedureReport>(c.topo, { op: "suspend", group: "C1", reason: "test", by: "test" }, 60_000);
    expect(suspended.complete).toBe(true);
    const left = (await c.rawStatus(1)).primary!.groups[0].remainingBlocks ?? 0;
    console.log(`initial copy suspended with ${left} blocks left on primary #1`);
    expect(left, "the suspension landed in the middle of the copy").toBeGreaterThan(0);
    const r = await cliJson<{ final: ResyncProgress }>(c, ["resync"]);
    expect(r.final.done).toBe(true);
    await c.quiesce();
    await expectIdentical(c);
  }, 180_000);
});

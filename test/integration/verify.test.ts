// Online verify end to end (issue 14, docs/verify.md) on real processes: the
// 2x3 topology (primaries #1, #2; secondaries #3, #4, #5), fio writing every
// primary volume through NBD while `tidemark verify` compares, a block
// corrupted behind tidemark's back, kill -9 of a primary and a secondary in
// the middle of a verify, and a schedule run by the RCM.
import { afterEach, describe, expect, it } from "vitest";
import { spawn, type ChildProcess } from "node:child_process";
import { openSync, writeSync, closeSync } from "node:fs";
import { createInterface } from "node:readline";
import { BIN, TestCluster, cmp, fig1Config, freePort } from "../support/cluster.ts";
import { nbdTools } from "../support/tools.ts";
import { startVerify, watchVerify, type VerifyProgress, type VerifyStart } from "../../appliance/rcm/verify.ts";
import type { StatusDoc, SubsystemStatus } from "../../appliance/cli/status-view.ts";
import type { VerifyRunStatus } from "../../appliance/resync/verifier.ts";
import { askRcm } from "../../appliance/cli/rcm-client.ts";

const TOOLS = nbdTools("verify");
const MIB = 1024 * 1024;
const VOLUME_MIB = 8;
const PRIMARY_VOLUMES = ["p1a", "p1b", "p2a", "p2b"];
/** fio writes the first half of each primary volume; the corrupted block lies in the second half. */
const LOAD_BYTES = 4 * MIB;
const CORRUPT_OFFSET = 6 * MIB + 5 * 4096;

const cleanup: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const f of cleanup.splice(0).reverse()) await f();
});
const pause = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function cluster(prefix: string, extra: Record<string, unknown> = {}, groupVerify?: Record<string, unknown>) {
  const cfg = await fig1Config({ volumeMiB: VOLUME_MIB, extra: { rcm: { port: await freePort(), autoSuspend: false, checkIntervalMs: 100 }, ...extra } });
  if (groupVerify) (cfg.groups[0] as Record<string, unknown>).verify = groupVerify;
  const c = TestCluster.create(cfg, prefix);
  cleanup.push(() => c.destroy());
  await c.startAll();
  await c.startRcm();
  return c;
}

/** fio random writes on every primary volume (first LOAD_BYTES), at a bounded rate, until stopped. */
function fioLoad(c: TestCluster): { stop: () => Promise<void>; errors: () => string } {
  const procs: ChildProcess[] = [];
  let stderr = "";
  for (const v of PRIMARY_VOLUMES) {
    const p = spawn(
      "fio",
      [`--name=load-${v}`, "--ioengine=nbd", `--uri=${c.nbdUrl(v)}`, "--rw=randwrite", "--bs=4k", `--size=${LOAD_BYTES}`, "--iodepth=4", "--rate_iops=150", "--time_based", "--runtime=600"],
      { stdio: ["ignore", "ignore", "pipe"] },
    );
    p.stderr!.on("data", (d) => (stderr += d));
    procs.push(p);
  }
  return {
    stop: async () => {
      await Promise.all(
        procs.map(
          (p) =>
            new Promise<void>((r) => {
              if (p.exitCode !== null || p.signalCode !== null) return r();
              p.once("exit", () => r());
              p.kill("SIGTERM");
            }),
        ),
      );
    },
    errors: () => stderr + procs.filter((p) => p.exitCode !== null && p.exitCode !== 0).map((p) => `fio exited ${p.exitCode}`).join("; "),
  };
}

interface VerifyJson {
  start: VerifyStart;
  final: VerifyProgress;
  elapsedMs: number;
}

async function verifyCli(c: TestCluster, args: string[] = []): Promise<{ code: number; doc: VerifyJson; stderr: string }> {
  const r = await c.cli(["verify", "--config", c.configFile, "--group", "C1", "--json", ...args]);
  const line = r.stdout.trim().split("\n").pop() ?? "";
  if (!line.startsWith("{")) throw new Error(`tidemark verify printed no JSON (${r.code}): ${r.stderr}`);
  return { code: r.code, doc: JSON.parse(line) as VerifyJson, stderr: r.stderr };
}

function runOf(s: SubsystemStatus, volume: string): VerifyRunStatus | undefined {
  return (s as SubsystemStatus & { verify?: { primary: Record<string, VerifyRunStatus[]> } }).verify?.primary.C1?.find((r) => r.volume === volume);
}

describe("verify: online, at a common stamp, under load", () => {
  it.skipIf(!TOOLS.fioNbd)("verify: 3 full passes under fio random writes on every primary of the 2x3 topology find 0 mismatches", async () => {
    const c = await cluster("tidemark-verify-load-");
    const fio = fioLoad(c);
    cleanup.push(() => fio.stop());
    await pause(1500);
    const total = (PRIMARY_VOLUMES.length * VOLUME_MIB * MIB) / 4096;
    const rates: number[] = [];
    for (let pass = 1; pass <= 3; pass++) {
      const r = await verifyCli(c, ["--rate-mib-ps", "512"]);
      expect(r.code, `pass ${pass}: ${r.stderr}`).toBe(0);
      expect(r.doc.final.mismatchedBlocks, `pass ${pass}: mismatches under load`).toBe(0);
      expect(r.doc.final.doneBlocks, `pass ${pass}: every block compared`).toBe(total);
      expect(r.doc.final.pairs.map((p) => p.verifiedBlocks)).toEqual(PRIMARY_VOLUMES.map(() => (VOLUME_MIB * MIB) / 4096));
      rates.push((VOLUME_MIB * PRIMARY_VOLUMES.length) / (r.doc.elapsedMs / 1000));
    }
    // The load really ran during the passes: the primaries took writes.
    const writes = (await c.rawStatus(1)).primary as unknown as { writes: number };
    expect(writes.writes, "fio wrote primary #1 during the passes").toBeGreaterThan(100);
    expect(fio.errors()).toBe("");
    console.log(`verify under load: 3 passes of ${VOLUME_MIB * PRIMARY_VOLUMES.length} MiB, ${rates.map((x) => x.toFixed(1)).join(", ")} MiB/s (end to end, CLI included)`);
  }, 120_000);

  it.skipIf(!TOOLS.fioNbd)("verify: one block corrupted on a secondary image behind tidemark's back is found exactly, under load, and resync repairs it", async () => {
    const c = await cluster("tidemark-verify-corrupt-");
    const fio = fioLoad(c);
    cleanup.push(() => fio.stop());
    await pause(1000);
    // Behind tidemark's back: straight into the secondary image file (s3a pairs with p1a).
    const fd = openSync(c.volumeFile("s3a"), "r+");
    writeSync(fd, Buffer.alloc(4096, 0x5a), 0, 4096, CORRUPT_OFFSET);
    closeSync(fd);
    // `tidemark events --json` follows the verify: its start and end on the primary, the mismatch on the secondary.
    const events = spawn(process.execPath, [BIN, "events", "--config", c.configFile, "--json"], { stdio: ["ignore", "pipe", "pipe"] });
    cleanup.push(async () => void events.kill("SIGINT"));
    const lines: Record<string, unknown>[] = [];
    createInterface({ input: events.stdout! }).on("line", (l) => lines.push(JSON.parse(l) as Record<string, unknown>));
    for (let i = 0; i < 300 && !lines.some((l) => l.kind === "connection" && l.to === "ss3"); i++) await pause(100);
    const r = await verifyCli(c, ["--rate-mib-ps", "512"]);
    expect(r.code, "verify exits 1 when blocks differ").toBe(1);
    expect(r.stderr).toMatch(/1 blocks differ/);
    expect(r.doc.final.mismatchedBlocks).toBe(1);
    const bad = r.doc.final.pairs.filter((p) => p.mismatchedBlocks > 0);
    expect(bad.map((p) => [p.volume, p.target, p.mismatchedBlocks])).toEqual([["p1a", "s3a", 1]]);
    expect(bad[0].mismatches.map((m) => m.offset)).toEqual([CORRUPT_OFFSET]);
    expect(bad[0].mismatches[0].primaryHash).not.toBe(bad[0].mismatches[0].secondaryHash);
    for (let i = 0; i < 100 && !lines.some((l) => l.kind === "mismatch"); i++) await pause(100);
    const mismatches = lines.filter((l) => l.kind === "mismatch");
    expect(mismatches.map((l) => [l.source, l.volume, l.offset, l.primaryHash === bad[0].mismatches[0].primaryHash])).toEqual([["ss3", "s3a", CORRUPT_OFFSET, true]]);
    const p1a = lines.filter((l) => l.kind === "verify" && l.volume === "p1a").map((l) => l.action);
    expect(p1a[0], "the verify of p1a starts, then ends").toBe("start");
    expect(p1a).toContain("end");
    // Named in the secondary's log with volume, offset and both hashes.
    const mismatchLine = new RegExp(`"volume":"s3a","offset":${CORRUPT_OFFSET},.*"primaryHash":"[0-9a-f]{32}","secondaryHash":"[0-9a-f]{32}"`);
    expect(await c.waitForLog(3, mismatchLine)).toMatch(mismatchLine);
    // In the secondary's bitmap, so the next resync repairs it.
    const pair = (await c.status()).pairs.find((p) => p.secondary.volume === "s3a")!;
    expect(pair.secondary.bitmapBlocks).toBe(1);
    await fio.stop();
    // A swap now would turn the group and copy the secondary's wrong block over the primary's
    // right one: it is refused before it freezes anything (finding 27), and says what to run.
    const sw = await c.cli(["swap", "--config", c.configFile, "--group", "C1"]);
    expect(sw.code, sw.stdout).not.toBe(0);
    expect(sw.stderr).toMatch(/swap C1: the sides differ: #3 has 1 blocks marked different \(an online verify\).*run 'tidemark resync --group C1' first/);
    expect((await c.status()).groups[0].state).toBe("active");
    const rs = await c.cli(["resync", "--config", c.configFile, "--group", "C1", "--json"]);
    expect(rs.code, rs.stderr).toBe(0);
    await c.quiesce();
    for (const p of c.pairFiles()) expect(await cmp(p.primary, p.secondary), `${p.name} after the resync`).toBe(null);
  }, 120_000);

  it("verify: kill -9 of a primary, then of a secondary, in the middle of a verify: both resume and it finishes with 0 mismatches", async () => {
    const c = await cluster("tidemark-verify-kill-");
    const topo = c.topo;
    // Slow enough to be in the middle: primary #1 has two 8 MiB volumes at 2 MiB/s each, in turn.
    const start = await startVerify(topo, "C1", { rateMiBps: 2 });
    expect(start.runs).toHaveLength(4);
    await pause(2500);
    const before = runOf(await c.rawStatus(1), "p1a")!;
    expect(before.state, "primary #1 still verifying when it is killed").toBe("running");
    expect(before.nextOffset).toBeGreaterThan(0);
    await c.kill(1);
    await c.start(1);
    const after = runOf(await c.rawStatus(1), "p1a")!;
    expect(after.runTs, "the same run goes on").toBe(before.runTs);
    expect(after.nextOffset, "from its persisted cursor, not from the start").toBeGreaterThanOrEqual(before.nextOffset);
    await pause(1500);
    await c.kill(3);
    await c.start(3);
    const final = await watchVerify(topo, start, () => {}, 250);
    expect(final.mismatchedBlocks).toBe(0);
    expect(final.doneBlocks).toBe(final.totalBlocks);
    expect(final.pairs.every((p) => p.done)).toBe(true);
    expect(c.unexpectedDeaths()).toEqual([]);
  }, 120_000);

  it("verify: a suspension in the middle pauses the run; after the resync it starts again from its first block and finishes with 0 mismatches", async () => {
    const c = await cluster("tidemark-verify-suspend-");
    // 8 s at 1 MiB/s: the suspension comes in the middle.
    const start = await startVerify(c.topo, "C1", { rateMiBps: 1, volume: "p1a" });
    await pause(1500);
    const before = runOf(await c.rawStatus(1), "p1a")!;
    expect(before.nextOffset, "the run is under way").toBeGreaterThan(0);
    await askRcm(c.topo, { op: "suspend", group: "C1", reason: "test", by: "verify test" }, 60_000);
    await pause(800);
    const paused = runOf(await c.rawStatus(1), "p1a")!;
    expect(paused.state).toBe("paused");
    expect(paused.nextOffset, "a suspension may have dropped records: the run goes back to its first block").toBe(0);
    const rs = await c.cli(["resync", "--config", c.configFile, "--group", "C1", "--json"]);
    expect(rs.code, rs.stderr).toBe(0);
    const final = await watchVerify(c.topo, start, () => {}, 250);
    expect(final.mismatchedBlocks).toBe(0);
    expect(final.pairs.map((p) => [p.volume, p.verifiedBlocks])).toEqual([["p1a", (VOLUME_MIB * MIB) / 4096]]);
    expect(await c.waitForLog(1, /verify paused: the group is not paired/)).toMatch(/verify paused: the group is not paired/);
  }, 120_000);

  it("verify: a schedule every 5 s runs in the RCM and status --json shows its last result and next run", async () => {
    const c = await cluster("tidemark-verify-cron-", {}, { cron: "*/5 * * * * *", rateMiBps: 256 });
    const until = Date.now() + 60_000;
    let doc: StatusDoc | null = null;
    for (;;) {
      const r = await c.cli(["status", "--config", c.configFile, "--json"]);
      expect(r.code, r.stderr).toBe(0);
      doc = JSON.parse(r.stdout) as StatusDoc;
      if (doc.schedules?.[0]?.lastRun) break;
      if (Date.now() > until) throw new Error(`no scheduled verify finished: ${JSON.stringify(doc.schedules)}`);
      await pause(500);
    }
    const s = doc.schedules![0];
    expect(s.lastRun!.result, JSON.stringify(s)).toBe("ok");
    expect(s).toMatchObject({ group: "C1", kind: "verify", cron: "*/5 * * * * *", rateMiBps: 256 });
    expect(s.lastRun!.blocks).toBe((PRIMARY_VOLUMES.length * VOLUME_MIB * MIB) / 4096);
    expect(s.lastRun!.mismatchedBlocks).toBe(0);
    expect(Date.parse(s.nextRun!)).toBeGreaterThan(Date.parse(s.lastRun!.startedAt));
    // Each pair shows the verify in status.
    expect(doc.pairs.every((p) => p.verify !== null)).toBe(true);
  }, 120_000);
});

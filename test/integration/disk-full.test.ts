// Full disks (issue 18) on real tmpfs mounts with real processes: a full
// state disk is a state (`state-disk-full`), never a dead or hung subsystem;
// hosts get ENOSPC for what cannot be recorded, the group is suspended with
// the file and file system named, and after space returns and a resync every
// acknowledged write is on both sides. A full log disk costs log lines only.
// Each test mounts its own tmpfs (root only; skipped with the reason printed
// otherwise) and fills it with a filler file, the way a snapshot or another
// program eats a disk; deleting the filler frees the space.
import { afterEach, describe, expect, it } from "vitest";
import { execFile, execFileSync } from "node:child_process";
import { closeSync, mkdirSync, mkdtempSync, openSync, readFileSync, readSync, rmSync, statfsSync, unlinkSync, writeSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { ROOT, TestCluster, cmp, fig1Config, freePort } from "../support/cluster.ts";
import { askAll } from "../../appliance/cli/control-client.ts";
import { renderStatus, type SubsystemStatus } from "../../appliance/cli/status-view.ts";
import { NbdRequestError } from "../support/nbd-client.ts";
import type { NbdClient } from "../support/nbd-client.ts";
import { NBD_ENOSPC } from "../../appliance/nbd/protocol.ts";
import { nbdTools } from "../support/tools.ts";
import { attachLoop, detachLoop, loopSupported } from "../../disks/loop-device.ts";

const VOLUME_MIB = 4;
const WRITE_BYTES = 256 * 1024;
const SLOTS = (VOLUME_MIB << 20) / WRITE_BYTES;
/** Every answer (status, nbdinfo, a host write) must come within this: the bar for "no hang". */
const ANSWER_MS = 2000;
const tools = nbdTools("disk-full");

const cleanup: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  // Every step runs, whatever an earlier one threw: a mount or loop device must not outlive the test.
  const errors: unknown[] = [];
  for (const f of cleanup.splice(0).reverse()) await Promise.resolve().then(f).catch((e: unknown) => errors.push(e));
  if (errors.length > 0) throw errors[0];
});
const pause = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** A tmpfs of `sizeMiB` at `dir` (made if missing), unmounted after the test; null (and the reason printed) where mounting is not allowed. */
function mountTmpfs(dir: string, sizeMiB: number, skip: (why: string) => void): string | null {
  mkdirSync(dir, { recursive: true });
  try {
    execFileSync("mount", ["-t", "tmpfs", "-o", `size=${sizeMiB}m`, "tidemark-disk-full", dir], { stdio: "pipe" });
  } catch (err) {
    const why = `mounting a tmpfs needs root: ${String(err).split("\n")[0]}`;
    console.warn(`disk-full test skipped: ${why}`);
    skip(why);
    return null;
  }
  cleanup.push(() => void execFileSync("umount", ["-l", dir]));
  return dir;
}

/** Eats the file system's free space but `leaveBytes`, as another program would; returns the filler's path. */
function fill(dir: string, leaveBytes: number): string {
  const file = path.join(dir, "filler");
  const fd = openSync(file, "w");
  const chunk = Buffer.alloc(1 << 20, 0xee);
  try {
    for (;;) {
      const s = statfsSync(dir);
      const room = s.bavail * s.bsize - leaveBytes;
      if (room <= 0) break;
      writeSync(fd, chunk, 0, Math.min(chunk.length, room));
    }
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== "ENOSPC") throw err;
  } finally {
    closeSync(fd);
  }
  return file;
}

/**
 * Asks every subsystem for its status and nbdinfo for one of its exports,
 * every 200 ms until stopped; each answer must come within ANSWER_MS.
 */
function probe(c: TestCluster) {
  const slow: string[] = [];
  let rounds = 0;
  let stop = false;
  const exportOf = new Map(c.topo.config.subsystems.map((s) => [s.id, s.volumes[0].name]));
  const timed = async (what: string, f: () => Promise<unknown>) => {
    const t0 = Date.now();
    try {
      await f();
    } catch (err) {
      slow.push(`${what}: ${(err as Error).message}`);
    }
    if (Date.now() - t0 > ANSWER_MS) slow.push(`${what}: ${Date.now() - t0} ms`);
  };
  const loop = (async () => {
    while (!stop) {
      await Promise.all(
        c.ids.map(async (id) => {
          if (!c.alive(id)) return;
          await timed(`status #${id}`, async () => {
            const a = (await askAll<SubsystemStatus>(c.topo, [id], { op: "status" })).get(id)!;
            if (!a.ok && c.alive(id)) throw new Error(a.error);
          });
          if (tools.nbdinfo) {
            await timed(`nbdinfo #${id}`, () => new Promise((res, rej) => execFile("nbdinfo", ["--size", c.nbdUrl(exportOf.get(id)!)], { timeout: ANSWER_MS * 2 }, (e) => (e && c.alive(id) ? rej(e) : res(null)))));
          }
        }),
      );
      rounds++;
      await pause(200);
    }
  })();
  return {
    /** Stops after at least two full rounds: one can fall entirely before the disk filled. */
    async end() {
      const from = rounds;
      while (rounds < from + 2) await pause(50);
      stop = true;
      await loop;
      return { slow, rounds };
    },
  };
}

/** A host write that must be answered (ok or an error) within ANSWER_MS. */
async function answered(w: NbdClient, offset: number, data: Buffer): Promise<"ok" | "ENOSPC"> {
  let timer: NodeJS.Timeout | undefined;
  const hang = new Promise<never>((_, rej) => (timer = setTimeout(() => rej(new Error(`host write at ${offset} not answered within ${ANSWER_MS} ms`)), ANSWER_MS)));
  try {
    await Promise.race([w.write(offset, data), hang]);
    return "ok";
  } catch (err) {
    if (err instanceof NbdRequestError && err.errno === NBD_ENOSPC) return "ENOSPC";
    throw err;
  } finally {
    clearTimeout(timer);
  }
}

/** Content of write `n` to a volume: every byte says which write it was. */
function payload(volume: string, n: number): Buffer {
  const b = Buffer.alloc(WRITE_BYTES, (n * 7 + volume.charCodeAt(1)) & 0xff);
  b.write(`${volume} write ${n}\n`, 0);
  return b;
}

async function statusUntil(c: TestCluster, what: string, ok: (s: Map<number, SubsystemStatus>) => boolean, timeoutMs = 15_000): Promise<Map<number, SubsystemStatus>> {
  const until = Date.now() + timeoutMs;
  for (;;) {
    const answers = await askAll<SubsystemStatus>(c.topo, c.ids, { op: "status" });
    const s = new Map([...answers].filter(([, a]) => a.ok).map(([id, a]) => [id, (a as { value: SubsystemStatus }).value]));
    if (ok(s)) return s;
    if (Date.now() > until) throw new Error(`not ${what} within ${timeoutMs} ms: ${JSON.stringify([...s].map(([id, x]) => [id, x.disk, x.secondary?.map((g) => [g.state, g.reason])]))}`);
    await pause(100);
  }
}

/**
 * Fig. 1 with an RCM that suspends at once; `small`: only primary #1 and
 * secondary #3 (p1a -> s3a, p1b -> s3b), two processes to start instead of
 * five where the test needs no more.
 */
async function cluster(prefix: string, extra: Record<string, unknown> = {}, small = false) {
  const cfg = await fig1Config({
    volumeMiB: VOLUME_MIB,
    extra: { stateReserveMiB: 2, rcm: { port: await freePort(), autoSuspend: true, failureTimeoutMs: 60_000, checkIntervalMs: 100 }, ...extra },
  });
  if (small) {
    cfg.subsystems = cfg.subsystems.filter((x) => x.id === 1 || x.id === 3);
    cfg.groups = [{ name: "C1", pairs: [{ primary: "p1a", secondary: "s3a" }, { primary: "p1b", secondary: "s3b" }] }];
  }
  const c = TestCluster.create(cfg, prefix);
  cleanup.push(() => c.destroy());
  return { c, cfg };
}

/** After the space is back: resync, quiesce, and every acknowledged write on both sides of its pair, every pair identical. */
async function resyncAndCheck(c: TestCluster, acked: Map<string, Buffer>) {
  const r = await c.cli(["resync", "--config", c.configFile, "--group", "C1"]);
  expect(r.code, r.stderr).toBe(0);
  await c.quiesce();
  const secondaryOf = new Map(c.topo.pairs.map((p) => [p.primary.name, p.secondary.name]));
  for (const [key, want] of acked) {
    const [volume, slot] = key.split("@");
    for (const file of [c.volumeFile(volume), c.volumeFile(secondaryOf.get(volume)!)]) {
      const fd = openSync(file, "r");
      const got = Buffer.alloc(WRITE_BYTES);
      try {
        readAt(fd, got, Number(slot) * WRITE_BYTES);
      } finally {
        closeSync(fd);
      }
      expect(got.equals(want), `${key} in ${file}`).toBe(true);
    }
  }
  for (const p of c.pairFiles()) expect(await cmp(p.primary, p.secondary), p.name).toBeNull();
}

/** `buf.length` bytes of `fd` at `position`. */
function readAt(fd: number, buf: Buffer, position: number): void {
  for (let done = 0; done < buf.length; ) {
    const n = readSync(fd, buf, done, buf.length - done, position + done);
    if (n === 0) throw new Error(`short read at ${position + done}`);
    done += n;
  }
}

describe("disk-full", () => {
  it("disk-full: primaries and secondaries on one filled tmpfs: nothing dies or hangs, hosts get ENOSPC, the group suspends naming the file; after space and a resync every acknowledged write is on both sides", async (ctx) => {
    const { c } = await cluster("tidemark-diskfull-");
    const mnt = mountTmpfs(path.join(c.dir, "data"), 64, (why) => ctx.skip(why));
    if (!mnt) return;
    // Allocated volumes: the state files, not the volumes, are what fills here.
    c.prefill(() => {}, [...c.topo.volumes.keys()]);
    await c.startAll();
    await c.startRcm();
    // The initial copy done first: the host writes below, not the copy, must meet the full
    // disk (a run with seven simulations beside it once saw 400 writes and no ENOSPC).
    await c.quiesce("C1", 60_000);
    const filler = fill(mnt, 3 << 20);
    const p = probe(c);
    const writers = { p1a: await c.nbd("p1a"), p2a: await c.nbd("p2a") };
    const acked = new Map<string, Buffer>();
    let refused = 0;
    // Dependent writes alternating between the two primaries, each issued once the last was answered.
    for (let n = 0; n < 400 && refused < 6; n++) {
      const volume = n % 2 === 0 ? "p1a" : "p2a";
      const slot = Math.floor(n / 2) % SLOTS;
      const data = payload(volume, n);
      const r = await answered(writers[volume], slot * WRITE_BYTES, data);
      if (r === "ok") acked.set(`${volume}@${slot}`, data);
      else refused++;
    }
    expect(refused, "hosts got ENOSPC").toBeGreaterThan(0);
    const full = await statusUntil(c, "suspended with a full disk named", (s) =>
      [...s.values()].some((x) => x.secondary?.some((g) => g.state === "suspended" && /state disk full: E(NOSPC|DQUOT|FBIG) writing \/.+ on \S+ \(tmpfs\)/.test(g.reason ?? ""))),
    );
    const fullIds = [...full].filter(([, x]) => x.disk?.state === "state-disk-full").map(([id]) => id);
    expect(fullIds.length).toBeGreaterThan(0);
    // What `tidemark status` prints (rendered here: a CLI process costs seconds on a loaded machine).
    expect(renderStatus(await c.status())).toMatch(/#\d+\s+state-disk-full.*\n[^]*state-disk-full: state disk full: ENOSPC writing/);

    const first = await p.end();
    expect(first.slow, "every status and nbdinfo answered within 2 s").toEqual([]);
    expect(first.rounds).toBeGreaterThan(1);

    // SIGTERM stops a subsystem on the full disk promptly (a full log or state disk once wedged it).
    const termAt = Date.now();
    await c.kill(2, "SIGTERM");
    expect(Date.now() - termAt, "SIGTERM on a full disk").toBeLessThan(3000);
    await c.start(2);
    await writers.p2a.close().catch(() => {});
    writers.p2a = await c.nbd("p2a");

    // A restart on the full disk comes up, serves reads and says so.
    await c.kill(1);
    await c.start(1);
    expect((await c.rawStatus(1)).disk?.state).toBe("state-disk-full");
    const reader = await c.nbd("p1a");
    const want = acked.get("p1a@0");
    if (want) expect((await reader.read(0, WRITE_BYTES)).equals(want)).toBe(true);
    await reader.close();
    await writers.p1a.close();
    writers.p1a = await c.nbd("p1a");
    expect(await answered(writers.p1a, 0, payload("p1a", 1000))).toBe("ENOSPC");
    // A FLUSH of what was acknowledged still succeeds on the full disk.
    await writers.p1a.flush();
    const second = probe(c);
    await pause(600);
    expect((await second.end()).slow, "after the restart too").toEqual([]);

    // Space back: host writes are taken again by themselves, into the bitmap.
    unlinkSync(filler);
    await statusUntil(c, "out of state-disk-full", (s) => s.size === c.ids.length && [...s.values()].every((x) => x.disk?.state === "ok"));
    const after = payload("p2a", 2000);
    expect(await answered(writers.p2a, 0, after)).toBe("ok");
    acked.set("p2a@0", after);
    for (const w of Object.values(writers)) await w.close();
    await resyncAndCheck(c, acked);
    expect(c.unexpectedDeaths()).toEqual([]);
  });

  it("disk-full: only secondary #3's file system full (a backlog): the primaries keep taking writes and the group suspends naming #3's file", async (ctx) => {
    const { c } = await cluster("tidemark-diskfull-s3-", {}, true);
    const mnt = mountTmpfs(path.join(c.dir, "data", "ss3"), 32, (why) => ctx.skip(why));
    if (!mnt) return;
    c.prefill(() => {}, ["s3a", "s3b"]);
    await c.startAll();
    await c.startRcm();
    const filler = fill(mnt, 2 << 20);
    const acked = new Map<string, Buffer>();
    const writers = { p1a: await c.nbd("p1a"), p1b: await c.nbd("p1b") };
    for (let n = 0; n < 48; n++) {
      const volume = n % 2 === 0 ? "p1a" : "p1b";
      const slot = Math.floor(n / 2) % SLOTS;
      const data = payload(volume, n);
      expect(await answered(writers[volume], slot * WRITE_BYTES, data), `write ${n} to ${volume}`).toBe("ok");
      acked.set(`${volume}@${slot}`, data);
    }
    const s = await statusUntil(c, "suspended for #3's disk", (m) =>
      [...m.values()].some((x) => x.secondary?.some((g) => g.state === "suspended" && /subsystem #3 state disk full: ENOSPC writing \S+\/ss3\/.+ on \S+\/ss3 \(tmpfs\)/.test(g.reason ?? ""))),
    );
    expect(s.get(3)!.disk?.state).toBe("state-disk-full");
    expect(s.get(1)!.disk?.state).toBe("ok");
    // Suspended: the primaries go on, into their bitmaps.
    const more = payload("p1a", 500);
    expect(await answered(writers.p1a, WRITE_BYTES, more)).toBe("ok");
    acked.set("p1a@1", more);
    unlinkSync(filler);
    await statusUntil(c, "#3 out of state-disk-full", (m) => m.get(3)?.disk?.state === "ok");
    for (const w of Object.values(writers)) await w.close();
    await resyncAndCheck(c, acked);
    expect(c.unexpectedDeaths()).toEqual([]);
  });

  it("disk-full: the log folder on its own full tmpfs: host writes and replication go on, dropped log lines are counted and reported", async (ctx) => {
    const metricsPort = await freePort();
    const { c, cfg } = await cluster("tidemark-diskfull-log-", { logBufferKiB: 16 }, true);
    const logParent = mkdtempSync(path.join(os.tmpdir(), "tidemark-logs-"));
    cleanup.push(() => rmSync(logParent, { recursive: true, force: true }));
    const logDir = mountTmpfs(path.join(logParent, "log"), 1, (why) => ctx.skip(why));
    if (!logDir) return;
    cfg.subsystems[0] = { ...cfg.subsystems[0], metricsPort } as (typeof cfg.subsystems)[number];
    c.rewriteConfig(cfg);
    c.logDir = logDir;
    await c.startAll();
    const filler = fill(logDir, 0);
    // Each connection logs its handshake and its close: far more than the 16 KiB the log may hold.
    const t0 = Date.now();
    for (let n = 0; n < 80; n++) {
      const w = await c.nbd("p1a");
      await w.write((n % SLOTS) * WRITE_BYTES, payload("p1a", n));
      await w.disconnect();
    }
    const writeMs = Date.now() - t0;
    await c.quiesce("C1", 20_000);
    for (const p of c.pairFiles()) expect(await cmp(p.primary, p.secondary), p.name).toBeNull();
    const dropped = (await c.rawStatus(1)).log?.droppedLines ?? 0;
    expect(dropped).toBeGreaterThan(0);
    const metrics = await (await fetch(`http://127.0.0.1:${metricsPort}/metrics`)).text();
    expect(Number(/^tidemark_log_dropped_lines_total (\d+)$/m.exec(metrics)?.[1])).toBeGreaterThan(0);
    // 80 connections of 256 KiB are seconds of work at most even on a loaded machine: nothing waited on the log.
    expect(writeMs).toBeLessThan(20_000);
    unlinkSync(filler);
    const until = Date.now() + 5000;
    while (!readFileSync(c.logOf(1), "utf8").includes("log lines were dropped") && Date.now() < until) await pause(100);
    const line = readFileSync(c.logOf(1), "utf8")
      .split("\n")
      .find((l) => l.includes("log lines were dropped"));
    expect(line).toBeDefined();
    expect(JSON.parse(line!).droppedLines).toBeGreaterThan(0);
    expect(c.unexpectedDeaths()).toEqual([]);
  });

  it("eio: primary volume p1a on a real failing device (a loop device whose backing tmpfs is full): hosts get EIO for p1a, the pair is marked and the group suspended naming it; p1b goes on", async (ctx) => {
    const loop = loopSupported();
    if (!loop.ok) {
      console.warn(`eio test skipped: ${loop.why}`);
      ctx.skip(loop.why);
      return;
    }
    const { c, cfg } = await cluster("tidemark-eio-", {}, true);
    const backing = mountTmpfs(mkdtempSync(path.join(os.tmpdir(), "tidemark-eio-backing-")), 2, (why) => ctx.skip(why));
    if (!backing) return;
    const img = path.join(backing, "p1a.img");
    execFileSync("truncate", ["-s", `${VOLUME_MIB}M`, img]);
    const dev = await attachLoop(img);
    cleanup.push(() => detachLoop(dev));
    const p1a = cfg.subsystems[0].volumes.find((v) => v.name === "p1a")! as { name: string; sizeMiB?: number; path?: string };
    delete p1a.sizeMiB;
    p1a.path = dev;
    c.rewriteConfig(cfg);
    await c.startAll();
    await c.startRcm();
    // Writes land in the device's page cache; the writeback to the 2 MiB backing fails: fdatasync says EIO.
    const w = await c.nbd("p1a");
    let eio = 0;
    for (let n = 0; n < SLOTS && eio === 0; n++) {
      try {
        await w.write(n * WRITE_BYTES, payload("p1a", n));
        await w.flush();
      } catch (err) {
        expect(err).toBeInstanceOf(NbdRequestError);
        expect((err as NbdRequestError).errno).toBe(5); // NBD_EIO
        eio++;
      }
    }
    expect(eio, "the host saw EIO").toBe(1);
    // From now on every read and write of p1a is EIO: its bytes may not be what the disk holds.
    await expect(w.read(0, 4096)).rejects.toMatchObject({ errno: 5 });
    await expect(w.write(0, Buffer.alloc(4096, 1))).rejects.toMatchObject({ errno: 5 });
    await w.close();
    const s = await statusUntil(c, "suspended for the failed volume", (m) =>
      [...m.values()].some((x) => x.secondary?.some((g) => g.state === "suspended" && /primary #1 volume p1a failed: EIO on (fdatasync|write) of \/dev\/loop\d+/.test(g.reason ?? ""))),
    );
    expect(s.get(1)!.primary!.volumes.find((v) => v.name === "p1a")!.failed).toMatch(/EIO/);
    // The other volume of the same primary is served as before (its writes go to the bitmap now).
    const other = await c.nbd("p1b");
    await other.write(0, Buffer.alloc(4096, 7));
    expect((await other.read(0, 4096)).equals(Buffer.alloc(4096, 7))).toBe(true);
    await other.close();
    expect(c.unexpectedDeaths()).toEqual([]);
    await c.stopAll();
  });

  it("eio: the state folder of primary #1 on a real failing device (ext4 on a loop device whose backing tmpfs fills): #1 stops loudly (exit 70) naming the file and what to do, and serves nothing stale", async (ctx) => {
    const loop = loopSupported();
    if (!loop.ok) {
      console.warn(`eio test skipped: ${loop.why}`);
      ctx.skip(loop.why);
      return;
    }
    const { c, cfg } = await cluster("tidemark-eio-state-", {}, true);
    const backing = mountTmpfs(mkdtempSync(path.join(os.tmpdir(), "tidemark-eio-state-backing-")), 6, (why) => ctx.skip(why));
    if (!backing) return;
    const img = path.join(backing, "ss1.ext4");
    execFileSync("truncate", ["-s", "64M", img]);
    execFileSync("mkfs.ext4", ["-q", "-F", "-O", "^has_journal", "-E", "lazy_itable_init=1", img], { stdio: "pipe" });
    const dev = await attachLoop(img);
    cleanup.push(() => detachLoop(dev));
    const stateDir = path.join(c.dir, "data", "ss1");
    mkdirSync(stateDir, { recursive: true });
    execFileSync("mount", ["-t", "ext4", dev, stateDir], { stdio: "pipe" });
    cleanup.push(() => void execFileSync("umount", ["-l", stateDir]));
    // The volumes elsewhere: it is the state that fails here.
    for (const v of cfg.subsystems[0].volumes as { name: string; path?: string }[]) v.path = path.join(c.dir, `${v.name}.img`);
    c.rewriteConfig(cfg);
    await c.startAll();
    const w = await c.nbd("p1a");
    let failed: unknown = null;
    // Each FLUSH syncs the journal's segment; once the backing is full its writeback fails.
    for (let n = 0; n < 200 && failed === null; n++) {
      try {
        await w.write((n % SLOTS) * WRITE_BYTES, payload("p1a", n));
        await w.flush();
      } catch (err) {
        failed = err;
      }
    }
    expect(failed, "a host write or flush failed").not.toBeNull();
    const until = Date.now() + 10_000;
    while (c.alive(1) && Date.now() < until) await pause(50);
    expect(c.alive(1), "#1 stopped").toBe(false);
    const deaths = c.unexpectedDeaths();
    expect(deaths).toHaveLength(1);
    expect(deaths[0]).toMatch(/^#1 exit 70: .*(EIO|EROFS|SQLITE_IOERR\w*) on state file \S+\/ss1\/.* on \S+\/ss1 \(ext4\): stopping.*Check the disk/);
    // Nothing of #1 is served any more; the others answer.
    await expect(c.nbd("p1a")).rejects.toThrow();
    expect((await c.rawStatus(3)).subsystem).toBe(3);
    await w.close().catch(() => {});
  });

  it("drill: `tidemark drill --rounds 1 --full-disk` runs the full-disk round and passes, and leaves no mount behind", async (ctx) => {
    if (process.getuid?.() !== 0) {
      console.warn("drill --full-disk test skipped: it mounts a tmpfs, which needs root");
      ctx.skip("needs root");
      return;
    }
    const base = mkdtempSync(path.join(os.tmpdir(), "tidemark-drill-fd-"));
    cleanup.push(() => rmSync(base, { recursive: true, force: true }));
    const r = await new Promise<{ code: number; out: string }>((resolve) =>
      execFile(process.execPath, [path.join(ROOT, "bin/tidemark"), "drill", "--rounds", "1", "--seed", "3", "--full-disk", "--volume-mib", "4", "--dir", base], { timeout: 120_000 }, (err, stdout, stderr) =>
        resolve({ code: err ? Number((err as { code?: number }).code ?? 1) : 0, out: stdout + stderr }),
      ),
    );
    expect(r.code, r.out).toBe(0);
    expect(r.out).toMatch(/round 1 \(seed 3\) OK .*fill .*free .*resync/);
    expect(r.out).toMatch(/refused with ENOSPC/);
    expect(r.out).toMatch(/cmp 4 of 4 pairs identical/);
    expect(readFileSync("/proc/self/mountinfo", "utf8")).not.toContain(base);
  });
});

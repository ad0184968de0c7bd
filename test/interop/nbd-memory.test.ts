// docs/nbd.md's whole-process memory figure for the NBD server (Limits), on a
// real subsystem process started through bin/tidemark (a child, so this
// runner's heap does not count): hostile clients that hold a WRITE payload one
// byte short, pipeline READs and never read a reply, or flood zero-length
// READs, grow its VmRSS by at most bufferBytesMax plus connectionsMax x 288
// KiB (416 KiB in TLS; plus the heap's garbage under the flood). The figures
// are written here
// as the doc states them, not computed from the code's constants, so a change
// that costs more per connection fails. Loopback only; every socket and the
// process are closed at the end.
import { spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import net from "node:net";
import { tmpdir } from "node:os";
import path from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import { afterEach, describe, expect, it } from "vitest";
import { READ_AHEAD_BYTES_MAX } from "../../appliance/nbd/connection.ts";
import * as p from "../../appliance/nbd/protocol.ts";
import { BUFFER_BYTES_MIN } from "../../appliance/nbd/server.ts";
import { NbdOptionSession } from "../support/nbd-client.ts";
import { freePort } from "../support/ports.ts";

const KiB = 1024;
const MiB = 1024 * KiB;
const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/**
 * docs/nbd.md: what a connection costs beside the budget: 256 KiB read ahead
 * (the reader and the socket's own buffer together) and 32 KiB of objects.
 */
const PER_CONNECTION_BYTES = 288 * KiB;
/** docs/nbd.md: what a connection in TLS costs more (87 KiB measured). */
const TLS_PER_CONNECTION_BYTES = 128 * KiB;
/** docs/nbd.md: what the JS heap may hold uncollected when many small requests pass. */
const HEAP_GARBAGE_BYTES = 128 * MiB;
/**
 * GC noise allowed on top of the figure where few requests pass (the first
 * two tests; docs/nbd.md says so): 4 MiB READ replies the kernel took, and
 * socket chunks already consumed, stay until V8 collects them. Chosen from
 * runs on the 2-core machine, niced, beside a simulation sweep: the 256
 * connections grew 94-96 MiB against a figure of 136 MiB (the TLS test 84
 * against 116); with a per-connection cost twice the figure's
 * (READ_AHEAD_BYTES_MAX raised to 640 KiB) they grew 199 MiB, with the
 * read-ahead doubled to 512 KiB 167-168 MiB. 24 MiB leaves this code 64 MiB
 * clear of the bound and still fails both. (A cost 1.4 times the figure's
 * would pass: the code before this test grew 141 MiB against its figure of
 * 128 MiB, 256 KiB per connection.)
 */
const GC_MARGIN_BYTES = 24 * MiB;

const cleanups: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

interface Subsystem {
  port: number;
  log: string;
  rss(): Promise<number>;
}

/** One subsystem with one 64 MiB volume `v1` and these nbdLimits. */
async function startSubsystem(nbdLimits: Record<string, number>, o: { dir?: string; nbdTls?: Record<string, string> } = {}): Promise<Subsystem> {
  const dir = o.dir ?? (await mkdtemp(path.join(tmpdir(), "tm-nbd-memory-")));
  const port = await freePort();
  const config = path.join(dir, "config.json");
  const log = path.join(dir, "ss1.log");
  await writeFile(
    config,
    JSON.stringify({
      clusterKey: "nbd-memory-test-key-0123456789",
      dataDir: "data",
      logLevel: "warn",
      subsystems: [{ id: 1, host: "127.0.0.1", replicationPort: await freePort(), nbdPort: port, volumes: [{ name: "v1", sizeMiB: 64 }], nbdLimits, nbdTls: o.nbdTls }],
    }),
  );
  const proc = spawn(process.execPath, [path.join(ROOT, "bin/tidemark"), "subsystem", "--config", config, "--id", "1", "--log", log], { stdio: ["ignore", "pipe", "inherit"] });
  cleanups.push(async () => {
    if (proc.exitCode === null && proc.signalCode === null) {
      const exited = new Promise((r) => proc.once("exit", r));
      proc.kill("SIGKILL");
      await exited;
    }
    await rm(dir, { recursive: true, force: true });
  });
  await new Promise<void>((resolve, reject) => {
    createInterface({ input: proc.stdout! }).on("line", (l) => l.includes('"ready":true') && resolve());
    proc.once("exit", (code) => reject(new Error(`subsystem exited ${code} before it was ready`)));
  });
  const pid = proc.pid!;
  return {
    port,
    log,
    async rss() {
      const m = /VmRSS:\s+(\d+) kB/.exec(await readFile(`/proc/${pid}/status`, "utf8"));
      if (!m) throw new Error(`no VmRSS for pid ${pid}`);
      return Number(m[1]) * KiB;
    },
  };
}

/** Handshake with EXPORT_NAME v1 (no zeroes), then stop reading the socket. */
async function openHostile(port: number): Promise<net.Socket> {
  const s = net.connect({ host: "127.0.0.1", port });
  s.on("error", () => {});
  cleanups.push(async () => void s.destroy());
  let got = 0;
  await new Promise<void>((resolve, reject) => {
    s.once("close", () => reject(new Error("closed during the handshake")));
    s.on("data", (d: Buffer) => {
      got += d.length;
      // The greeting (18 bytes) and EXPORT_NAME's reply (size 8, flags 2).
      if (got >= 18 + 10) {
        s.removeAllListeners("data");
        s.removeAllListeners("close");
        s.pause();
        resolve();
      }
    });
    s.write(Buffer.concat([p.encodeClientFlags(p.NBD_FLAG_C_FIXED_NEWSTYLE | p.NBD_FLAG_C_NO_ZEROES), p.encodeOption(p.NBD_OPT_EXPORT_NAME, Buffer.from("v1"))]));
  });
  return s;
}

/** STARTTLS with alice's PSK, GO v1, then stop reading the TLS socket. */
async function openTls(port: number, key: Buffer): Promise<net.Socket> {
  const plain = await NbdOptionSession.open("127.0.0.1", port);
  cleanups.push(async () => void plain.socket.destroy());
  const inside = await plain.startTls({ pskCallback: () => ({ identity: "alice", psk: key }) });
  await inside.info("v1", p.NBD_OPT_GO);
  inside.reader.detach();
  return inside.socket;
}

/**
 * Starts the subsystem, writes and reads 4 MiB with the replies taken (so
 * first-use costs are in the baseline), lets it settle, and returns it with
 * its mean RSS over half a second.
 */
async function settledSubsystem(nbdLimits: Record<string, number>, o: { dir?: string; nbdTls?: Record<string, string>; open?: (port: number) => Promise<net.Socket> } = {}): Promise<{ ss: Subsystem; base: number }> {
  const ss = await startSubsystem(nbdLimits, o);
  const s = await (o.open ?? openHostile)(ss.port);
  s.resume();
  let got = 0;
  const done = new Promise<void>((resolve) =>
    s.on("data", (d: Buffer) => {
      got += d.length;
      if (got >= 2 * p.SIMPLE_REPLY_HEADER_BYTES + 4 * MiB) resolve();
    }),
  );
  s.write(p.encodeRequestHeader({ flags: 0, type: p.NBD_CMD_WRITE, cookie: 1n, offset: 0, length: 4 * MiB }));
  s.write(Buffer.alloc(4 * MiB, 1));
  s.write(p.encodeRequestHeader({ flags: 0, type: p.NBD_CMD_READ, cookie: 2n, offset: 0, length: 4 * MiB }));
  await done;
  s.destroy();
  await sleep(1000);
  let sum = 0;
  for (let i = 0; i < 5; i++) {
    sum += await ss.rss();
    await sleep(100);
  }
  return { ss, base: sum / 5 };
}

/** The highest RSS over `ms`, sampled every 100 ms. */
async function peakRss(ss: Subsystem, ms: number): Promise<number> {
  let peak = 0;
  for (let t = 0; t < ms; t += 100) {
    await sleep(100);
    peak = Math.max(peak, await ss.rss());
  }
  return peak;
}

const mib = (b: number) => Math.round((b / MiB) * 10) / 10;

describe("nbd memory: the whole-process figure of docs/nbd.md", () => {
  it("memory: the figures here are docs/nbd.md's", async () => {
    const doc = await readFile(path.join(ROOT, "docs/nbd.md"), "utf8");
    expect(doc).toContain("`connectionsMax` x 288 KiB, and 128 KiB more per connection in TLS");
    expect(doc).toContain("up to about 128 MiB");
    expect(doc).toContain("within 24 MiB of\nthe figure");
  });

  it("memory: 256 hostile connections (128 hold a 4 MiB WRITE one byte short, 128 pipeline 4 MiB READs and read nothing) grow a subsystem's RSS by at most bufferBytesMax + connectionsMax x 288 KiB", async () => {
    const CONNS = 256;
    const bufferBytesMax = BUFFER_BYTES_MIN;
    const { ss, base } = await settledSubsystem({
      bufferBytesMax,
      bufferBytesPerPeerMax: bufferBytesMax,
      connectionsMax: CONNS,
      connectionsPerPeerMax: CONNS,
      connectionsPerExportMax: CONNS,
      // Nothing is closed as stalled while we measure.
      stallTimeoutMs: 120_000,
    });
    const payload = Buffer.alloc(4 * MiB - 1, 0x5a);
    // READ headers for twice the read-ahead, so the connections waiting for
    // the budget fill theirs.
    const READS = Math.ceil((2 * READ_AHEAD_BYTES_MAX) / p.REQUEST_HEADER_BYTES);
    const reads = Buffer.concat(Array.from({ length: READS }, (_, k) => p.encodeRequestHeader({ flags: 0, type: p.NBD_CMD_READ, cookie: BigInt(k), offset: (k % 16) * 4 * MiB, length: 4 * MiB })));
    const sockets: net.Socket[] = [];
    for (let i = 0; i < CONNS; i += 16) {
      const batch = await Promise.all(Array.from({ length: 16 }, () => openHostile(ss.port)));
      batch.forEach((s, k) => {
        if ((i + k) % 2 === 0) {
          s.write(p.encodeRequestHeader({ flags: 0, type: p.NBD_CMD_WRITE, cookie: 1n, offset: 0, length: 4 * MiB }));
          s.write(payload);
        } else {
          s.write(reads);
        }
      });
      sockets.push(...batch);
    }
    const peak = await peakRss(ss, 3000);
    const growth = peak - base;
    const bound = bufferBytesMax + CONNS * PER_CONNECTION_BYTES;
    const report = { baseMiB: mib(base), peakMiB: mib(peak), growthMiB: mib(growth), figureMiB: mib(bound), marginMiB: mib(GC_MARGIN_BYTES) };
    console.log(`nbd memory (WRITEs held, READs not read): ${JSON.stringify(report)}`);
    // Held back, not refused: every hostile connection is still open.
    expect(sockets.filter((s) => s.destroyed)).toHaveLength(0);
    // The budget bit, so the load did press on it.
    expect(await readFile(ss.log, "utf8")).toContain("nbd: buffer budget full; not reading this connection until bytes come back");
    expect(growth).toBeGreaterThan(bufferBytesMax / 2);
    expect({ ...report, withinBound: growth <= bound + GC_MARGIN_BYTES }).toMatchObject({ withinBound: true });
  });

  it("memory: 128 connections in TLS (PSK), each holding a 4 MiB WRITE one byte short, grow a subsystem's RSS by at most bufferBytesMax + connectionsMax x (288 + 128) KiB", async () => {
    const CONNS = 128;
    const bufferBytesMax = BUFFER_BYTES_MIN;
    const dir = await mkdtemp(path.join(tmpdir(), "tm-nbd-memory-"));
    const key = randomBytes(32);
    await writeFile(path.join(dir, "keys.psk"), `alice:${key.toString("hex")}\n`, { mode: 0o600 });
    const open = (port: number) => openTls(port, key);
    const { ss, base } = await settledSubsystem(
      { bufferBytesMax, bufferBytesPerPeerMax: bufferBytesMax, connectionsMax: CONNS, connectionsPerPeerMax: CONNS, connectionsPerExportMax: CONNS, stallTimeoutMs: 120_000 },
      { dir, nbdTls: { mode: "require", pskFile: "keys.psk" }, open },
    );
    const payload = Buffer.alloc(4 * MiB - 1, 0x5a);
    const sockets: net.Socket[] = [];
    for (let i = 0; i < CONNS; i += 16) {
      const batch = await Promise.all(Array.from({ length: 16 }, () => open(ss.port)));
      for (const s of batch) {
        s.write(p.encodeRequestHeader({ flags: 0, type: p.NBD_CMD_WRITE, cookie: 1n, offset: 0, length: 4 * MiB }));
        s.write(payload);
      }
      sockets.push(...batch);
    }
    const peak = await peakRss(ss, 3000);
    const growth = peak - base;
    const bound = bufferBytesMax + CONNS * (PER_CONNECTION_BYTES + TLS_PER_CONNECTION_BYTES);
    const report = { baseMiB: mib(base), peakMiB: mib(peak), growthMiB: mib(growth), figureMiB: mib(bound), marginMiB: mib(GC_MARGIN_BYTES) };
    console.log(`nbd memory (TLS, WRITEs held): ${JSON.stringify(report)}`);
    expect(sockets.filter((s) => s.destroyed)).toHaveLength(0);
    const log = await readFile(ss.log, "utf8");
    expect(log).toContain("nbd: buffer budget full; not reading this connection until bytes come back");
    expect(log).not.toContain("TLS handshake failed");
    expect(growth).toBeGreaterThan(bufferBytesMax / 2);
    expect({ ...report, withinBound: growth <= bound + GC_MARGIN_BYTES }).toMatchObject({ withinBound: true });
  });

  it("memory: 8 connections pipelining 60,000 zero-length READs each and reading nothing grow a subsystem's RSS by at most bufferBytesMax + connectionsMax x 288 KiB + 128 MiB of heap garbage", async () => {
    const CONNS = 8;
    const READS = 60_000;
    const bufferBytesMax = BUFFER_BYTES_MIN;
    const { ss, base } = await settledSubsystem({ bufferBytesMax, bufferBytesPerPeerMax: bufferBytesMax, connectionsMax: CONNS, stallTimeoutMs: 120_000 });
    // 16-byte replies. When each request was charged 28 bytes (not
    // REQUEST_COST_BYTES) and counted only until its reply was queued, not
    // taken, this grew the process by 533 MiB within the 4 s.
    const flood = Buffer.concat(Array.from({ length: READS }, (_, k) => p.encodeRequestHeader({ flags: 0, type: p.NBD_CMD_READ, cookie: BigInt(k), offset: 0, length: 0 })));
    const sockets = await Promise.all(Array.from({ length: CONNS }, () => openHostile(ss.port)));
    for (const s of sockets) s.write(flood);
    const peak = await peakRss(ss, 4000);
    const growth = peak - base;
    const bound = bufferBytesMax + CONNS * PER_CONNECTION_BYTES + HEAP_GARBAGE_BYTES;
    const report = { baseMiB: mib(base), peakMiB: mib(peak), growthMiB: mib(growth), boundMiB: mib(bound) };
    console.log(`nbd memory (zero-length READs): ${JSON.stringify(report)}`);
    expect(sockets.filter((s) => s.destroyed)).toHaveLength(0);
    expect({ ...report, withinBound: growth <= bound }).toMatchObject({ withinBound: true });
  });
});

// The subsystem's NBD exports against real NBD clients on a real cluster
// (Fig. 1: primaries #1, #2; secondaries #3, #4, #5): what a host writes
// through nbdinfo, qemu-io, nbdcopy and fio on a primary reads back the same
// on its secondary after `tidemark quiesce`, and a secondary is read-only.
// Also `tidemark subsystem` started by a client through socket activation.
// Each test uses its own volumes (or its own region of one), so the tests of
// a describe block share one cluster. A missing tool skips its test and says so.
import { execFile } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { readFile, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { NBD_CMD_READ, NBD_CMD_TRIM, NBD_CMD_WRITE, NBD_CMD_WRITE_ZEROES, NBD_EPERM } from "../../appliance/nbd/protocol.ts";
import type { StatusDoc } from "../../appliance/cli/status-view.ts";
import { BIN, ROOT, TestCluster, cmp, fig1Config, freePort } from "../support/cluster.ts";
import { nbdTools } from "../support/tools.ts";

const run = promisify(execFile);
const MiB = 1024 * 1024;
const VOLUME_MIB = 32;
const VOLUME_BYTES = VOLUME_MIB * MiB;

const TOOLS = nbdTools("subsystem nbd");
const HAVE_NBDINFO = TOOLS.nbdinfo;
const HAVE_NBDCOPY = TOOLS.nbdcopy;
const HAVE_QEMU_IO = TOOLS.qemuIo;
const HAVE_FIO_NBD = TOOLS.fioNbd;

type Pair = StatusDoc["pairs"][number];

async function nbdinfo(args: string[], o: { cwd?: string } = {}): Promise<Record<string, unknown>> {
  const { stdout } = await run("nbdinfo", ["--json", ...args], o);
  const doc = JSON.parse(stdout) as { exports: Record<string, unknown>[] } & Record<string, unknown>;
  return { ...doc, ...doc.exports[0] };
}

/** Runs qemu-io with one -c per command; fails on any error or pattern mismatch. */
async function qemuIo(args: string[], commands: string[]): Promise<string> {
  const { stdout, stderr } = await run("qemu-io", [...args, ...commands.flatMap((c) => ["-c", c])], { maxBuffer: 16 * MiB });
  expect(stderr).toBe("");
  expect(stdout).not.toMatch(/Pattern verification failed|error|failed/i);
  return stdout;
}

async function fioJob(args: string[], cwd: string): Promise<{ error: number; read: { io_bytes: number }; write: { io_bytes: number } }> {
  const { stdout } = await run("fio", [...args, "--output-format=json"], { cwd, maxBuffer: 16 * MiB });
  return (JSON.parse(stdout.slice(stdout.indexOf("{"))) as { jobs: { error: number; read: { io_bytes: number }; write: { io_bytes: number } }[] }).jobs[0];
}

describe("subsystem nbd: Fig. 1 cluster over real NBD clients", () => {
  let c: TestCluster;
  let pairs: Pair[];
  const pairOf = (primary: string) => pairs.find((p) => p.primary.volume === primary)!;

  beforeAll(async () => {
    c = TestCluster.create(await fig1Config({ volumeMiB: VOLUME_MIB }), "tidemark-nbd-");
    await c.startAll();
    const r = await c.cli(["status", "--config", c.configFile, "--json"]);
    expect(r.code, r.stderr).toBe(0);
    pairs = (JSON.parse(r.stdout) as StatusDoc).pairs;
  });
  afterAll(async () => {
    await c?.destroy();
  });

  it.skipIf(!HAVE_NBDINFO)("nbdinfo: every export named by status --json (4 pairs, primaries rw, secondaries ro, 512/4096/4 MiB)", async () => {
    expect(pairs.map((p) => `${p.primary.volume}->${p.secondary.volume}`).sort()).toEqual(["p1a->s3a", "p1b->s4a", "p2a->s3b", "p2b->s5a"]);
    const common = {
      protocol: "newstyle-fixed",
      structured: true,
      "export-size": VOLUME_BYTES,
      can_flush: true,
      can_multi_conn: true,
      block_size_minimum: 512,
      block_size_preferred: 4096,
      block_size_maximum: 4 * MiB,
    };
    const checks = pairs.flatMap((p) => [
      { ref: p.primary, want: { ...common, is_read_only: false, can_fua: true, can_trim: true, can_zero: true } },
      { ref: p.secondary, want: { ...common, is_read_only: true, can_trim: false, can_zero: false } },
    ]);
    await Promise.all(
      checks.map(async ({ ref, want }) => {
        expect(ref.nbdUrl).toBe(c.nbdUrl(ref.volume));
        const j = await nbdinfo([ref.nbdUrl!]);
        expect(j, ref.nbdUrl!).toMatchObject({ ...want, "export-name": ref.volume });
      }),
    );
  });

  it.skipIf(!HAVE_QEMU_IO)("qemu-io: write -P at 24 offsets on p1a and p2a, read -P at once, and on s3a and s3b after quiesce", async () => {
    // Unaligned offsets and lengths, below 24 MiB (the TRIM test uses p2a from 28 MiB).
    const spots = (seed: number) =>
      Array.from({ length: 24 }, (_, i) => ({ offset: i * 1_000_003 + seed * 512, length: 4096 + ((i + seed) % 3) * 1000, pattern: (0x10 + i * 7 + seed) & 0xff }));
    const jobs = [
      { primary: "p1a", spots: spots(1) },
      { primary: "p2a", spots: spots(2) },
    ];
    await Promise.all(
      jobs.map(({ primary, spots: s }) =>
        qemuIo(["-f", "raw", c.nbdUrl(primary)], [
          ...s.map((x) => `write -P ${x.pattern} ${x.offset} ${x.length}`),
          ...s.map((x) => `read -P ${x.pattern} ${x.offset} ${x.length}`),
          "flush",
        ]),
      ),
    );
    await c.quiesce();
    for (const { primary, spots: s } of jobs) {
      const secondary = pairOf(primary).secondary.volume;
      const out = await qemuIo(["-r", "-f", "raw", c.nbdUrl(secondary)], s.map((x) => `read -P ${x.pattern} ${x.offset} ${x.length}`));
      expect(out.match(/^read /gm)?.length, secondary).toBe(s.length);
    }
  });

  it.skipIf(!HAVE_NBDCOPY)("nbdcopy: a random 32 MiB image into p1b, quiesce, s4a copied out is identical (cmp)", async () => {
    const src = path.join(c.dir, "nbdcopy-src.img");
    const out = path.join(c.dir, "nbdcopy-out.img");
    await writeFile(src, randomBytes(VOLUME_BYTES));
    await run("nbdcopy", [src, c.nbdUrl("p1b")]);
    await c.quiesce();
    await run("nbdcopy", [c.nbdUrl(pairOf("p1b").secondary.volume), out]);
    expect(await cmp(src, out)).toBeNull();
  });

  it.skipIf(!HAVE_FIO_NBD || !HAVE_NBDCOPY)("fio: randwrite verify=crc32c on p2b (32 MiB, 4k, iodepth 32), then s5a holds the same bytes after quiesce", async () => {
    const job = ["--name=tm-subsystem", "--ioengine=nbd", "--rw=randwrite", "--bs=4k", `--size=${VOLUME_MIB}M`, "--iodepth=32", "--verify=crc32c"];
    // fio leaves a verify state file in its working directory.
    const w = await fioJob([...job, `--uri=${c.nbdUrl("p2b")}`, "--do_verify=1"], c.dir);
    expect(w.error).toBe(0);
    expect(w.write.io_bytes).toBe(VOLUME_BYTES);
    await c.quiesce();
    const secondary = c.nbdUrl(pairOf("p2b").secondary.volume);
    // The same job with --verify_only only reads, and checks every block's header and crc32c.
    const v = await fioJob([...job, `--uri=${secondary}`, "--verify_only"], c.dir);
    expect(v.error).toBe(0);
    expect(v.read.io_bytes).toBe(VOLUME_BYTES);
    const [pOut, sOut] = [path.join(c.dir, "fio-p2b.img"), path.join(c.dir, "fio-s5a.img")];
    await Promise.all([run("nbdcopy", [c.nbdUrl("p2b"), pOut]), run("nbdcopy", [secondary, sOut])]);
    expect(await cmp(pOut, sOut)).toBeNull();
  });

  it("raw client: WRITE, TRIM and WRITE_ZEROES to secondary s3a get EPERM, and the connection serves the next READ", async () => {
    const nbd = await c.nbd("s3a");
    try {
      expect(nbd.readOnly).toBe(true);
      const before = await nbd.read(0, 64 * 1024);
      const refused = await Promise.all([
        nbd.request({ type: NBD_CMD_WRITE, offset: 0, payload: Buffer.alloc(4096, 0xee) }),
        nbd.request({ type: NBD_CMD_TRIM, offset: 0, length: 4096 }),
        nbd.request({ type: NBD_CMD_WRITE_ZEROES, offset: 0, length: 4096 }),
      ]);
      expect(refused.map((r) => r.errno)).toEqual([NBD_EPERM, NBD_EPERM, NBD_EPERM]);
      const after = await nbd.request({ type: NBD_CMD_READ, offset: 0, length: 64 * 1024 });
      expect(after.errno).toBe(0);
      expect(after.data!.equals(before)).toBe(true);
    } finally {
      await nbd.disconnect();
    }
  });

  it("raw client: TRIM and WRITE_ZEROES on primary p2a replicate as zeroes (s3b reads zeroes there after quiesce)", async () => {
    const base = 28 * MiB;
    const fill = Buffer.alloc(2 * MiB, 0xab);
    const p = await c.nbd("p2a");
    try {
      await p.write(base, fill);
      await p.trim(base + 64 * 1024, 128 * 1024);
      await p.writeZeroes(base + MiB, 256 * 1024, { fua: true });
      await p.flush();
    } finally {
      await p.disconnect();
    }
    const want = Buffer.from(fill);
    want.fill(0, 64 * 1024, 192 * 1024);
    want.fill(0, MiB, MiB + 256 * 1024);
    await c.quiesce();
    for (const vol of ["p2a", pairOf("p2a").secondary.volume]) {
      const r = await c.nbd(vol);
      try {
        expect((await r.read(base, fill.length)).equals(want), vol).toBe(true);
      } finally {
        await r.disconnect();
      }
    }
  });

  it("cluster: no subsystem died during the suite", () => {
    expect(c.unexpectedDeaths()).toEqual([]);
    for (const id of c.ids) expect(c.alive(id), `subsystem #${id}`).toBe(true);
  });
});

describe("subsystem nbd: socket activation (one subsystem, one unpaired volume)", () => {
  let dir: string;
  let config: string;
  const server = () => [process.execPath, BIN, "subsystem", "--config", config, "--id", "1"];

  beforeAll(async () => {
    dir = mkdtempSync(path.join(os.tmpdir(), "tidemark-sa-"));
    config = path.join(dir, "config.json");
    // nbdPort is never bound under activation; replicationPort still is, so it must be free.
    writeFileSync(
      config,
      JSON.stringify({
        clusterKey: "test-cluster-key-0123456789",
        dataDir: "data",
        subsystems: [{ id: 1, host: "127.0.0.1", replicationPort: await freePort(), nbdPort: await freePort(), defaultExport: "solo", volumes: [{ name: "solo", sizeMiB: 8 }] }],
      }),
    );
  });
  afterAll(() => {
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it.skipIf(!HAVE_NBDINFO)("socket activation: nbdinfo -- [ tidemark subsystem ] shows the default export, stdout stays the client's", async () => {
    // No --log: the logs go to stderr, so nbdinfo's JSON on stdout parses.
    const j = await nbdinfo(["--", "[", ...server(), "]"], { cwd: ROOT });
    expect(j).toMatchObject({ "export-name": "solo", "export-size": 8 * MiB, is_read_only: false, can_trim: true, description: "tidemark volume solo (not replicated)" });
  });

  it.skipIf(!HAVE_NBDCOPY)("socket activation: nbdcopy -- SRC [ tidemark subsystem ] fills the volume, a second start copies it out identical", async () => {
    const src = path.join(dir, "src.img");
    const out = path.join(dir, "out.img");
    const image = randomBytes(8 * MiB);
    await writeFile(src, image);
    const log = ["--log", path.join(dir, "ss1.log")];
    await run("nbdcopy", ["--", src, "[", ...server(), ...log, "]"], { cwd: ROOT });
    await run("nbdcopy", ["--", "[", ...server(), ...log, "]", out], { cwd: ROOT });
    expect((await readFile(out)).equals(image)).toBe(true);
    // Each run stopped cleanly on the client's SIGTERM.
    expect((await readFile(path.join(dir, "ss1.log"), "utf8")).match(/subsystem stopped cleanly/g)?.length).toBe(2);
  });
});

// tidemark's own NBD client (appliance/nbd/client.ts, used by the drill's workload) against two
// servers: tidemark's NbdServer on file exports, and nbdkit's memory plugin, a server written by
// others. Every failure is a typed error naming the export: a refused export, an NBD error
// reply, a lost connection, and a server that stops answering (the request timeout).
import { spawn, type ChildProcess } from "node:child_process";
import { randomBytes } from "node:crypto";
import net from "node:net";
import { spawnSync } from "node:child_process";
import pino from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { NbdClient, NbdClientError } from "../../appliance/nbd/client.ts";
import { NbdServer, type NbdExport } from "../../appliance/nbd/server.ts";
import { startNbdFixture, type NbdFixture } from "../support/nbd-fixture.ts";
import { freePort } from "../support/ports.ts";

const SIZE = 4 * 1024 * 1024;
const content = randomBytes(SIZE);

async function expectCode(p: Promise<unknown>, code: string, message?: RegExp): Promise<NbdClientError> {
  const err = await p.then(
    () => null,
    (e: unknown) => e,
  );
  expect(err, `expected ${code}`).toBeInstanceOf(NbdClientError);
  expect((err as NbdClientError).code).toBe(code);
  if (message) expect((err as Error).message).toMatch(message);
  return err as NbdClientError;
}

describe("nbd client: against tidemark's server", () => {
  let fx: NbdFixture;
  beforeAll(async () => {
    fx = await startNbdFixture([
      { name: "disk", sizeBytes: SIZE, content },
      { name: "ro", sizeBytes: SIZE, readOnly: true, content },
    ]);
  });
  afterAll(async () => fx.stop());
  const connect = (exportName: string, requestTimeoutMs?: number) => NbdClient.connect({ host: fx.host, port: fx.port, exportName, requestTimeoutMs });

  it("nbd client: reads, pipelined writes, zeroes and flush round-trip (64 writes in flight)", async () => {
    const c = await connect("disk");
    expect(c.sizeBytes).toBe(SIZE);
    expect(c.readOnly).toBe(false);
    expect((await c.read(4096, 8192)).equals(content.subarray(4096, 12288))).toBe(true);
    const blocks = Array.from({ length: 64 }, (_, i) => ({ off: i * 65536, data: randomBytes(4096 + (i % 4) * 512) }));
    await Promise.all(blocks.map((b) => c.write(b.off, b.data)));
    await c.writeZeroes(1 << 20, 1 << 20);
    await c.flush();
    for (const b of blocks) {
      const expected = b.off >= 1 << 20 && b.off < 2 << 20 ? Buffer.alloc(b.data.length) : b.data;
      expect((await c.read(b.off, b.data.length)).equals(expected), `offset ${b.off}`).toBe(true);
    }
    await c.disconnect();
  });

  it("nbd client: a write to a read-only export is TM_NBD_REQUEST with EPERM, and the connection stays usable", async () => {
    const c = await connect("ro");
    expect(c.readOnly).toBe(true);
    const err = await expectCode(c.write(0, Buffer.alloc(4096)), "TM_NBD_REQUEST", /nbd:\/\/127\.0\.0\.1:\d+\/ro: WRITE failed: EPERM/);
    expect(err.nbdErrno).toBe(1);
    expect((await c.read(0, 512)).equals(content.subarray(0, 512))).toBe(true);
    await c.close();
  });

  it("nbd client: an unknown export is TM_NBD_REFUSED; a closed port is TM_NBD_CONNECTION", async () => {
    await expectCode(connect("nope"), "TM_NBD_REFUSED", /\/nope: the server refused the export/);
    const port = await freePort();
    await expectCode(NbdClient.connect({ host: "127.0.0.1", port, exportName: "disk" }), "TM_NBD_CONNECTION", /connect failed \(ECONNREFUSED\)/);
  });

  it("nbd client: a server that stops answering fails the request after the timeout, and every later one; a connection closed under a request fails it", async () => {
    let release: () => void = () => undefined;
    const stuck: NbdExport = {
      name: "stuck",
      sizeBytes: SIZE,
      isReadOnly: () => false,
      read: async (_o, n) => Buffer.alloc(n),
      write: () => new Promise<void>((r) => (release = r)),
      writeZeroes: async () => undefined,
      trim: async () => undefined,
      flush: async () => undefined,
    };
    const server = new NbdServer({ exports: { get: (n) => (n === "stuck" ? stuck : undefined), list: () => [stuck] }, logger: pino({ level: "silent" }), maxPayloadBytes: 1 << 20 });
    const { port } = await server.listen("127.0.0.1", 0);
    try {
      // The request timeout: the export never finishes the write.
      const c = await NbdClient.connect({ host: "127.0.0.1", port, exportName: "stuck", requestTimeoutMs: 300 });
      const t = Date.now();
      await expectCode(c.write(0, Buffer.alloc(4096)), "TM_NBD_CONNECTION", /WRITE at 0 got no reply within 300 ms; connection dropped/);
      expect(Date.now() - t).toBeGreaterThanOrEqual(250);
      await expectCode(c.read(0, 512), "TM_NBD_CONNECTION");
      release();
      // The connection closes under a request in flight (the export is stuck again).
      const d = await NbdClient.connect({ host: "127.0.0.1", port, exportName: "stuck" });
      const w = d.write(4096, Buffer.alloc(4096));
      await new Promise((r) => setTimeout(r, 50));
      await d.close();
      await expectCode(w, "TM_NBD_CONNECTION", /connection lost/);
      release();
    } finally {
      await server.close();
    }
  });
});

const haveNbdkit = spawnSync("nbdkit", ["--version"], { stdio: "ignore" }).status === 0;
if (!haveNbdkit) console.warn("nbd client: nbdkit is not installed; the nbdkit interop test is skipped (apt-get install nbdkit)");

describe.skipIf(!haveNbdkit)("nbd client: against nbdkit", () => {
  let proc: ChildProcess | null = null;
  let port = 0;
  beforeAll(async () => {
    port = await freePort();
    proc = spawn("nbdkit", ["-f", "--exit-with-parent", "-i", "127.0.0.1", "-p", String(port), "memory", `size=${SIZE}`], { stdio: ["ignore", "ignore", "pipe"] });
    let stderr = "";
    proc.stderr!.on("data", (d) => (stderr += d));
    for (let i = 0; ; i++) {
      const up = await new Promise<boolean>((r) => {
        const s = net.connect(port, "127.0.0.1", () => (s.destroy(), r(true)));
        s.on("error", () => r(false));
      });
      if (up) break;
      if (i > 100 || proc.exitCode !== null) throw new Error(`nbdkit did not start: ${stderr}`);
      await new Promise((r) => setTimeout(r, 50));
    }
  });
  afterAll(() => {
    proc?.kill("SIGKILL");
  });

  it("nbd client: nbdkit memory plugin: size, writes, zeroes, flush and reads agree", async () => {
    const c = await NbdClient.connect({ host: "127.0.0.1", port, exportName: "" });
    expect(c.sizeBytes).toBe(SIZE);
    const data = randomBytes(128 * 1024);
    await Promise.all([c.write(0, data.subarray(0, 65536)), c.write(65536, data.subarray(65536))]);
    await c.writeZeroes(4096, 4096);
    await c.flush();
    const back = await c.read(0, data.length);
    const expected = Buffer.from(data);
    expected.fill(0, 4096, 8192);
    expect(back.equals(expected)).toBe(true);
    await c.disconnect();
  });
});

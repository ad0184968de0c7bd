// Raw protocol behaviour of NbdServer through test/support/nbd-client.ts:
// refused requests keep the connection, malformed bytes close only the
// connection that sent them, and pipelined requests are all answered.
import net from "node:net";
import { randomBytes } from "node:crypto";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import * as p from "../../appliance/nbd/protocol.ts";
import { NbdClient, NbdOptionError, NbdOptionSession } from "../support/nbd-client.ts";
import { startNbdFixture, type NbdFixture } from "../support/nbd-fixture.ts";

const SIZE = 4 * 1024 * 1024;
const MAX_PAYLOAD = 64 * 1024;
const seed = randomBytes(SIZE);

let fx: NbdFixture;

beforeAll(async () => {
  fx = await startNbdFixture(
    [
      { name: "disk", sizeBytes: SIZE, content: seed, description: "raw test disk" },
      { name: "ro", sizeBytes: SIZE, readOnly: true, content: seed },
    ],
    { maxPayloadBytes: MAX_PAYLOAD },
  );
});
afterAll(async () => {
  await fx.stop();
});

function connect(exportName: string, structuredReplies = false): Promise<NbdClient> {
  return NbdClient.connect({ host: fx.host, port: fx.port, exportName, structuredReplies });
}

/** A connection is still good when a valid read returns the export's bytes. */
async function expectGoodRead(c: NbdClient, offset = 8192): Promise<void> {
  const data = await c.read(offset, 4096);
  expect(data.equals(seed.subarray(offset, offset + 4096))).toBe(true);
}

/** Resolves true when the server closes the socket within the timeout. */
function closedBy(socket: net.Socket, ms = 5000): Promise<boolean> {
  return new Promise((resolve) => {
    if (socket.destroyed) return resolve(true);
    const t = setTimeout(() => resolve(false), ms);
    socket.once("close", () => {
      clearTimeout(t);
      resolve(true);
    });
    socket.resume();
  });
}

describe.each([false, true])("nbd: raw requests (structured replies %s)", (sr) => {
  it("errors: refused requests keep the connection (range, size, alignment, command, flags)", async () => {
    const c = await connect("disk", sr);
    expect(c.structuredReplies).toBe(sr);
    const cases: { name: string; req: Parameters<NbdClient["request"]>[0]; errno: number }[] = [
      { name: "read past end", req: { type: p.NBD_CMD_READ, offset: SIZE - 512, length: 1024 }, errno: p.NBD_EINVAL },
      { name: "read at 2^62", req: { type: p.NBD_CMD_READ, offset: 2 ** 62, length: 512 }, errno: p.NBD_EINVAL },
      { name: "write past end", req: { type: p.NBD_CMD_WRITE, offset: SIZE, payload: Buffer.alloc(512, 1) }, errno: p.NBD_ENOSPC },
      { name: "trim past end", req: { type: p.NBD_CMD_TRIM, offset: SIZE, length: 512 }, errno: p.NBD_EINVAL },
      { name: "zeroes past end", req: { type: p.NBD_CMD_WRITE_ZEROES, offset: SIZE - 512, length: 4096 }, errno: p.NBD_ENOSPC },
      { name: "read over max payload", req: { type: p.NBD_CMD_READ, offset: 0, length: MAX_PAYLOAD * 2 }, errno: p.NBD_EINVAL },
      { name: "write over max payload", req: { type: p.NBD_CMD_WRITE, offset: 0, payload: Buffer.alloc(MAX_PAYLOAD * 2, 7) }, errno: p.NBD_EINVAL },
      { name: "unaligned read", req: { type: p.NBD_CMD_READ, offset: 100, length: 512 }, errno: p.NBD_EINVAL },
      { name: "unaligned write", req: { type: p.NBD_CMD_WRITE, offset: 0, payload: Buffer.alloc(100, 9) }, errno: p.NBD_EINVAL },
      { name: "unknown command", req: { type: 42, offset: 0, length: 0 }, errno: p.NBD_EINVAL },
      { name: "BLOCK_STATUS", req: { type: p.NBD_CMD_BLOCK_STATUS, offset: 0, length: 512 }, errno: p.NBD_EINVAL },
      { name: "DF flag on read", req: { type: p.NBD_CMD_READ, offset: 0, length: 512, flags: p.NBD_CMD_FLAG_DF }, errno: p.NBD_EINVAL },
      { name: "flush with offset", req: { type: p.NBD_CMD_FLUSH, offset: 512, length: 0 }, errno: p.NBD_EINVAL },
    ];
    for (const k of cases) {
      const r = await c.request(k.req);
      expect({ name: k.name, errno: r.errno }).toEqual({ name: k.name, errno: k.errno });
      expect(r.data).toBeUndefined();
      if (sr) expect(r.message).toBeTruthy();
      await expectGoodRead(c);
    }
    // Nothing of the refused writes reached the file.
    expect((await c.read(0, 4096)).equals(seed.subarray(0, 4096))).toBe(true);
    expect((await c.read(SIZE - 4096, 4096)).equals(seed.subarray(SIZE - 4096))).toBe(true);
    await c.disconnect();
  });

  it("errors: write, trim and zeroes on a read-only export get EPERM and the connection stays", async () => {
    const c = await connect("ro", sr);
    expect(c.readOnly).toBe(true);
    for (const req of [
      { type: p.NBD_CMD_WRITE, offset: 0, payload: Buffer.alloc(4096, 1) },
      { type: p.NBD_CMD_TRIM, offset: 0, length: 4096 },
      { type: p.NBD_CMD_WRITE_ZEROES, offset: 0, length: 4096 },
    ]) {
      expect((await c.request(req)).errno).toBe(p.NBD_EPERM);
      expect((await c.read(0, 4096)).equals(seed.subarray(0, 4096))).toBe(true);
    }
    await c.flush();
    await c.disconnect();
  });

  it("pipelining: 64 writes then 64 reads in flight at once, all answered correctly", async () => {
    const c = await connect("disk", sr);
    // Non-overlapping extents of 1..4 blocks, 64 KiB apart.
    const spaced = Array.from({ length: 64 }, (_, i) => ({ offset: i * 16 * 4096, data: randomBytes(4096 * (1 + (i % 4))) }));
    await Promise.all(spaced.map((b, i) => c.write(b.offset, b.data, { fua: i % 8 === 0 })));
    const back = await Promise.all(spaced.map((b) => c.read(b.offset, b.data.length)));
    back.forEach((d, i) => expect(d.equals(spaced[i].data)).toBe(true));
    await c.writeZeroes(0, 8192, { noHole: true, fua: true });
    await c.trim(SIZE - 4096, 4096);
    await c.flush();
    expect((await c.read(0, 8192)).equals(Buffer.alloc(8192))).toBe(true);
    await c.disconnect();
    // Restore the seed so other tests see it.
    const w = await connect("disk");
    for (let off = 0; off < SIZE; off += MAX_PAYLOAD) await w.write(off, seed.subarray(off, off + MAX_PAYLOAD));
    await w.disconnect();
  });
});

describe("nbd: a client's half-close", () => {
  // The fuzzer's find: the server closed on the client's FIN (Node's default,
  // allowHalfOpen false) and the replies to requests sent before it were lost.
  it("half-close: requests sent before the client's FIN are all answered, then the server closes", async () => {
    const c = await connect("disk");
    const offsets = Array.from({ length: 10 }, (_, i) => i * 4096);
    const reads = offsets.map((off) => c.read(off, 4096));
    c.socket.end();
    const back = await Promise.all(reads);
    back.forEach((d, i) => expect(d.equals(seed.subarray(offsets[i], offsets[i] + 4096)), `read at ${offsets[i]}`).toBe(true));
    expect(await closedBy(c.socket)).toBe(true);
  });
});

describe("nbd: backpressure", () => {
  it("backpressure: a client that does not read its replies stops being read from (2000 x 64 KiB reads)", async () => {
    const e = fx.exports.get("disk");
    if (!e) throw new Error("no disk export");
    let reads = 0;
    const realRead = e.read.bind(e);
    e.read = (o, l) => {
      reads++;
      return realRead(o, l);
    };
    try {
      const s = await NbdOptionSession.open(fx.host, fx.port);
      await s.info("disk", p.NBD_OPT_GO);
      const count = 2000;
      const headers = Array.from({ length: count }, (_, i) =>
        p.encodeRequestHeader({ flags: 0, type: p.NBD_CMD_READ, cookie: BigInt(i), offset: (i % 64) * MAX_PAYLOAD, length: MAX_PAYLOAD }),
      );
      s.socket.write(Buffer.concat(headers));
      await new Promise((r) => setTimeout(r, 1000));
      // 125 MiB of replies are due; the server holds at most IN_FLIGHT_BYTES_MAX (64 MiB) plus what the kernel buffers.
      expect(reads).toBeLessThan(count);
      expect(reads).toBeGreaterThan(0);
      // Now read every reply: the server resumes and answers them all.
      await s.reader.skip(count * (p.SIMPLE_REPLY_HEADER_BYTES + MAX_PAYLOAD));
      expect(reads).toBe(count);
      s.socket.destroy();
    } finally {
      e.read = realRead;
    }
  });
});

describe("nbd: malformed input closes only its own connection", () => {
  it("handshake: garbage instead of client flags closes that connection; another keeps working", async () => {
    const good = await connect("disk");
    const s = net.connect({ host: fx.host, port: fx.port });
    s.on("error", () => {});
    s.write(Buffer.from("GET / HTTP/1.1\r\nHost: x\r\n\r\n"));
    expect(await closedBy(s)).toBe(true);
    await expectGoodRead(good);
    await good.disconnect();
  });

  it("handshake: option with bad magic closes; oversized option length closes", async () => {
    const good = await connect("disk");
    for (const bytes of [Buffer.alloc(16, 0x55), p.encodeOption(p.NBD_OPT_GO).subarray(0, 16).fill(0xff, 12, 16)]) {
      const s = await NbdOptionSession.open(fx.host, fx.port);
      s.socket.write(bytes);
      expect(await closedBy(s.socket)).toBe(true);
    }
    await expectGoodRead(good);
    expect(fx.logs.some((l) => l.level === 40 && /protocol violation/.test(l.msg))).toBe(true);
    await good.disconnect();
  });

  it("handshake: client without fixed newstyle is refused", async () => {
    const s = net.connect({ host: fx.host, port: fx.port });
    s.on("error", () => {});
    s.write(p.encodeClientFlags(0));
    expect(await closedBy(s)).toBe(true);
  });

  it("transmission: request with bad magic closes that connection; another keeps working", async () => {
    const good = await connect("disk", true);
    const bad = await connect("disk");
    const pending = bad.request({ type: p.NBD_CMD_READ, offset: 0, length: 512, magic: 0xdeadbeef });
    await expect(pending).rejects.toThrow();
    await bad.closed;
    await expectGoodRead(good);
    await good.disconnect();
  });

  it("transmission: WRITE over the hard cap closes the connection", async () => {
    const bad = await connect("disk");
    bad.sendRaw(p.encodeRequestHeader({ flags: 0, type: p.NBD_CMD_WRITE, cookie: 1n, offset: 0, length: 0xffffffff }));
    await bad.closed;
  });

  it("options: LIST, INFO with name and description, unknown export, empty name without default", async () => {
    const s = await NbdOptionSession.open(fx.host, fx.port);
    expect(await s.list()).toEqual([
      { name: "disk", description: "raw test disk" },
      { name: "ro", description: "" },
    ]);
    const info = await s.info("disk");
    expect(info).toEqual({
      sizeBytes: SIZE,
      transmissionFlags: 0x16d,
      blockSize: { minimum: 512, preferred: 4096, maximum: MAX_PAYLOAD },
      name: "disk",
      description: "raw test disk",
    });
    await expect(s.info("nope")).rejects.toThrow(NbdOptionError);
    await expect(s.info("")).rejects.toThrow(/none is configured/);
    const [unsup] = await s.option(p.NBD_OPT_SET_META_CONTEXT, Buffer.alloc(8));
    expect(unsup.replyType).toBe(p.NBD_REP_ERR_UNSUP);
    const c = await s.go("disk", false);
    await expectGoodRead(c);
    await c.disconnect();
  });

  it("options: ABORT gets an ACK and a clean close", async () => {
    const s = await NbdOptionSession.open(fx.host, fx.port);
    const [ack] = await s.option(p.NBD_OPT_ABORT);
    expect(ack.replyType).toBe(p.NBD_REP_ACK);
    expect(await closedBy(s.socket)).toBe(true);
  });

  it("server: close() waits for connections and leaves none", async () => {
    const f2 = await startNbdFixture([{ name: "x", sizeBytes: 1 << 20 }]);
    const c = await NbdClient.connect({ host: f2.host, port: f2.port, exportName: "x" });
    const idle = await NbdOptionSession.open(f2.host, f2.port);
    expect(f2.server.connectionCount()).toBe(2);
    await c.write(0, Buffer.alloc(4096, 3));
    await f2.stop();
    expect(f2.server.connectionCount()).toBe(0);
    await c.closed;
    await closedBy(idle.socket);
  });
});

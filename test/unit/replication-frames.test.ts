// The replication frame codec: every frame type round-trips, every corrupted
// byte is caught, and a hostile byte stream is refused at the right offset
// without the decoder holding more than the bytes it was given.
import { describe, expect, it } from "vitest";
import { crc32c } from "@node-rs/crc32";
import {
  decodeFrame,
  encodedFrameBytes,
  encodeFrame,
  FRAME_HEADER_BYTES,
  FRAME_PAYLOAD_MAX,
  FRAME_TYPES,
  FRAME_VERSION,
  FrameDecoder,
  FrameError,
  type Frame,
  type FrameType,
  type RcrRecord,
  type ReceivedWireErrorCode,
  WIRE_ERROR,
} from "../../appliance/replication/frames.ts";
import { prng } from "../../appliance/drill/prng.ts";


function randInt(rand: () => number, max: number): number {
  return Math.floor(rand() * (max + 1));
}

function randBytes(rand: () => number, n: number): Buffer {
  const b = Buffer.alloc(n);
  for (let i = 0; i < n; i++) b[i] = randInt(rand, 255);
  return b;
}

function randU64(rand: () => number): bigint {
  return (BigInt(randInt(rand, 0xffffffff)) << 32n) | BigInt(randInt(rand, 0xffffffff));
}

const NAME_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789._-éü日本";
function randName(rand: () => number, maxChars: number): string {
  let s = "";
  const n = randInt(rand, maxChars);
  for (let i = 0; i < n; i++) s += NAME_CHARS[randInt(rand, NAME_CHARS.length - 1)];
  return s;
}

function randRecord(rand: () => number): RcrRecord {
  const base = {
    primaryId: randInt(rand, 0xffff),
    seq: randInt(rand, Number.MAX_SAFE_INTEGER),
    ts: randU64(rand),
    volume: randName(rand, 40),
    offset: randInt(rand, Number.MAX_SAFE_INTEGER),
  };
  if (rand() < 0.3) return { ...base, op: "zero", length: randInt(rand, 0xffffffff) };
  const length = randInt(rand, 3000);
  return { ...base, op: "write", length, data: randBytes(rand, length) };
}

function randFrame(rand: () => number): Frame {
  const types = Object.keys(FRAME_TYPES) as FrameType[];
  const type = types[randInt(rand, types.length - 1)];
  switch (type) {
    case "hello":
      return { type, role: rand() < 0.5 ? "link" : "control", nodeId: randInt(rand, 0xffff), nonce: randBytes(rand, 32) };
    case "challenge":
      return { type, nodeId: randInt(rand, 0xffff), nonce: randBytes(rand, 32), mac: randBytes(rand, 32) };
    case "auth":
      return { type, mac: randBytes(rand, 32) };
    case "ready":
    case "heartbeat":
      return { type };
    case "error":
      return { type, code: randInt(rand, 0xffff) as ReceivedWireErrorCode, group: rand() < 0.3 ? "" : randName(rand, 60), message: randName(rand, 200) };
    case "rcr": {
      const records: RcrRecord[] = [];
      const n = randInt(rand, 6);
      for (let i = 0; i < n; i++) records.push(randRecord(rand));
      return { type, generation: randInt(rand, 0xffffffff), group: randName(rand, 60), records };
    }
    case "sync":
    case "copied":
      return { type, generation: randInt(rand, 0xffffffff), group: randName(rand, 60), primaryId: randInt(rand, 0xffff), t: randU64(rand) };
    case "ack":
      return { type, seq: randInt(rand, Number.MAX_SAFE_INTEGER) };
    case "request":
      return { type, id: randInt(rand, 0xffffffff), body: { op: randName(rand, 10), n: randInt(rand, 1000), list: [randName(rand, 5), null, true] } };
    case "response":
      return { type, id: randInt(rand, 0xffffffff), ok: rand() < 0.5, body: rand() < 0.5 ? null : { message: randName(rand, 30) } };
    case "event":
      return { type, seq: randInt(rand, Number.MAX_SAFE_INTEGER), timeMs: randInt(rand, Number.MAX_SAFE_INTEGER), body: { source: "ss3", kind: randName(rand, 10), action: "change", state: randName(rand, 12), n: null } };
  }
}

/** Builds a frame with a correct CRC around an arbitrary payload, to reach the payload checks. */
function rawFrame(type: number, payload: Buffer, generation = 0): Buffer {
  const buf = Buffer.alloc(FRAME_HEADER_BYTES + payload.length);
  buf.writeUInt32BE(0x544d524b, 0);
  buf.writeUInt8(FRAME_VERSION, 4);
  buf.writeUInt8(type, 5);
  buf.writeUInt32BE(generation, 8);
  buf.writeUInt32BE(payload.length, 12);
  payload.copy(buf, FRAME_HEADER_BYTES);
  buf.writeUInt32BE(crc32c(payload, crc32c(buf.subarray(0, 16))), 16);
  return buf;
}

/** Buffers as hex so that comparing a MiB of data is one string compare, not a million element compares. */
function canon(value: unknown): unknown {
  if (Buffer.isBuffer(value)) return `hex:${value.toString("hex")}`;
  if (Array.isArray(value)) return value.map(canon);
  if (value !== null && typeof value === "object") {
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, canon(v)]));
  }
  return value;
}

function decodeAll(chunks: Buffer[]): Frame[] {
  const d = new FrameDecoder();
  const out: Frame[] = [];
  for (const c of chunks) out.push(...d.push(c));
  expect(d.bufferedBytes).toBe(0);
  return out;
}

function catchFrameError(fn: () => unknown): FrameError {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(FrameError);
    return err as FrameError;
  }
  throw new Error("expected a FrameError, nothing was thrown");
}

const MIB = 1024 * 1024;
const oneMiB = randBytes(prng(7), MIB);

const everyType: Frame[] = [
  { type: "hello", role: "link", nodeId: 3, nonce: Buffer.alloc(32, 1) },
  { type: "hello", role: "control", nodeId: 0, nonce: Buffer.alloc(32, 2) },
  { type: "challenge", nodeId: 65535, nonce: Buffer.alloc(32, 3), mac: Buffer.alloc(32, 4) },
  { type: "auth", mac: Buffer.alloc(32, 5) },
  { type: "ready" },
  { type: "error", code: 2, group: "", message: "expected auth, got rcr — ünïcödé" },
  {
    type: "rcr",
    generation: 7,
    group: "cg-1",
    records: [
      { primaryId: 1, seq: 1, ts: 2n ** 64n - 1n, volume: "sec-a", op: "write", offset: 0, length: 4, data: Buffer.from([1, 2, 3, 4]) },
      { primaryId: 1, seq: 2, ts: 2n ** 64n - 2n, volume: "sec-b", op: "zero", offset: 4096 * 1000, length: 1 << 20 },
      { primaryId: 2, seq: Number.MAX_SAFE_INTEGER, ts: 1n, volume: "sec-c", op: "write", offset: Number.MAX_SAFE_INTEGER, length: MIB, data: oneMiB },
      { primaryId: 2, seq: 9, ts: 0n, volume: "", op: "write", offset: 0, length: 0, data: Buffer.alloc(0) },
    ],
  },
  { type: "rcr", generation: 0, group: "empty", records: [] },
  { type: "sync", generation: 0xffffffff, group: "cg-1", primaryId: 4, t: 2n ** 64n - 1n },
  { type: "ack", seq: Number.MAX_SAFE_INTEGER },
  { type: "request", id: 1, body: { cmd: "status", groups: ["cg-1"] } },
  { type: "response", id: 1, ok: false, body: { error: "no such group" } },
  { type: "response", id: 0xffffffff, ok: true, body: null },
  { type: "heartbeat" },
  { type: "error", code: WIRE_ERROR.generation, group: "cg-1 — ünï", message: "" },
  // A code this build does not know decodes as it came; the longest group and message fit.
  { type: "error", code: 0xffff as ReceivedWireErrorCode, group: "g".repeat(255), message: "m".repeat(4096) },
];

describe("frames: round trip", () => {
  it.each(everyType.map((f) => [f.type, f] as const))("frames: %s round-trips", (_t, frame) => {
    const bytes = encodeFrame(frame);
    expect(bytes.length).toBe(encodedFrameBytes(frame));
    expect(canon(decodeAll([bytes]))).toEqual(canon([frame]));
    expect(canon(decodeFrame(bytes))).toEqual(canon(frame));
  });

  it("frames: rcr data aliases the pushed chunk (no copy)", () => {
    const bytes = encodeFrame(everyType[6]);
    const [frame] = new FrameDecoder().push(bytes);
    if (frame.type !== "rcr") throw new Error("not rcr");
    const data = frame.records[2].data as Buffer;
    expect(data.buffer).toBe(bytes.buffer);
    expect(data.equals(oneMiB)).toBe(true);
  });

  it("frames: header layout matches docs/wire.md", () => {
    const bytes = encodeFrame({ type: "sync", generation: 0x01020304, group: "g", primaryId: 0x0506, t: 0x0708n });
    expect(bytes.readUInt32BE(0)).toBe(0x544d524b);
    expect(bytes.subarray(0, 4).toString("latin1")).toBe("TMRK");
    expect(bytes[4]).toBe(2);
    expect(bytes[4]).toBe(FRAME_VERSION);
    expect(bytes[5]).toBe(7);
    expect(bytes.readUInt16BE(6)).toBe(0);
    expect(bytes.readUInt32BE(8)).toBe(0x01020304);
    expect(bytes.readUInt32BE(12)).toBe(2 + 2 + 8);
    expect(bytes.readUInt32BE(16)).toBe(crc32c(bytes.subarray(20), crc32c(bytes.subarray(0, 16))));
    expect(bytes.subarray(20).toString("hex")).toBe("0167" + "0506" + "0000000000000708");
  });

  it("frames: error payload layout matches docs/wire.md (code, g, group, n, message)", () => {
    const bytes = encodeFrame({ type: "error", code: WIRE_ERROR.generation, group: "C1", message: "stale" });
    expect(bytes[5]).toBe(5);
    expect(bytes.readUInt32BE(8)).toBe(0);
    expect(bytes.readUInt32BE(12)).toBe(5 + 2 + 5);
    expect(bytes.subarray(20).toString("hex")).toBe("0005" + "02" + "4331" + "0005" + Buffer.from("stale").toString("hex"));
    // "Not about one group" is a zero length, not an absent field.
    const none = encodeFrame({ type: "error", code: WIRE_ERROR.auth, group: "", message: "" });
    expect(none.subarray(20).toString("hex")).toBe("0001" + "00" + "0000");
  });
});

describe("frames: corruption", () => {
  const victims: Frame[] = [
    { type: "hello", role: "link", nodeId: 3, nonce: Buffer.alloc(32, 9) },
    { type: "ready" },
    { type: "ack", seq: 12345 },
    {
      type: "rcr",
      generation: 2,
      group: "cg",
      records: [
        { primaryId: 1, seq: 5, ts: 99n, volume: "v", op: "write", offset: 4096, length: 300, data: randBytes(prng(3), 300) },
        { primaryId: 1, seq: 6, ts: 100n, volume: "v", op: "zero", offset: 8192, length: 4096 },
      ],
    },
    { type: "sync", generation: 2, group: "cg", primaryId: 1, t: 100n },
  ];
  // Enough trailing bytes to complete any frame whose length field the flip made larger.
  const filler = Buffer.alloc(FRAME_PAYLOAD_MAX + FRAME_HEADER_BYTES);
  const headerCodes = ["TM_FRAME_MAGIC", "TM_FRAME_VERSION", "TM_FRAME_TYPE", "TM_FRAME_FLAGS", "TM_FRAME_GENERATION", "TM_FRAME_LENGTH"];

  it.each(victims.map((f) => [f.type, f] as const))("frames: every flipped byte of a %s frame is refused", (_t, frame) => {
    const good = encodeFrame(frame);
    const rand = prng(good.length);
    for (let i = 0; i < good.length; i++) {
      for (const mask of [0xff, 1 << randInt(rand, 7)]) {
        const bad = Buffer.from(good);
        bad[i] ^= mask;
        const d = new FrameDecoder();
        const err = catchFrameError(() => {
          const frames = d.push(bad);
          expect(frames).toEqual([]);
          d.push(filler);
        });
        if (i >= 16) expect(err.code).toBe("TM_FRAME_CRC");
        else expect([...headerCodes, "TM_FRAME_CRC"]).toContain(err.code);
        expect(err.streamOffset).toBeLessThanOrEqual(16);
      }
    }
  });

  it("frames: a fault in the second frame names its stream offset", () => {
    const a = encodeFrame({ type: "heartbeat" });
    const b = encodeFrame({ type: "ack", seq: 1 });
    b[0] = 0x41;
    const err = catchFrameError(() => new FrameDecoder().push(Buffer.concat([a, b])));
    expect(err.code).toBe("TM_FRAME_MAGIC");
    expect(err.streamOffset).toBe(a.length);
    expect(err.message).toContain(`stream offset ${a.length}`);
  });

  it("frames: a failed decoder stays failed", () => {
    const d = new FrameDecoder();
    const first = catchFrameError(() => d.push(Buffer.from("GET / HTTP/1.1\r\n")));
    expect(first.code).toBe("TM_FRAME_MAGIC");
    expect(first.streamOffset).toBe(0);
    expect(catchFrameError(() => d.push(encodeFrame({ type: "heartbeat" })))).toBe(first);
  });

  it("frames: header checks name the field and offset", () => {
    const base = encodeFrame({ type: "ack", seq: 1 });
    const cases: [number, number, string][] = [
      // A version 1 peer (error frames without a group) is refused on its first frame.
      [4, 1, "TM_FRAME_VERSION"],
      [4, 3, "TM_FRAME_VERSION"],
      [5, 0, "TM_FRAME_TYPE"],
      [5, 14, "TM_FRAME_TYPE"],
      [7, 1, "TM_FRAME_FLAGS"],
      [11, 1, "TM_FRAME_GENERATION"],
    ];
    for (const [at, value, code] of cases) {
      const bad = Buffer.from(base);
      bad[at] = value;
      const err = catchFrameError(() => new FrameDecoder().push(bad));
      expect(err.code).toBe(code);
    }
  });
});

describe("frames: streaming", () => {
  it("frames: a truncated frame yields nothing until its last byte", () => {
    const bytes = encodeFrame(everyType[6]);
    for (const cut of [1, 4, 19, 20, 21, 100, bytes.length - 1]) {
      const d = new FrameDecoder();
      expect(d.push(bytes.subarray(0, cut))).toEqual([]);
      expect(d.bufferedBytes).toBe(cut);
      expect(canon(d.push(bytes.subarray(cut)))).toEqual(canon([everyType[6]]));
      expect(d.bufferedBytes).toBe(0);
    }
  });

  it("frames: a declared length over the max is refused on its last header byte", () => {
    const header = Buffer.alloc(FRAME_HEADER_BYTES);
    header.writeUInt32BE(0x544d524b, 0);
    header[4] = FRAME_VERSION;
    header[5] = FRAME_TYPES.rcr;
    header.writeUInt32BE(FRAME_PAYLOAD_MAX + 1, 12);
    const d = new FrameDecoder();
    for (let i = 0; i < 15; i++) expect(d.push(header.subarray(i, i + 1))).toEqual([]);
    const err = catchFrameError(() => d.push(header.subarray(15, 16)));
    expect(err.code).toBe("TM_FRAME_LENGTH");
    expect(err.streamOffset).toBe(12);
    expect(err.message).toContain(String(FRAME_PAYLOAD_MAX + 1));
    // The largest length the format can declare is refused the same way.
    header.writeUInt32BE(0xffffffff, 12);
    expect(catchFrameError(() => new FrameDecoder().push(header)).code).toBe("TM_FRAME_LENGTH");
    // A smaller bound (the handshake's) applies the same way.
    header.writeUInt32BE(5000, 12);
    expect(catchFrameError(() => new FrameDecoder({ payloadMax: 4096 }).push(header)).code).toBe("TM_FRAME_LENGTH");
  });

  it("frames: byte-by-byte delivery of several frames", () => {
    const frames: Frame[] = [
      { type: "hello", role: "link", nodeId: 1, nonce: Buffer.alloc(32, 7) },
      { type: "rcr", generation: 1, group: "g", records: [{ primaryId: 1, seq: 1, ts: 5n, volume: "v", op: "write", offset: 0, length: 65536, data: randBytes(prng(11), 65536) }] },
      { type: "heartbeat" },
      { type: "ack", seq: 1 },
    ];
    const bytes = Buffer.concat(frames.map(encodeFrame));
    const chunks: Buffer[] = [];
    for (let i = 0; i < bytes.length; i++) chunks.push(bytes.subarray(i, i + 1));
    expect(canon(decodeAll(chunks))).toEqual(canon(frames));
  });

  it("frames: a thousand frames in one chunk", () => {
    const rand = prng(42);
    const frames: Frame[] = [];
    for (let i = 0; i < 1000; i++) frames.push(i % 2 ? { type: "ack", seq: i } : randFrame(rand));
    const out = new FrameDecoder().push(Buffer.concat(frames.map(encodeFrame)));
    expect(canon(out)).toEqual(canon(frames));
  });

  it("frames: random frames in random chunks round-trip (seeds 1..20)", () => {
    for (let seed = 1; seed <= 20; seed++) {
      const rand = prng(seed);
      const frames: Frame[] = [];
      for (let i = 0; i < 100; i++) frames.push(randFrame(rand));
      const bytes = Buffer.concat(frames.map(encodeFrame));
      const chunks: Buffer[] = [];
      for (let at = 0; at < bytes.length; ) {
        const n = 1 + randInt(rand, rand() < 0.5 ? 30 : 5000);
        chunks.push(bytes.subarray(at, at + n));
        at += n;
      }
      expect(canon(decodeAll(chunks)), `seed ${seed}`).toEqual(canon(frames));
    }
  });
});

describe("frames: payload checks", () => {
  const u64 = (hi: number, lo: number): Buffer => {
    const b = Buffer.alloc(8);
    b.writeUInt32BE(hi, 0);
    b.writeUInt32BE(lo, 4);
    return b;
  };
  const record = (op: number, length: number, volume = Buffer.from([1, 0x76])): Buffer =>
    Buffer.concat([Buffer.from([0, 1]), u64(0, 1), u64(0, 2), volume, Buffer.from([op]), u64(0, 0), u64(0, length).subarray(4)]);
  const rcr = (count: number, ...records: Buffer[]): Buffer => Buffer.concat([Buffer.from([1, 0x67]), u64(0, count).subarray(4), ...records]);

  const cases: [string, Buffer, number][] = [
    ["trailing bytes after ack", rawFrame(8, Buffer.concat([u64(0, 1), Buffer.from([0])])), 20 + 8],
    ["truncated ack", rawFrame(8, Buffer.alloc(7)), 20],
    ["seq above MAX_SAFE_INTEGER", rawFrame(8, u64(0x200000, 0)), 20],
    ["group not UTF-8", rawFrame(7, Buffer.concat([Buffer.from([2, 0xc3, 0x28]), Buffer.alloc(10)]), 1), 21],
    ["record count larger than the bytes", rawFrame(6, rcr(1000, record(2, 0)), 1), 22],
    ["record count smaller than the records", rawFrame(6, rcr(1, record(2, 0), record(2, 0)), 1), 22 + 4 + 33],
    ["write data shorter than its length", rawFrame(6, rcr(1, record(1, 10), Buffer.alloc(5)), 1), 22 + 4 + 33],
    ["unknown op", rawFrame(6, rcr(1, record(3, 0)), 1), 22 + 4 + 20],
    ["unknown role", rawFrame(1, Buffer.concat([Buffer.from([3, 0, 1]), Buffer.alloc(32)])), 20],
    ["ok neither 0 nor 1", rawFrame(10, Buffer.concat([u64(0, 1).subarray(4), Buffer.from([2]), u64(0, 2).subarray(4), Buffer.from("{}")])), 24],
    ["body not JSON", rawFrame(9, Buffer.concat([u64(0, 1).subarray(4), u64(0, 3).subarray(4), Buffer.from("{x}")])), 24],
    ["error message over 4096 bytes", rawFrame(5, Buffer.concat([Buffer.from([0, 1, 0, 0x10, 0x01]), Buffer.alloc(4097, 0x61)])), 23],
    ["error group not UTF-8", rawFrame(5, Buffer.concat([Buffer.from([0, 5, 2, 0xc3, 0x28, 0, 0])])), 23],
    ["error group a lone continuation byte", rawFrame(5, Buffer.concat([Buffer.from([0, 5, 1, 0x80, 0, 0])])), 23],
    ["error group longer than the payload", rawFrame(5, Buffer.concat([Buffer.from([0, 5, 200]), Buffer.from("C1"), Buffer.from([0, 0])])), 23],
    // Why the version was bumped: a version 1 error payload read as version 2 takes its length's high byte for g.
    ["error frame in the version 1 layout (no group)", rawFrame(5, Buffer.concat([Buffer.from([0, 5, 0, 2]), Buffer.from("hi")])), 25],
    ["error frame cut inside its code", rawFrame(5, Buffer.from([0])), 20],
  ];
  it.each(cases)("frames: refuses %s", (_name, bytes, offset) => {
    const err = catchFrameError(() => new FrameDecoder().push(bytes));
    expect(err.code).toBe("TM_FRAME_PAYLOAD");
    expect(err.streamOffset).toBe(offset);
    expect(err.message).toContain(`stream offset ${offset}`);
  });
});

describe("frames: encoding refusals", () => {
  const write = (over: Partial<RcrRecord>): Frame => ({
    type: "rcr",
    generation: 1,
    group: "g",
    records: [{ primaryId: 1, seq: 1, ts: 1n, volume: "v", op: "write", offset: 0, length: 2, data: Buffer.alloc(2), ...over }],
  });
  it.each([
    ["a group name over 255 bytes", { type: "sync", generation: 1, group: "é".repeat(128), primaryId: 1, t: 1n } as Frame],
    ["an error frame's group over 255 bytes", { type: "error", code: WIRE_ERROR.noGroup, group: "g".repeat(256), message: "" } as Frame],
    ["an error frame's code over u16", { type: "error", code: 0x10000 as ReceivedWireErrorCode, group: "", message: "" } as Frame],
    ["data shorter than length", write({ length: 3 })],
    ["a zero record with data", write({ op: "zero" })],
    ["seq above MAX_SAFE_INTEGER", write({ seq: 2 ** 53 })],
    ["ts above 2^64-1", write({ ts: 2n ** 64n })],
    ["a negative offset", write({ offset: -1 })],
    ["a mac of 31 bytes", { type: "auth", mac: Buffer.alloc(31) } as Frame],
    ["a body JSON cannot carry", { type: "request", id: 1, body: undefined } as Frame],
    ["a payload over the max", write({ length: FRAME_PAYLOAD_MAX, data: Buffer.alloc(FRAME_PAYLOAD_MAX) })],
  ])("frames: encode refuses %s", (_name, frame) => {
    expect(catchFrameError(() => encodeFrame(frame)).code).toBe("TM_FRAME_ENCODE");
  });

  it("frames: decodeFrame wants exactly one frame", () => {
    const one = encodeFrame({ type: "heartbeat" });
    expect(() => decodeFrame(one.subarray(0, 10))).toThrow(FrameError);
    expect(() => decodeFrame(Buffer.concat([one, one]))).toThrow(FrameError);
  });
});

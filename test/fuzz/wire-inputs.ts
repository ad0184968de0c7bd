// Structure-aware inputs for a subsystem's replication port, which also serves
// the CLI's and the RCM's control connections (docs/wire.md): strangers'
// bytes, frames before the handshake, the handshake with a wrong proof, and
// with the right key a link or control connection followed by frames of every
// type, well formed or broken in one field (magic, version, type, flags,
// generation, length, CRC, payload). Pure: bytes are a function of the seed.
//
// What an authenticated peer may legitimately do is not fuzzed into the data:
// a link never claims the node id of a real primary (its well-formed RCRs
// would be applied: it holds the key), and control requests that change state
// name a group that does not exist or carry a field the subsystem must refuse.
import { crc32c } from "@node-rs/crc32";
import { Draw, u16be, u32be, u64be } from "./draw.ts";
import type { FuzzInput, Step } from "./input.ts";

export interface WireTarget {
  subsystem: number;
  /** Node ids of the cluster's primaries: an authenticated fuzz link never takes one. */
  primaryIds: number[];
  groups: string[];
  /** Volume names with their sizes, for RCR records. */
  volumes: { name: string; sizeBytes: number }[];
}

const MAGIC = Buffer.from("TMRK", "ascii");
const VERSION = 2;
const TYPE = { hello: 1, challenge: 2, auth: 3, ready: 4, error: 5, rcr: 6, sync: 7, ack: 8, request: 9, response: 10, heartbeat: 11, copied: 12 } as const;
type TypeName = keyof typeof TYPE;
const GROUP_TYPES = new Set<TypeName>(["rcr", "sync", "copied"]);
/** Bytes sent at most per input. */
const SEND_BYTES_MAX = 1024 * 1024;

/** A frame, usually right, sometimes broken in exactly one header field or its CRC. */
function frame(d: Draw, type: TypeName | number, payload: Buffer, generation = 0): Buffer {
  const typeNo = typeof type === "number" ? type : TYPE[type];
  const h = Buffer.alloc(16);
  MAGIC.copy(h, 0);
  h[4] = VERSION;
  h[5] = typeNo;
  h.writeUInt32BE(generation >>> 0, 8);
  h.writeUInt32BE(payload.length, 12);
  const fault = d.weighted<string>([
    [30, "none"],
    [1, "magic"],
    [1, "version"],
    [1, "flags"],
    [1, "generation"],
    [1, "length-short"],
    [1, "length-long"],
    [1, "length-huge"],
    [1, "crc"],
  ]);
  if (fault === "magic") h[d.int(3)] ^= 1 + d.int(254);
  if (fault === "version") h[4] = d.pick([0, 1, 3, 255]);
  if (fault === "flags") h.writeUInt16BE(1 + d.int(0xfffe), 6);
  if (fault === "generation") h.writeUInt32BE(1 + d.int(0xfffffffe), 8);
  if (fault === "length-short") h.writeUInt32BE(d.int(Math.max(0, payload.length - 1)), 12);
  if (fault === "length-long") h.writeUInt32BE(payload.length + 1 + d.int(64), 12);
  if (fault === "length-huge") h.writeUInt32BE(d.pick([8193, 16 * 1024 * 1024 + 4097, 0xffffffff, d.u32()]), 12);
  let crc = crc32c(Buffer.concat([h, payload])) >>> 0;
  if (fault === "crc") crc = (crc ^ (1 << d.int(31))) >>> 0;
  return Buffer.concat([h, u32be(crc), payload]);
}

function string8(d: Draw, s: string): Buffer {
  const b = Buffer.from(s, "utf8").subarray(0, 255);
  const n = d.chance(0.95) ? b.length : d.int(255);
  return Buffer.concat([Buffer.of(n), b]);
}

function groupName(d: Draw, t: WireTarget): string {
  return d.weighted<() => string>([
    [6, () => d.pick(t.groups)],
    [2, () => `fz-nogroup-${d.int(3)}`],
    [1, () => ""],
    [1, () => "\u00e9\ufeff".repeat(1 + d.int(60))],
  ])();
}

function invalidUtf8(d: Draw): Buffer {
  return Buffer.concat([d.bytes(d.int(4)), Buffer.from([0xc3, 0x28, 0xff])]);
}

/** An RCR payload within `budget.left` bytes (the caller charges it). */
function rcrPayload(d: Draw, t: WireTarget, nodeId: number, outer: { left: number }): Buffer {
  const budget = { left: outer.left };
  const group = d.chance(0.05) ? Buffer.concat([Buffer.of(4), invalidUtf8(d).subarray(0, 4)]) : string8(d, groupName(d, t));
  const records: Buffer[] = [];
  const n = d.weighted<number>([
    [5, 1 + d.int(3)],
    [1, 0],
    [1, 20 + d.int(100)],
  ]);
  for (let i = 0; i < n && budget.left > 64; i++) {
    const vol = d.pick(t.volumes);
    const op = d.weighted<number>([
      [6, 1],
      [3, 2],
      [1, d.pick([0, 3, 255])],
    ]);
    const offset = d.weighted<() => bigint>([
      [6, () => BigInt(d.int(vol.sizeBytes / 512 - 1) * 512)],
      [1, () => BigInt(d.int(vol.sizeBytes))],
      [1, () => BigInt(vol.sizeBytes)],
      [1, () => 2n ** 53n + BigInt(d.int(10))],
      [1, () => d.u64()],
    ])();
    const length = d.weighted<() => number>([
      [6, () => 512 * (1 + d.int(16))],
      [1, () => 0],
      [1, () => 1 + d.int(511)],
      [1, () => 0xffffffff],
    ])();
    const dataBytes = op === 1 ? Math.min(d.chance(0.9) ? length : d.int(length), budget.left - 64) : 0;
    const seq = d.weighted<() => bigint>([
      [6, () => BigInt(1 + d.int(1_000_000))],
      [1, () => 0n],
      [1, () => 2n ** 53n],
      [1, () => d.u64()],
    ])();
    const primaryId = d.chance(0.7) ? nodeId : d.chance(0.5) ? d.pick(t.primaryIds) : d.u16();
    const volumeName = d.chance(0.9) ? vol.name : d.pick(["", "no-such-volume", "x".repeat(255)]);
    const rec = Buffer.concat([u16be(primaryId), u64be(seq), u64be(d.u64()), string8(d, volumeName), Buffer.of(op), u64be(offset), u32be(length), d.fill(Math.max(0, dataBytes))]);
    budget.left -= rec.length;
    records.push(rec);
  }
  const count = d.chance(0.9) ? records.length : d.pick([records.length + 1, 0xffffffff, d.u32()]);
  return Buffer.concat([group, u32be(count), ...records]);
}

function syncPayload(d: Draw, t: WireTarget, nodeId: number): Buffer {
  return Buffer.concat([string8(d, groupName(d, t)), u16be(d.chance(0.7) ? nodeId : d.u16()), u64be(d.chance(0.5) ? d.u64() : BigInt(d.int(1_000_000)))]);
}

function json(s: string): Buffer {
  return Buffer.from(s, "utf8");
}

/** A control request body. Any op that changes state names a group that does not exist, or a field the subsystem refuses. */
function controlBody(d: Draw, t: WireTarget): Buffer {
  const fake = `fz-nogroup-${d.int(3)}`;
  const real = d.pick(t.groups);
  const mutating = ["fence", "apply-ts", "takeover", "primary-suspend", "primary-takeover", "resync-begin", "primary-freeze", "lease-acquire", "lease-release", "primary-resync", "turn"];
  return d.weighted<() => Buffer>([
    [4, () => json(JSON.stringify({ op: "status" }))],
    [2, () => json(JSON.stringify({ op: "stamp" }))],
    [2, () => json(JSON.stringify({ op: "primary-preview", group: d.chance(0.5) ? real : fake }))],
    [2, () => json(JSON.stringify({ op: "preview", group: real, ts: d.pick(["x", "-1", "1e99", "", "18446744073709551617"]) }))],
    [4, () => json(JSON.stringify({ op: d.pick(mutating), group: fake, generation: d.pick([0, 1, -1, 1e300, "x", null]), ts: d.pick(["1", "x", null]), lease: d.pick([undefined, null, 5, {}, { holder: 1 }]) }))],
    [1, () => json(JSON.stringify({ op: "turn", group: real, direction: d.pick(["sideways", 1, null]), ts: "1", generation: 1 }))],
    [1, () => json(JSON.stringify({ op: "primary-resync", group: real, generation: 1, blocks: d.pick([5, [1], { p1: [[1]] }, { p1: "x" }]) }))],
    [1, () => json(JSON.stringify({ op: "lease-release", group: real, token: d.pick([1, null, {}]) }))],
    [2, () => json(JSON.stringify({ op: d.pick(["", "STATUS", "__proto__", "constructor", "x".repeat(1000)]) }))],
    [2, () => json(d.pick(["null", "1", '"status"', "[]", "{}", '{"op":null}', '{"op":{"op":"status"}}', '{"__proto__":{"op":"status"}}']))],
    [1, () => json("[".repeat(1000 + d.int(200_000)) + "]".repeat(0))], // deep nesting, unterminated
    [1, () => {
      const n = 1000 + d.int(100_000);
      return json("[".repeat(n) + "]".repeat(n));
    }],
    [1, () => json(`{"op":"status","pad":"${"a".repeat(d.int(500_000))}"}`)],
    [1, () => Buffer.concat([json('{"op":"'), invalidUtf8(d), json('"}')])],
    [1, () => d.bytes(d.int(64))],
  ])();
}

/** One frame of a drawn type with a structure-aware payload; group frames carry a drawn generation. */
function drawFrame(d: Draw, t: WireTarget, nodeId: number, budget: { left: number }, phase: "pre" | "control" | "link"): Buffer {
  const type = d.weighted<TypeName | number>([
    [phase === "pre" ? 6 : 1, "hello"],
    [1, "challenge"],
    [phase === "pre" ? 4 : 1, "auth"],
    [1, "ready"],
    [2, "error"],
    [phase === "link" ? 8 : 2, "rcr"],
    [phase === "link" ? 4 : 1, "sync"],
    [phase === "link" ? 2 : 1, "copied"],
    [2, "ack"],
    [phase === "control" ? 12 : 2, "request"],
    [1, "response"],
    [2, "heartbeat"],
    [1, d.pick([0, 13, 14, 127, 255])],
  ]);
  const generation = typeof type === "string" && GROUP_TYPES.has(type) ? d.pick([0, 1, 1, 2, d.u32()]) : 0;
  let payload: Buffer;
  switch (type) {
    case "hello":
      payload = Buffer.concat([Buffer.of(d.pick([1, 2, 0, 3, 255])), u16be(d.pick([0, nodeId, d.u16()])), d.bytes(d.chance(0.9) ? 32 : d.int(40))]);
      break;
    case "challenge":
      payload = d.bytes(d.chance(0.9) ? 66 : d.int(80));
      break;
    case "auth":
      payload = d.bytes(d.chance(0.9) ? 32 : d.int(40));
      break;
    case "ready":
    case "heartbeat":
      payload = d.chance(0.9) ? Buffer.alloc(0) : d.bytes(1 + d.int(8));
      break;
    case "error": {
      const msg = d.chance(0.9) ? Buffer.from("fuzz ".repeat(d.int(20)), "utf8") : d.chance(0.5) ? Buffer.alloc(4097, 0x61) : invalidUtf8(d);
      payload = Buffer.concat([u16be(d.u16()), string8(d, groupName(d, t)), u16be(d.chance(0.9) ? msg.length : d.u16()), msg]);
      break;
    }
    case "rcr":
      payload = rcrPayload(d, t, nodeId, budget);
      break;
    case "sync":
    case "copied":
      payload = syncPayload(d, t, nodeId);
      break;
    case "ack":
      payload = d.chance(0.9) ? u64be(d.chance(0.5) ? BigInt(d.int(1000)) : d.u64()) : d.bytes(d.int(12));
      break;
    case "request": {
      const body = controlBody(d, t);
      payload = Buffer.concat([u32be(d.u32()), u32be(d.chance(0.95) ? body.length : d.u32()), body]);
      break;
    }
    case "response": {
      const body = json('{"ok":true}');
      payload = Buffer.concat([u32be(d.u32()), Buffer.of(d.pick([0, 1, 2])), u32be(body.length), body]);
      break;
    }
    default:
      payload = d.bytes(d.int(64));
  }
  // The input's byte budget holds: a payload past it is cut, which the receiver must refuse as malformed.
  if (payload.length > budget.left) payload = payload.subarray(0, Math.max(0, budget.left));
  budget.left -= payload.length + 20;
  return frame(d, type, payload, generation);
}

function stranger(d: Draw): Buffer {
  return d.weighted<() => Buffer>([
    [3, () => d.bytes(1 + d.int(300))],
    [1, () => Buffer.from("GET / HTTP/1.1\r\nHost: x\r\n\r\n", "ascii")],
    [1, () => Buffer.from("160301", "hex")], // a TLS ClientHello's first bytes
    [1, () => Buffer.from("NBDMAGICIHAVEOPT", "ascii")],
    [2, () => Buffer.concat([MAGIC.subarray(0, 1 + d.int(3)), d.bytes(d.int(30))])],
  ])();
}

export function wireInput(seed: number, d: Draw, t: WireTarget): FuzzInput {
  const mode = d.weighted<"stranger" | "pre" | "wrong-key" | "control" | "link">([
    [2, "stranger"],
    [3, "pre"],
    [2, "wrong-key"],
    [3, "control"],
    [3, "link"],
  ]);
  const budget = { left: SEND_BYTES_MAX };
  const steps: Step[] = [];
  let label: string = mode;
  if (mode === "stranger") steps.push({ kind: "send", bytes: stranger(d) });
  else if (mode === "pre") {
    const n = 1 + d.int(4);
    steps.push({ kind: "send", bytes: Buffer.concat(Array.from({ length: n }, () => drawFrame(d, t, d.u16(), budget, "pre"))) });
    label = `pre-handshake: ${n} frames`;
  } else {
    const role = mode === "control" ? "control" : mode === "link" ? "link" : d.pick(["link", "control"] as const);
    let nodeId = 0;
    if (role === "link") do nodeId = 1 + d.int(0xfffe); while (t.primaryIds.includes(nodeId));
    const clientNonce = d.bytes(32);
    const hello = Buffer.concat([Buffer.of(role === "link" ? 1 : 2), u16be(nodeId), clientNonce]);
    // The hello is sent right, so the proof step is reached; faults come after.
    const h = Buffer.alloc(16);
    MAGIC.copy(h, 0);
    h[4] = VERSION;
    h[5] = TYPE.hello;
    h.writeUInt32BE(hello.length, 12);
    steps.push({ kind: "send", bytes: Buffer.concat([h, u32be(crc32c(Buffer.concat([h, hello])) >>> 0), hello]) });
    const proof = mode === "wrong-key" ? d.pick(["wrong-key", "random"] as const) : "valid";
    steps.push({ kind: "auth", proof, role, nodeId, clientNonce });
    const n = d.weighted<number>([
      [5, 1 + d.int(3)],
      [2, 4 + d.int(20)],
      [1, 100 + d.int(200)], // a pipelined flood
    ]);
    const phase = mode === "wrong-key" ? "pre" : role;
    const frames: Buffer[] = [];
    for (let i = 0; i < n && budget.left > 64; i++) frames.push(drawFrame(d, t, nodeId, budget, phase));
    steps.push({ kind: "send", bytes: Buffer.concat(frames) });
    label = `${mode}: hello ${role} #${nodeId}, ${proof} proof, ${frames.length} frames`;
  }
  const total = steps.reduce((s, x) => s + (x.kind === "send" ? x.bytes.length : 0), 0);
  const cutAt = d.chance(0.25) ? d.int(Math.max(0, total - 1)) : null;
  return { seed, subsystem: t.subsystem, port: "replication", label, steps, cutAt, ending: d.chance(0.6) ? "end" : "reset" };
}

// The replication wire codec (docs/wire.md byte for byte). Pure: no sockets, timers or randomness.
// Invariants: a frame is accepted only whole and with a matching CRC32C, and a declared
// length is checked against its bound before any byte of the payload is kept.
import { isUtf8 } from "node:buffer";
import { crc32c } from "../runtime/lazy-native.ts";
import type { ErrorCodeOf } from "../errors/codes.ts";

/** "TMRK": lets a receiver refuse a stranger (an HTTP client, a port scan) on its first byte. */
export const FRAME_MAGIC = 0x544d524b;
/**
 * Bumped whenever a frame's layout or a code's meaning changes, so that peers
 * of two builds refuse each other on the first frame (TM_FRAME_VERSION) rather
 * than misread a payload. 2: the error frame carries a group, and refusals use
 * WIRE_ERROR codes 5-9 (docs/wire.md, Versions).
 */
export const FRAME_VERSION = 2;
export const FRAME_HEADER_BYTES = 20;
/** One RCR frame carries up to 16 MiB of data plus room for its records' headers. */
export const FRAME_PAYLOAD_MAX = 16 * 1024 * 1024 + 4096;
export const NONCE_BYTES = 32;
export const MAC_BYTES = 32;
/** u8-prefixed strings: group and volume names (the error frame's group too). */
export const STRING8_BYTES_MAX = 255;
/** The message of an `error` frame (u16-prefixed). */
export const ERROR_MESSAGE_BYTES_MAX = 4096;
/** Fixed bytes of one RCR record with an empty volume name and no data: a floor used to bound the record count. */
export const RCR_RECORD_FIXED_BYTES = 2 + 8 + 8 + 1 + 1 + 8 + 4;

const U16_MAX = 0xffff;
const U32_MAX = 0xffffffff;
const U64_MAX = (1n << 64n) - 1n;
const TWO_POW_32 = 0x1_0000_0000;

/** Type numbers on the wire; the name is the `type` field of the decoded frame. */
export const FRAME_TYPES = {
  hello: 1,
  challenge: 2,
  auth: 3,
  ready: 4,
  error: 5,
  rcr: 6,
  sync: 7,
  ack: 8,
  request: 9,
  response: 10,
  heartbeat: 11,
  copied: 12,
  /** tidemark events (docs/events.md): one state change, pushed to a subscribed control connection. */
  event: 13,
} as const;

export type FrameType = keyof typeof FRAME_TYPES;

const TYPE_BY_NUMBER: ReadonlyMap<number, FrameType> = new Map(
  (Object.entries(FRAME_TYPES) as [FrameType, number][]).map(([name, n]) => [n, name]),
);

/** Frames that belong to a consistency group carry its generation in the header; all others carry 0. */
const GROUP_FRAME_TYPES: ReadonlySet<FrameType> = new Set(["rcr", "sync", "copied"]);

export type LinkRole = "link" | "control";
const ROLE_CODES: Record<LinkRole, number> = { link: 1, control: 2 };

export function roleCode(role: LinkRole): number {
  return ROLE_CODES[role];
}

export type RcrOp = "write" | "zero" | "verify";
const OP_WRITE = 1;
const OP_ZERO = 2;
/** A verify record (docs/verify.md): no write, the primary's block hashes at its stamp. */
const OP_VERIFY = 3;
/** A verify record covers whole 4 KiB blocks; its data is a u64 run stamp and 16 bytes of hash per block. */
export const VERIFY_BLOCK_BYTES = 4096;
export const VERIFY_HASH_BYTES = 16;
export const VERIFY_HEADER_BYTES = 8;

/**
 * Bytes of payload a stored record of op code `op` (the journal's and the
 * RCR queue's `op` column, the same codes as the wire) keeps for a range of
 * `length` bytes: a write its data, a verify its hashes.
 */
export function storedPayloadBytes(op: number, length: number): number {
  return op === OP_VERIFY ? verifyDataBytes(length) : length;
}

/** The data length a verify record of `length` bytes carries. */
export function verifyDataBytes(length: number): number {
  return VERIFY_HEADER_BYTES + (length / VERIFY_BLOCK_BYTES) * VERIFY_HASH_BYTES;
}

/**
 * One remote copy request. `data` is present exactly when op is "write", and
 * then `data.length === length`, or "verify", and then `data.length ===
 * verifyDataBytes(length)` (length a whole number of 4 KiB blocks). A decoded record's data ALIASES the bytes
 * given to FrameDecoder.push (no copy): copy it before keeping it past the
 * buffer's life, and never modify a chunk after pushing it.
 */
export interface RcrRecord {
  primaryId: number;
  seq: number;
  ts: bigint;
  /** The secondary volume's name. */
  volume: string;
  op: RcrOp;
  offset: number;
  length: number;
  data?: Buffer;
}

export interface HelloFrame {
  type: "hello";
  role: LinkRole;
  /** 0 for a control client. */
  nodeId: number;
  nonce: Buffer;
}
export interface ChallengeFrame {
  type: "challenge";
  nodeId: number;
  nonce: Buffer;
  mac: Buffer;
}
export interface AuthFrame {
  type: "auth";
  mac: Buffer;
}
export interface ReadyFrame {
  type: "ready";
}
/** A refusal: the sender closes the connection after it. */
export interface ErrorFrame {
  type: "error";
  code: ReceivedWireErrorCode;
  /**
   * The consistency group the refusal is about, so the receiver need not read
   * it out of the message; "" when it is about no one group (a handshake, the
   * whole link).
   */
  group: string;
  message: string;
}
export interface RcrFrame {
  type: "rcr";
  generation: number;
  group: string;
  records: RcrRecord[];
}
export interface SyncFrame {
  /** copied: the same payload; T is C_k, the primary's copies are all acknowledged (docs/resync.md). */
  type: "sync" | "copied";
  generation: number;
  group: string;
  primaryId: number;
  t: bigint;
}
/** Cumulative: every RCR on this link with seq <= `seq` is durably queued by the secondary. */
export interface AckFrame {
  type: "ack";
  seq: number;
}
/** Control RPC; `body` is any JSON value (sent as its JSON text). */
export interface RequestFrame {
  type: "request";
  id: number;
  body: unknown;
}
export interface ResponseFrame {
  type: "response";
  id: number;
  ok: boolean;
  body: unknown;
}
export interface HeartbeatFrame {
  type: "heartbeat";
}
/** One event of the sender (docs/events.md): its per-source seq, its wall-clock ms, and the event's other fields as JSON. */
export interface EventFrame {
  type: "event";
  seq: number;
  timeMs: number;
  body: unknown;
}

export type Frame =
  | HelloFrame
  | ChallengeFrame
  | AuthFrame
  | ReadyFrame
  | ErrorFrame
  | RcrFrame
  | SyncFrame
  | AckFrame
  | RequestFrame
  | ResponseFrame
  | HeartbeatFrame
  | EventFrame;

/**
 * The one numbering of refusals: every `error` frame carries one of these
 * codes (the sender then closes the connection). docs/wire.md prints this
 * table, WIRE_ERROR_MEANINGS included, and test/unit/wire-docs.test.ts keeps
 * the two equal. A new code is appended, never renumbered: a peer of another
 * build reads the number.
 */
export const WIRE_ERROR = {
  auth: 1,
  protocol: 2,
  timeout: 3,
  role: 4,
  generation: 5,
  notReplicating: 6,
  noGroup: 7,
  notPrimary: 8,
  badFrame: 9,
} as const;

export type WireErrorName = keyof typeof WIRE_ERROR;
/** A code this build sends. */
export type WireErrorCode = (typeof WIRE_ERROR)[WireErrorName];
/**
 * A code as received: any u16, since a newer peer may send one this build does
 * not know. Branded so that a sender cannot put a bare number (an HTTP-like 409)
 * in a frame: codes it sends come from WIRE_ERROR.
 */
export type ReceivedWireErrorCode = WireErrorCode | (number & { readonly __receivedWireErrorCode: true });

/** What each code means; one table-safe line each (docs/wire.md prints them). */
export const WIRE_ERROR_MEANINGS: Readonly<Record<WireErrorName, string>> = {
  auth: "the peer's handshake proof is wrong: it does not hold the cluster key",
  protocol: "a frame not allowed in this state (e.g. an `rcr` before the handshake is complete)",
  timeout: "the handshake was not complete in time",
  role: "the hello's role and node id disagree, the server is not the node the client expected, or a primary linked to a subsystem that holds no secondary volume",
  generation: "a group frame carries another generation than the group has on the secondary: the group was fenced by a newer generation",
  notReplicating: "the group takes no frames on the secondary at this generation: it is suspended, or taken over",
  noGroup: "the secondary holds no volume of the named group",
  notPrimary: "the sender is not a primary of the named group on the secondary",
  badFrame: "a group frame the secondary cannot accept: a primary id other than the link's, a volume that is not the sender's in the group, a range not 512-aligned inside the volume",
};

const WIRE_ERROR_NAMES: ReadonlyMap<number, WireErrorName> = new Map(
  (Object.entries(WIRE_ERROR) as [WireErrorName, number][]).map(([name, code]) => [code, name]),
);

/** The name of a received code, or undefined for a code this build does not know (never throws: a peer may send anything). */
export function wireErrorName(code: number): WireErrorName | undefined {
  return WIRE_ERROR_NAMES.get(code);
}

/** For log lines and messages: "generation (5)", or "unknown code 77". */
export function describeWireError(code: number): string {
  const name = wireErrorName(code);
  return name === undefined ? `unknown code ${code}` : `${name} (${code})`;
}

/** The registry's TM_FRAME_* codes (appliance/errors/codes.ts). */
export type FrameErrorCode = ErrorCodeOf<"TM_FRAME_">;

/**
 * A frame that cannot be decoded (the connection that sent it must be dropped)
 * or a value that cannot be encoded (a caller bug). `streamOffset` is the byte
 * of the decoder's input stream where the fault lies; null for encoding.
 */
export class FrameError extends Error {
  readonly code: FrameErrorCode;
  readonly streamOffset: number | null;
  constructor(code: FrameErrorCode, message: string, streamOffset: number | null) {
    super(message);
    this.name = "FrameError";
    this.code = code;
    this.streamOffset = streamOffset;
  }
}

// ---------------------------------------------------------------- encoding

function encodeFault(message: string): FrameError {
  return new FrameError("TM_FRAME_ENCODE", `cannot encode frame: ${message}`, null);
}

function checkUint(name: string, value: number, max: number): void {
  if (!Number.isInteger(value) || value < 0 || value > max) {
    throw encodeFault(`${name} = ${value} is not an integer in 0..${max}`);
  }
}

function checkU64Number(name: string, value: number): void {
  checkUint(name, value, Number.MAX_SAFE_INTEGER);
}

function checkU64Bigint(name: string, value: bigint): void {
  if (typeof value !== "bigint" || value < 0n || value > U64_MAX) {
    throw encodeFault(`${name} = ${String(value)} is not a u64 bigint`);
  }
}

function checkBytes(name: string, value: Buffer, size: number): void {
  if (!Buffer.isBuffer(value) || value.length !== size) {
    throw encodeFault(`${name} must be a Buffer of ${size} bytes`);
  }
}

function string8Bytes(name: string, value: string): number {
  const n = Buffer.byteLength(value, "utf8");
  if (n > STRING8_BYTES_MAX) throw encodeFault(`${name} is ${n} bytes of UTF-8, more than ${STRING8_BYTES_MAX}`);
  return 1 + n;
}

function jsonText(body: unknown): string {
  let text: string | undefined;
  try {
    text = JSON.stringify(body);
  } catch (err) {
    throw encodeFault(`body is not serializable as JSON (${(err as Error).message})`);
  }
  if (text === undefined) throw encodeFault("body is not serializable as JSON");
  return text;
}

/** Encoded size of one RCR record (fixed fields, volume name, data); validates the record. */
export function rcrRecordBytes(record: RcrRecord): number {
  checkUint("record.primaryId", record.primaryId, U16_MAX);
  checkU64Number("record.seq", record.seq);
  checkU64Bigint("record.ts", record.ts);
  checkU64Number("record.offset", record.offset);
  checkUint("record.length", record.length, U32_MAX);
  const volumeBytes = string8Bytes("record.volume", record.volume) - 1;
  if (record.op === "write") {
    if (!Buffer.isBuffer(record.data) || record.data.length !== record.length) {
      throw encodeFault(`a write record's data must be a Buffer of length ${record.length}`);
    }
    return RCR_RECORD_FIXED_BYTES + volumeBytes + record.length;
  }
  if (record.op === "zero") {
    if (record.data !== undefined) throw encodeFault("a zero record carries no data");
    return RCR_RECORD_FIXED_BYTES + volumeBytes;
  }
  if (record.op === "verify") {
    if (record.length === 0 || record.length % VERIFY_BLOCK_BYTES !== 0) throw encodeFault(`a verify record's length ${record.length} is not a whole number of 4 KiB blocks`);
    if (!Buffer.isBuffer(record.data) || record.data.length !== verifyDataBytes(record.length)) {
      throw encodeFault(`a verify record's data must be a Buffer of length ${verifyDataBytes(record.length)}`);
    }
    return RCR_RECORD_FIXED_BYTES + volumeBytes + record.data.length;
  }
  throw encodeFault(`record.op = ${String(record.op)} is neither "write", "zero" nor "verify"`);
}

/**
 * Payload size of a frame, validating every field. Strings are measured once
 * here; request/response bodies are serialized here too, so the text is
 * returned for the writer rather than computed twice.
 */
function measure(frame: Frame): { payloadBytes: number; json?: string } {
  switch (frame.type) {
    case "hello":
      if (frame.role !== "link" && frame.role !== "control") throw encodeFault(`role = ${String(frame.role)}`);
      checkUint("nodeId", frame.nodeId, U16_MAX);
      checkBytes("nonce", frame.nonce, NONCE_BYTES);
      return { payloadBytes: 1 + 2 + NONCE_BYTES };
    case "challenge":
      checkUint("nodeId", frame.nodeId, U16_MAX);
      checkBytes("nonce", frame.nonce, NONCE_BYTES);
      checkBytes("mac", frame.mac, MAC_BYTES);
      return { payloadBytes: 2 + NONCE_BYTES + MAC_BYTES };
    case "auth":
      checkBytes("mac", frame.mac, MAC_BYTES);
      return { payloadBytes: MAC_BYTES };
    case "ready":
    case "heartbeat":
      return { payloadBytes: 0 };
    case "error": {
      checkUint("code", frame.code, U16_MAX);
      const n = Buffer.byteLength(frame.message, "utf8");
      if (n > ERROR_MESSAGE_BYTES_MAX) throw encodeFault(`error message is ${n} bytes, more than ${ERROR_MESSAGE_BYTES_MAX}`);
      return { payloadBytes: 2 + string8Bytes("group", frame.group) + 2 + n };
    }
    case "rcr": {
      checkUint("generation", frame.generation, U32_MAX);
      checkUint("record count", frame.records.length, U32_MAX);
      let n = string8Bytes("group", frame.group) + 4;
      for (const record of frame.records) n += rcrRecordBytes(record);
      return { payloadBytes: n };
    }
    case "sync":
    case "copied":
      checkUint("generation", frame.generation, U32_MAX);
      checkUint("primaryId", frame.primaryId, U16_MAX);
      checkU64Bigint("t", frame.t);
      return { payloadBytes: string8Bytes("group", frame.group) + 2 + 8 };
    case "ack":
      checkU64Number("seq", frame.seq);
      return { payloadBytes: 8 };
    case "request": {
      checkUint("id", frame.id, U32_MAX);
      const json = jsonText(frame.body);
      return { payloadBytes: 4 + 4 + Buffer.byteLength(json, "utf8"), json };
    }
    case "response": {
      checkUint("id", frame.id, U32_MAX);
      if (typeof frame.ok !== "boolean") throw encodeFault("ok must be a boolean");
      const json = jsonText(frame.body);
      return { payloadBytes: 4 + 1 + 4 + Buffer.byteLength(json, "utf8"), json };
    }
    case "event": {
      checkU64Number("seq", frame.seq);
      checkU64Number("timeMs", frame.timeMs);
      const json = jsonText(frame.body);
      return { payloadBytes: 8 + 8 + 4 + Buffer.byteLength(json, "utf8"), json };
    }
    default: {
      const never: never = frame;
      throw encodeFault(`unknown frame type ${String((never as { type: unknown }).type)}`);
    }
  }
}

/** Writes u64 from a safe integer without a bigint per call (RCR hot path). */
function writeU64Number(buf: Buffer, value: number, at: number): number {
  buf.writeUInt32BE(Math.floor(value / TWO_POW_32), at);
  buf.writeUInt32BE(value >>> 0, at + 4);
  return at + 8;
}

function writeString8(buf: Buffer, value: string, at: number): number {
  const n = buf.write(value, at + 1, "utf8");
  buf.writeUInt8(n, at);
  return at + 1 + n;
}

/** Size of the encoded frame (header included), validating the frame as encodeFrame would. */
export function encodedFrameBytes(frame: Frame): number {
  return FRAME_HEADER_BYTES + measure(frame).payloadBytes;
}

/**
 * Encodes one frame into a single fresh Buffer: sizes are computed first, then
 * every field (RCR data included) is written once in place, then the CRC.
 * Throws FrameError TM_FRAME_ENCODE for a value the format cannot carry.
 */
export function encodeFrame(frame: Frame): Buffer {
  const { payloadBytes, json } = measure(frame);
  if (payloadBytes > FRAME_PAYLOAD_MAX) {
    throw encodeFault(`payload is ${payloadBytes} bytes, more than FRAME_PAYLOAD_MAX (${FRAME_PAYLOAD_MAX})`);
  }
  const buf = Buffer.allocUnsafe(FRAME_HEADER_BYTES + payloadBytes);
  buf.writeUInt32BE(FRAME_MAGIC, 0);
  buf.writeUInt8(FRAME_VERSION, 4);
  buf.writeUInt8(FRAME_TYPES[frame.type], 5);
  buf.writeUInt16BE(0, 6);
  buf.writeUInt32BE(frame.type === "rcr" || frame.type === "sync" || frame.type === "copied" ? frame.generation : 0, 8);
  buf.writeUInt32BE(payloadBytes, 12);
  let at = FRAME_HEADER_BYTES;
  switch (frame.type) {
    case "hello":
      at = buf.writeUInt8(ROLE_CODES[frame.role], at);
      at = buf.writeUInt16BE(frame.nodeId, at);
      at += frame.nonce.copy(buf, at);
      break;
    case "challenge":
      at = buf.writeUInt16BE(frame.nodeId, at);
      at += frame.nonce.copy(buf, at);
      at += frame.mac.copy(buf, at);
      break;
    case "auth":
      at += frame.mac.copy(buf, at);
      break;
    case "ready":
    case "heartbeat":
      break;
    case "error": {
      at = buf.writeUInt16BE(frame.code, at);
      at = writeString8(buf, frame.group, at);
      const n = buf.write(frame.message, at + 2, "utf8");
      at = buf.writeUInt16BE(n, at);
      at += n;
      break;
    }
    case "rcr":
      at = writeString8(buf, frame.group, at);
      at = buf.writeUInt32BE(frame.records.length, at);
      for (const r of frame.records) {
        at = buf.writeUInt16BE(r.primaryId, at);
        at = writeU64Number(buf, r.seq, at);
        at = buf.writeBigUInt64BE(r.ts, at);
        at = writeString8(buf, r.volume, at);
        at = buf.writeUInt8(r.op === "write" ? OP_WRITE : r.op === "verify" ? OP_VERIFY : OP_ZERO, at);
        at = writeU64Number(buf, r.offset, at);
        at = buf.writeUInt32BE(r.length, at);
        if (r.op === "write" || r.op === "verify") at += (r.data as Buffer).copy(buf, at);
      }
      break;
    case "sync":
    case "copied":
      at = writeString8(buf, frame.group, at);
      at = buf.writeUInt16BE(frame.primaryId, at);
      at = buf.writeBigUInt64BE(frame.t, at);
      break;
    case "ack":
      at = writeU64Number(buf, frame.seq, at);
      break;
    case "request":
    case "response": {
      at = buf.writeUInt32BE(frame.id, at);
      if (frame.type === "response") at = buf.writeUInt8(frame.ok ? 1 : 0, at);
      const n = buf.write(json as string, at + 4, "utf8");
      at = buf.writeUInt32BE(n, at);
      at += n;
      break;
    }
    case "event": {
      at = writeU64Number(buf, frame.seq, at);
      at = writeU64Number(buf, frame.timeMs, at);
      const n = buf.write(json as string, at + 4, "utf8");
      at = buf.writeUInt32BE(n, at);
      at += n;
      break;
    }
  }
  // A mismatch here means measure() and the writer above disagree: a codec bug.
  if (at !== buf.length) throw new Error(`frames: encoder wrote ${at} bytes of ${buf.length} for ${frame.type}`);
  buf.writeUInt32BE(crc32c(buf.subarray(FRAME_HEADER_BYTES), crc32c(buf.subarray(0, 16))), 16);
  return buf;
}

// ---------------------------------------------------------------- decoding

/** Reads one payload; every fault names its byte offset in the decoder's stream. */
class PayloadReader {
  pos = 0;
  private readonly buf: Buffer;
  /** Stream offset of payload byte 0. */
  private readonly base: number;
  private readonly type: FrameType;

  constructor(buf: Buffer, base: number, type: FrameType) {
    this.buf = buf;
    this.base = base;
    this.type = type;
  }

  fail(message: string, at = this.pos): FrameError {
    return new FrameError(
      "TM_FRAME_PAYLOAD",
      `malformed ${this.type} payload at stream offset ${this.base + at}: ${message}`,
      this.base + at,
    );
  }

  need(n: number, what: string): void {
    if (this.buf.length - this.pos < n) {
      throw this.fail(`${what} needs ${n} bytes, ${this.buf.length - this.pos} left in the payload`);
    }
  }

  remaining(): number {
    return this.buf.length - this.pos;
  }

  u8(what: string): number {
    this.need(1, what);
    return this.buf.readUInt8(this.pos++);
  }

  u16(what: string): number {
    this.need(2, what);
    const v = this.buf.readUInt16BE(this.pos);
    this.pos += 2;
    return v;
  }

  u32(what: string): number {
    this.need(4, what);
    const v = this.buf.readUInt32BE(this.pos);
    this.pos += 4;
    return v;
  }

  u64Number(what: string): number {
    this.need(8, what);
    const hi = this.buf.readUInt32BE(this.pos);
    // 2^53 - 1 has 21 high bits set above bit 32.
    if (hi > 0x1fffff) throw this.fail(`${what} exceeds Number.MAX_SAFE_INTEGER`);
    const v = hi * TWO_POW_32 + this.buf.readUInt32BE(this.pos + 4);
    this.pos += 8;
    return v;
  }

  u64Bigint(what: string): bigint {
    this.need(8, what);
    const v = this.buf.readBigUInt64BE(this.pos);
    this.pos += 8;
    return v;
  }

  /** A view into the frame buffer, not a copy. */
  bytes(n: number, what: string): Buffer {
    this.need(n, what);
    const v = this.buf.subarray(this.pos, this.pos + n);
    this.pos += n;
    return v;
  }

  /** Copied: nonces and MACs are small and outlive the chunk in handshake state. */
  copy(n: number, what: string): Buffer {
    return Buffer.from(this.bytes(n, what));
  }

  utf8(n: number, what: string): string {
    const at = this.pos;
    const raw = this.bytes(n, what);
    if (!isUtf8(raw)) throw this.fail(`${what} is not valid UTF-8`, at);
    return raw.toString("utf8");
  }

  string8(what: string): string {
    return this.utf8(this.u8(`${what} length`), what);
  }

  json(what: string): unknown {
    const at = this.pos;
    const text = this.utf8(this.u32(`${what} length`), what);
    try {
      return JSON.parse(text);
    } catch {
      throw this.fail(`${what} is not valid JSON`, at);
    }
  }

  end(): void {
    if (this.pos !== this.buf.length) throw this.fail(`${this.buf.length - this.pos} trailing bytes after the last field`);
  }
}

function decodeRole(r: PayloadReader): LinkRole {
  const at = r.pos;
  const code = r.u8("role");
  if (code === ROLE_CODES.link) return "link";
  if (code === ROLE_CODES.control) return "control";
  throw r.fail(`role ${code} is neither 1 (link) nor 2 (control)`, at);
}

function decodeRecords(r: PayloadReader): RcrRecord[] {
  const countAt = r.pos;
  const count = r.u32("record count");
  // Bound the count by the bytes present before building anything for it.
  if (count * RCR_RECORD_FIXED_BYTES > r.remaining()) {
    throw r.fail(`record count ${count} cannot fit in the ${r.remaining()} bytes left`, countAt);
  }
  const records: RcrRecord[] = new Array(count);
  for (let i = 0; i < count; i++) {
    const primaryId = r.u16(`record ${i} primaryId`);
    const seq = r.u64Number(`record ${i} seq`);
    const ts = r.u64Bigint(`record ${i} ts`);
    const volume = r.string8(`record ${i} volume`);
    const opAt = r.pos;
    const opCode = r.u8(`record ${i} op`);
    const offset = r.u64Number(`record ${i} offset`);
    const length = r.u32(`record ${i} length`);
    if (opCode === OP_WRITE) {
      const data = r.bytes(length, `record ${i} data`);
      records[i] = { primaryId, seq, ts, volume, op: "write", offset, length, data };
    } else if (opCode === OP_ZERO) {
      records[i] = { primaryId, seq, ts, volume, op: "zero", offset, length };
    } else if (opCode === OP_VERIFY) {
      if (length === 0 || length % VERIFY_BLOCK_BYTES !== 0) throw r.fail(`record ${i}: verify length ${length} is not a whole number of 4 KiB blocks`, opAt);
      const data = r.bytes(verifyDataBytes(length), `record ${i} verify hashes`);
      records[i] = { primaryId, seq, ts, volume, op: "verify", offset, length, data };
    } else {
      throw r.fail(`record ${i} op ${opCode} is neither 1 (write), 2 (zero) nor 3 (verify)`, opAt);
    }
  }
  return records;
}

function decodePayload(type: FrameType, generation: number, r: PayloadReader): Frame {
  let frame: Frame;
  switch (type) {
    case "hello": {
      const role = decodeRole(r);
      frame = { type, role, nodeId: r.u16("nodeId"), nonce: r.copy(NONCE_BYTES, "nonce") };
      break;
    }
    case "challenge":
      frame = { type, nodeId: r.u16("nodeId"), nonce: r.copy(NONCE_BYTES, "nonce"), mac: r.copy(MAC_BYTES, "mac") };
      break;
    case "auth":
      frame = { type, mac: r.copy(MAC_BYTES, "mac") };
      break;
    case "ready":
    case "heartbeat":
      frame = { type };
      break;
    case "error": {
      // Any u16 is kept: a code this build does not know is for the receiver to report, not a malformed frame.
      const code = r.u16("code") as ReceivedWireErrorCode;
      const group = r.string8("group");
      const lengthAt = r.pos;
      const n = r.u16("message length");
      if (n > ERROR_MESSAGE_BYTES_MAX) throw r.fail(`message length ${n} exceeds ${ERROR_MESSAGE_BYTES_MAX}`, lengthAt);
      frame = { type, code, group, message: r.utf8(n, "message") };
      break;
    }
    case "rcr": {
      const group = r.string8("group");
      frame = { type, generation, group, records: decodeRecords(r) };
      break;
    }
    case "sync":
    case "copied": {
      const group = r.string8("group");
      frame = { type, generation, group, primaryId: r.u16("primaryId"), t: r.u64Bigint("t") };
      break;
    }
    case "ack":
      frame = { type, seq: r.u64Number("seq") };
      break;
    case "request": {
      const id = r.u32("id");
      frame = { type, id, body: r.json("body") };
      break;
    }
    case "response": {
      const id = r.u32("id");
      const okAt = r.pos;
      const okByte = r.u8("ok");
      if (okByte > 1) throw r.fail(`ok ${okByte} is neither 0 nor 1`, okAt);
      frame = { type, id, ok: okByte === 1, body: r.json("body") };
      break;
    }
    case "event": {
      const seq = r.u64Number("seq");
      frame = { type, seq, timeMs: r.u64Number("timeMs"), body: r.json("body") };
      break;
    }
  }
  r.end();
  return frame;
}

export interface FrameDecoderOptions {
  /** Largest payload accepted; at most FRAME_PAYLOAD_MAX. A handshake uses a small one. */
  payloadMax?: number;
}

/**
 * Streaming decoder for one connection. push() returns the frames completed by
 * the chunk (possibly none, possibly many) and throws FrameError on the first
 * violation; the decoder then stays failed (every later push throws the same
 * error) because the stream has no resynchronisation point: drop the connection.
 * It keeps references to pushed chunks until their frames are complete, so a
 * chunk must not be modified after it is pushed.
 */
export class FrameDecoder {
  readonly #header = Buffer.alloc(FRAME_HEADER_BYTES);
  #headerFill = 0;
  #type: FrameType = "heartbeat";
  #payloadBytes = 0;
  /** Pieces of the current payload (views of pushed chunks). */
  #parts: Buffer[] = [];
  #partsBytes = 0;
  /** Stream offset of the current frame's first byte. */
  #frameStart = 0;
  #payloadMax: number;
  #failed: FrameError | null = null;

  constructor(options: FrameDecoderOptions = {}) {
    this.#payloadMax = FrameDecoder.#checkMax(options.payloadMax ?? FRAME_PAYLOAD_MAX);
  }

  static #checkMax(max: number): number {
    if (!Number.isInteger(max) || max < 0 || max > FRAME_PAYLOAD_MAX) {
      throw new RangeError(`payloadMax ${max} must be an integer in 0..${FRAME_PAYLOAD_MAX}`);
    }
    return max;
  }

  /** Changes the bound for frames whose header is not yet complete (e.g. raised after a handshake). */
  setPayloadMax(max: number): void {
    this.#payloadMax = FrameDecoder.#checkMax(max);
  }

  /** Bytes consumed so far: the stream offset of the next byte pushed. */
  get streamOffset(): number {
    return this.#frameStart + this.#headerFill + this.#partsBytes;
  }

  /** Bytes of an incomplete frame held; nonzero at end of stream means the peer stopped mid-frame. */
  get bufferedBytes(): number {
    return this.#headerFill + this.#partsBytes;
  }

  push(chunk: Buffer): Frame[] {
    if (this.#failed) throw this.#failed;
    try {
      return this.#push(chunk);
    } catch (err) {
      if (err instanceof FrameError) this.#failed = err;
      throw err;
    }
  }

  #push(chunk: Buffer): Frame[] {
    const frames: Frame[] = [];
    let p = 0;
    while (p < chunk.length) {
      if (this.#headerFill < FRAME_HEADER_BYTES) {
        const n = Math.min(FRAME_HEADER_BYTES - this.#headerFill, chunk.length - p);
        const from = this.#headerFill;
        chunk.copy(this.#header, from, p, p + n);
        this.#headerFill += n;
        p += n;
        // Check each field as soon as its bytes are in, so garbage is refused
        // on its first wrong byte rather than after a full header.
        this.#checkHeader(from, this.#headerFill);
        if (this.#headerFill < FRAME_HEADER_BYTES) break;
      }
      const want = this.#payloadBytes - this.#partsBytes;
      const take = Math.min(want, chunk.length - p);
      if (take > 0) {
        this.#parts.push(chunk.subarray(p, p + take));
        this.#partsBytes += take;
        p += take;
      }
      if (this.#partsBytes < this.#payloadBytes) break;
      frames.push(this.#finishFrame());
    }
    return frames;
  }

  #fail(code: FrameErrorCode, at: number, message: string): FrameError {
    const offset = this.#frameStart + at;
    return new FrameError(code, `${message} at stream offset ${offset}`, offset);
  }

  /** Validates header fields whose last byte lies in [from, to). */
  #checkHeader(from: number, to: number): void {
    const h = this.#header;
    for (let i = from; i < Math.min(to, 4); i++) {
      const expected = (FRAME_MAGIC >>> (24 - 8 * i)) & 0xff;
      if (h[i] !== expected) {
        throw this.#fail(
          "TM_FRAME_MAGIC",
          i,
          `bad magic byte 0x${h[i].toString(16).padStart(2, "0")} (expected 0x${expected.toString(16)}, frames start with "TMRK")`,
        );
      }
    }
    if (from <= 4 && to > 4 && h[4] !== FRAME_VERSION) {
      throw this.#fail("TM_FRAME_VERSION", 4, `unsupported version ${h[4]} (this build speaks ${FRAME_VERSION})`);
    }
    if (from <= 5 && to > 5) {
      const type = TYPE_BY_NUMBER.get(h[5]);
      if (type === undefined) throw this.#fail("TM_FRAME_TYPE", 5, `unknown frame type ${h[5]}`);
      this.#type = type;
    }
    if (from <= 7 && to > 7) {
      const flags = h.readUInt16BE(6);
      if (flags !== 0) throw this.#fail("TM_FRAME_FLAGS", 6, `flags 0x${flags.toString(16)} set (none are defined)`);
    }
    if (from <= 11 && to > 11) {
      const generation = h.readUInt32BE(8);
      if (generation !== 0 && !GROUP_FRAME_TYPES.has(this.#type)) {
        throw this.#fail("TM_FRAME_GENERATION", 8, `generation ${generation} on a ${this.#type} frame, which carries 0`);
      }
    }
    if (from <= 15 && to > 15) {
      const length = h.readUInt32BE(12);
      if (length > this.#payloadMax) {
        throw this.#fail("TM_FRAME_LENGTH", 12, `declared payload length ${length} exceeds the limit ${this.#payloadMax}`);
      }
      this.#payloadBytes = length;
    }
  }

  #finishFrame(): Frame {
    // One piece (the common case): a view, no copy. Several: one copy of exactly the payload.
    const payload =
      this.#parts.length === 1
        ? this.#parts[0]
        : this.#parts.length === 0
          ? Buffer.alloc(0)
          : Buffer.concat(this.#parts, this.#payloadBytes);
    const expected = this.#header.readUInt32BE(16);
    const actual = crc32c(payload, crc32c(this.#header.subarray(0, 16)));
    if (actual !== expected) {
      throw this.#fail(
        "TM_FRAME_CRC",
        16,
        `CRC32C mismatch on a ${this.#type} frame of ${this.#payloadBytes} payload bytes (header says 0x${expected.toString(16)}, computed 0x${actual.toString(16)})`,
      );
    }
    const reader = new PayloadReader(payload, this.#frameStart + FRAME_HEADER_BYTES, this.#type);
    const frame = decodePayload(this.#type, this.#header.readUInt32BE(8), reader);
    this.#frameStart += FRAME_HEADER_BYTES + this.#payloadBytes;
    this.#headerFill = 0;
    this.#payloadBytes = 0;
    this.#parts = [];
    this.#partsBytes = 0;
    return frame;
  }
}

/**
 * Decodes a buffer that holds exactly one frame (e.g. a stored RCR frame).
 * Throws FrameError if it is malformed, incomplete or followed by more bytes.
 */
export function decodeFrame(buf: Buffer): Frame {
  const decoder = new FrameDecoder();
  const frames = decoder.push(buf);
  if (frames.length !== 1 || decoder.bufferedBytes !== 0) {
    const code = frames.length === 0 ? "TM_FRAME_LENGTH" : "TM_FRAME_PAYLOAD";
    throw new FrameError(code, `expected exactly one frame in ${buf.length} bytes, found ${frames.length} and ${decoder.bufferedBytes} bytes more`, buf.length);
  }
  return frames[0];
}

// NBD wire codec: every constant and every message layout the server and the
// test client use, as pure functions over Buffers (no sockets, no timers).
// Decoders never throw on bad input: they return { ok: false, reason } so the
// connection that sent the bytes can be closed and nothing else is touched.
// The byte tables in docs/nbd.md describe exactly these layouts.
import { hasCode, type ErrorCode } from "../errors/codes.ts";

// ---- magics -------------------------------------------------------------
export const NBD_MAGIC = 0x4e42444d41474943n; // "NBDMAGIC"
export const NBD_IHAVEOPT = 0x49484156454f5054n; // "IHAVEOPT"
export const NBD_OPTION_REPLY_MAGIC = 0x3e889045565a9n;
export const NBD_REQUEST_MAGIC = 0x25609513;
export const NBD_SIMPLE_REPLY_MAGIC = 0x67446698;
export const NBD_STRUCTURED_REPLY_MAGIC = 0x668e33ef;

// ---- handshake flags (server, 16 bits) and client flags (32 bits) -------
export const NBD_FLAG_FIXED_NEWSTYLE = 1 << 0;
export const NBD_FLAG_NO_ZEROES = 1 << 1;
export const NBD_FLAG_C_FIXED_NEWSTYLE = 1 << 0;
export const NBD_FLAG_C_NO_ZEROES = 1 << 1;

// ---- transmission flags (16 bits) ---------------------------------------
export const NBD_FLAG_HAS_FLAGS = 1 << 0;
export const NBD_FLAG_READ_ONLY = 1 << 1;
export const NBD_FLAG_SEND_FLUSH = 1 << 2;
export const NBD_FLAG_SEND_FUA = 1 << 3;
export const NBD_FLAG_ROTATIONAL = 1 << 4;
export const NBD_FLAG_SEND_TRIM = 1 << 5;
export const NBD_FLAG_SEND_WRITE_ZEROES = 1 << 6;
export const NBD_FLAG_SEND_DF = 1 << 7;
export const NBD_FLAG_CAN_MULTI_CONN = 1 << 8;
export const NBD_FLAG_SEND_RESIZE = 1 << 9;
export const NBD_FLAG_SEND_CACHE = 1 << 10;
export const NBD_FLAG_SEND_FAST_ZERO = 1 << 11;

// ---- option types --------------------------------------------------------
export const NBD_OPT_EXPORT_NAME = 1;
export const NBD_OPT_ABORT = 2;
export const NBD_OPT_LIST = 3;
export const NBD_OPT_PEEK_EXPORT = 4;
export const NBD_OPT_STARTTLS = 5;
export const NBD_OPT_INFO = 6;
export const NBD_OPT_GO = 7;
export const NBD_OPT_STRUCTURED_REPLY = 8;
export const NBD_OPT_LIST_META_CONTEXT = 9;
export const NBD_OPT_SET_META_CONTEXT = 10;
export const NBD_OPT_EXTENDED_HEADERS = 11;

// ---- option reply types --------------------------------------------------
export const NBD_REP_ACK = 1;
export const NBD_REP_SERVER = 2;
export const NBD_REP_INFO = 3;
export const NBD_REP_META_CONTEXT = 4;
const NBD_REP_ERR = 0x80000000;
export const NBD_REP_ERR_UNSUP = NBD_REP_ERR + 1;
export const NBD_REP_ERR_POLICY = NBD_REP_ERR + 2;
export const NBD_REP_ERR_INVALID = NBD_REP_ERR + 3;
export const NBD_REP_ERR_PLATFORM = NBD_REP_ERR + 4;
export const NBD_REP_ERR_TLS_REQD = NBD_REP_ERR + 5;
export const NBD_REP_ERR_UNKNOWN = NBD_REP_ERR + 6;
export const NBD_REP_ERR_SHUTDOWN = NBD_REP_ERR + 7;
export const NBD_REP_ERR_BLOCK_SIZE_REQD = NBD_REP_ERR + 8;
export const NBD_REP_ERR_TOO_BIG = NBD_REP_ERR + 9;

export function isOptionReplyError(replyType: number): boolean {
  return replyType >= NBD_REP_ERR;
}

// ---- NBD_REP_INFO information types -------------------------------------
export const NBD_INFO_EXPORT = 0;
export const NBD_INFO_NAME = 1;
export const NBD_INFO_DESCRIPTION = 2;
export const NBD_INFO_BLOCK_SIZE = 3;

// ---- commands and command flags ------------------------------------------
export const NBD_CMD_READ = 0;
export const NBD_CMD_WRITE = 1;
export const NBD_CMD_DISC = 2;
export const NBD_CMD_FLUSH = 3;
export const NBD_CMD_TRIM = 4;
export const NBD_CMD_CACHE = 5;
export const NBD_CMD_WRITE_ZEROES = 6;
export const NBD_CMD_BLOCK_STATUS = 7;

export const NBD_CMD_FLAG_FUA = 1 << 0;
export const NBD_CMD_FLAG_NO_HOLE = 1 << 1;
export const NBD_CMD_FLAG_DF = 1 << 2;
export const NBD_CMD_FLAG_REQ_ONE = 1 << 3;
export const NBD_CMD_FLAG_FAST_ZERO = 1 << 4;

// ---- structured replies ---------------------------------------------------
export const NBD_REPLY_FLAG_DONE = 1 << 0;
export const NBD_REPLY_TYPE_NONE = 0;
export const NBD_REPLY_TYPE_OFFSET_DATA = 1;
export const NBD_REPLY_TYPE_OFFSET_HOLE = 2;
export const NBD_REPLY_TYPE_BLOCK_STATUS = 5;
export const NBD_REPLY_TYPE_ERROR = (1 << 15) + 1;
export const NBD_REPLY_TYPE_ERROR_OFFSET = (1 << 15) + 2;

export function isStructuredErrorType(type: number): boolean {
  return (type & (1 << 15)) !== 0;
}

// ---- NBD error numbers (not the host's errno: the protocol fixes them) ----
export const NBD_EPERM = 1;
export const NBD_EIO = 5;
export const NBD_ENOMEM = 12;
export const NBD_EINVAL = 22;
export const NBD_ENOSPC = 28;
export const NBD_EOVERFLOW = 75;
export const NBD_ENOTSUP = 95;
export const NBD_ESHUTDOWN = 108;

const ERRNO_NAMES: Record<number, string> = {
  [NBD_EPERM]: "EPERM",
  [NBD_EIO]: "EIO",
  [NBD_ENOMEM]: "ENOMEM",
  [NBD_EINVAL]: "EINVAL",
  [NBD_ENOSPC]: "ENOSPC",
  [NBD_EOVERFLOW]: "EOVERFLOW",
  [NBD_ENOTSUP]: "ENOTSUP",
  [NBD_ESHUTDOWN]: "ESHUTDOWN",
};

export function nbdErrnoName(errno: number): string {
  return ERRNO_NAMES[errno] ?? `NBD_ERRNO_${errno}`;
}

/** An error an export (or the server) raises with an explicit NBD error number. */
export class NbdError extends Error {
  readonly code = "TM_NBD_ERROR" satisfies ErrorCode;
  constructor(
    readonly nbdErrno: number,
    message: string,
  ) {
    super(message);
    this.name = "NbdError";
  }
}

// Host errno codes (err.code strings from node:fs and friends) to NBD numbers,
// after nbdkit's nbd_errno. Quota and file-size limits are "no space" to a host.
const CODE_TO_NBD: Record<string, number> = {
  EPERM: NBD_EPERM,
  EROFS: NBD_EPERM,
  EACCES: NBD_EPERM,
  EIO: NBD_EIO,
  ENOMEM: NBD_ENOMEM,
  EINVAL: NBD_EINVAL,
  ENOSPC: NBD_ENOSPC,
  EDQUOT: NBD_ENOSPC,
  EFBIG: NBD_ENOSPC,
  EOVERFLOW: NBD_EOVERFLOW,
  ENOTSUP: NBD_ENOTSUP,
  EOPNOTSUPP: NBD_ENOTSUP,
  ESHUTDOWN: NBD_ESHUTDOWN,
};

/**
 * Maps anything an export throws to an NBD error number. Unknown failures are
 * EIO, not nbdkit's EINVAL: the request was valid (the server checked it), so
 * an unexplained failure means the I/O did not happen as asked.
 */
export function nbdErrno(err: unknown): number {
  if (err instanceof NbdError) return err.nbdErrno;
  if (typeof err === "object" && err !== null) {
    // A volume error keeps the operating system's errno (ENOSPC, EIO) in sysCode.
    const sys = (err as { sysCode?: unknown }).sysCode;
    if (typeof sys === "string" && sys in CODE_TO_NBD) return CODE_TO_NBD[sys];
    const code = (err as { code?: unknown }).code;
    if (hasCode(err, "TM_VOLUME_READONLY")) return NBD_EPERM;
    if (typeof code === "string" && code in CODE_TO_NBD) return CODE_TO_NBD[code];
  }
  return NBD_EIO;
}

// ---- decode results --------------------------------------------------------
export type Decoded<T> = { ok: true; value: T } | { ok: false; reason: string };

function ok<T>(value: T): Decoded<T> {
  return { ok: true, value };
}
function bad<T>(reason: string): Decoded<T> {
  return { ok: false, reason };
}

/** Strings (export names, messages) are bounded by the protocol at 4096 bytes. */
export const NBD_STRING_BYTES_MAX = 4096;

function decodeString(buf: Buffer, what: string): Decoded<string> {
  if (buf.length > NBD_STRING_BYTES_MAX) return bad(`${what} longer than ${NBD_STRING_BYTES_MAX} bytes`);
  // ignoreBOM: a leading U+FEFF is part of the name, not a byte-order mark to
  // drop; "\uFEFFdisk" and "disk" are different exports.
  const text = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });
  let s: string;
  try {
    s = text.decode(buf);
  } catch {
    return bad(`${what} is not valid UTF-8`);
  }
  if (s.includes("\0")) return bad(`${what} contains NUL`);
  return ok(s);
}

// 64-bit fields become numbers. Values past 2^53 lose precision but stay past
// any export size (exports are below 2^53 bytes), so range checks still fail.
function readU64(buf: Buffer, at: number): number {
  return Number(buf.readBigUInt64BE(at));
}

// ---- handshake -------------------------------------------------------------
export const SERVER_GREETING_BYTES = 18;

export function encodeServerGreeting(handshakeFlags: number): Buffer {
  const b = Buffer.alloc(SERVER_GREETING_BYTES);
  b.writeBigUInt64BE(NBD_MAGIC, 0);
  b.writeBigUInt64BE(NBD_IHAVEOPT, 8);
  b.writeUInt16BE(handshakeFlags, 16);
  return b;
}

export function decodeServerGreeting(b: Buffer): Decoded<{ handshakeFlags: number }> {
  if (b.length !== SERVER_GREETING_BYTES) return bad("greeting has wrong length");
  if (b.readBigUInt64BE(0) !== NBD_MAGIC) return bad("bad NBDMAGIC");
  if (b.readBigUInt64BE(8) === 0x00420281861253n) return bad("oldstyle server, not supported");
  if (b.readBigUInt64BE(8) !== NBD_IHAVEOPT) return bad("bad IHAVEOPT");
  return ok({ handshakeFlags: b.readUInt16BE(16) });
}

export const CLIENT_FLAGS_BYTES = 4;

export function encodeClientFlags(flags: number): Buffer {
  const b = Buffer.alloc(CLIENT_FLAGS_BYTES);
  b.writeUInt32BE(flags >>> 0, 0);
  return b;
}

/** Only fixed newstyle is served; unknown bits must close the connection (proto.md). */
export function decodeClientFlags(b: Buffer): Decoded<{ noZeroes: boolean }> {
  if (b.length !== CLIENT_FLAGS_BYTES) return bad("client flags have wrong length");
  const flags = b.readUInt32BE(0);
  const known = NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES;
  if ((flags & ~known) !== 0) return bad(`unknown client flags 0x${flags.toString(16)}`);
  if ((flags & NBD_FLAG_C_FIXED_NEWSTYLE) === 0) return bad("client does not speak fixed newstyle");
  return ok({ noZeroes: (flags & NBD_FLAG_C_NO_ZEROES) !== 0 });
}

export const OPTION_HEADER_BYTES = 16;

export interface OptionHeader {
  option: number;
  length: number;
}

export function encodeOption(option: number, data: Buffer = Buffer.alloc(0)): Buffer {
  const b = Buffer.alloc(OPTION_HEADER_BYTES);
  b.writeBigUInt64BE(NBD_IHAVEOPT, 0);
  b.writeUInt32BE(option >>> 0, 8);
  b.writeUInt32BE(data.length, 12);
  return Buffer.concat([b, data]);
}

export function decodeOptionHeader(b: Buffer): Decoded<OptionHeader> {
  if (b.length !== OPTION_HEADER_BYTES) return bad("option header has wrong length");
  if (b.readBigUInt64BE(0) !== NBD_IHAVEOPT) return bad("option header has bad magic");
  return ok({ option: b.readUInt32BE(8), length: b.readUInt32BE(12) });
}

export const OPTION_REPLY_HEADER_BYTES = 20;

export interface OptionReplyHeader {
  option: number;
  replyType: number;
  length: number;
}

export function encodeOptionReply(option: number, replyType: number, data: Buffer = Buffer.alloc(0)): Buffer {
  const b = Buffer.alloc(OPTION_REPLY_HEADER_BYTES);
  b.writeBigUInt64BE(NBD_OPTION_REPLY_MAGIC, 0);
  b.writeUInt32BE(option >>> 0, 8);
  b.writeUInt32BE(replyType >>> 0, 12);
  b.writeUInt32BE(data.length, 16);
  return Buffer.concat([b, data]);
}

export function encodeOptionError(option: number, replyType: number, message: string): Buffer {
  return encodeOptionReply(option, replyType, Buffer.from(message, "utf8").subarray(0, NBD_STRING_BYTES_MAX));
}

export function decodeOptionReplyHeader(b: Buffer): Decoded<OptionReplyHeader> {
  if (b.length !== OPTION_REPLY_HEADER_BYTES) return bad("option reply header has wrong length");
  if (b.readBigUInt64BE(0) !== NBD_OPTION_REPLY_MAGIC) return bad("option reply has bad magic");
  return ok({ option: b.readUInt32BE(8), replyType: b.readUInt32BE(12), length: b.readUInt32BE(16) });
}

/** Reply to NBD_OPT_EXPORT_NAME: size, flags, then 124 zeroes unless NO_ZEROES. */
export function encodeExportNameReply(sizeBytes: number, transmissionFlags: number, noZeroes: boolean): Buffer {
  const b = Buffer.alloc(noZeroes ? 10 : 134);
  b.writeBigUInt64BE(BigInt(sizeBytes), 0);
  b.writeUInt16BE(transmissionFlags, 8);
  return b;
}

// ---- NBD_OPT_INFO / NBD_OPT_GO payload -------------------------------------
export interface InfoRequest {
  name: string;
  infos: number[];
}

export function encodeInfoRequest(name: string, infos: readonly number[]): Buffer {
  const n = Buffer.from(name, "utf8");
  const b = Buffer.alloc(4 + n.length + 2 + 2 * infos.length);
  b.writeUInt32BE(n.length, 0);
  n.copy(b, 4);
  b.writeUInt16BE(infos.length, 4 + n.length);
  infos.forEach((info, i) => b.writeUInt16BE(info, 6 + n.length + 2 * i));
  return b;
}

export function decodeInfoRequest(b: Buffer): Decoded<InfoRequest> {
  if (b.length < 6) return bad("INFO/GO data shorter than 6 bytes");
  const nameLength = b.readUInt32BE(0);
  if (nameLength > b.length - 6) return bad("INFO/GO name length runs past the option data");
  const name = decodeString(b.subarray(4, 4 + nameLength), "export name");
  if (!name.ok) return name;
  const count = b.readUInt16BE(4 + nameLength);
  if (b.length !== 6 + nameLength + 2 * count) return bad("INFO/GO information request count does not match length");
  const infos: number[] = [];
  for (let i = 0; i < count; i++) infos.push(b.readUInt16BE(6 + nameLength + 2 * i));
  return ok({ name: name.value, infos });
}

export function decodeExportName(b: Buffer): Decoded<string> {
  return decodeString(b, "export name");
}

// ---- NBD_REP_SERVER and NBD_REP_INFO payloads ---------------------------------
export function encodeRepServer(name: string, description = ""): Buffer {
  const n = Buffer.from(name, "utf8");
  const d = Buffer.from(description, "utf8");
  const b = Buffer.alloc(4 + n.length + d.length);
  b.writeUInt32BE(n.length, 0);
  n.copy(b, 4);
  d.copy(b, 4 + n.length);
  return b;
}

export function decodeRepServer(b: Buffer): Decoded<{ name: string; description: string }> {
  if (b.length < 4) return bad("REP_SERVER shorter than 4 bytes");
  const len = b.readUInt32BE(0);
  if (len > b.length - 4) return bad("REP_SERVER name runs past the reply");
  const name = decodeString(b.subarray(4, 4 + len), "export name");
  if (!name.ok) return name;
  const description = decodeString(b.subarray(4 + len), "description");
  if (!description.ok) return description;
  return ok({ name: name.value, description: description.value });
}

export function encodeInfoExport(sizeBytes: number, transmissionFlags: number): Buffer {
  const b = Buffer.alloc(12);
  b.writeUInt16BE(NBD_INFO_EXPORT, 0);
  b.writeBigUInt64BE(BigInt(sizeBytes), 2);
  b.writeUInt16BE(transmissionFlags, 10);
  return b;
}

export function encodeInfoString(infoType: typeof NBD_INFO_NAME | typeof NBD_INFO_DESCRIPTION, s: string): Buffer {
  const t = Buffer.alloc(2);
  t.writeUInt16BE(infoType, 0);
  return Buffer.concat([t, Buffer.from(s, "utf8").subarray(0, NBD_STRING_BYTES_MAX)]);
}

export interface BlockSize {
  minimum: number;
  preferred: number;
  maximum: number;
}

export function encodeInfoBlockSize(bs: BlockSize): Buffer {
  const b = Buffer.alloc(14);
  b.writeUInt16BE(NBD_INFO_BLOCK_SIZE, 0);
  b.writeUInt32BE(bs.minimum, 2);
  b.writeUInt32BE(bs.preferred, 6);
  b.writeUInt32BE(bs.maximum, 10);
  return b;
}

export type InfoReply =
  | { type: typeof NBD_INFO_EXPORT; sizeBytes: number; transmissionFlags: number }
  | { type: typeof NBD_INFO_NAME; name: string }
  | { type: typeof NBD_INFO_DESCRIPTION; description: string }
  | { type: typeof NBD_INFO_BLOCK_SIZE; blockSize: BlockSize }
  | { type: "unknown"; infoType: number };

export function decodeInfoReply(b: Buffer): Decoded<InfoReply> {
  if (b.length < 2) return bad("REP_INFO shorter than 2 bytes");
  const type = b.readUInt16BE(0);
  switch (type) {
    case NBD_INFO_EXPORT:
      if (b.length !== 12) return bad("INFO_EXPORT length is not 12");
      return ok({ type, sizeBytes: readU64(b, 2), transmissionFlags: b.readUInt16BE(10) });
    case NBD_INFO_NAME: {
      const s = decodeString(b.subarray(2), "name");
      return s.ok ? ok({ type, name: s.value }) : s;
    }
    case NBD_INFO_DESCRIPTION: {
      const s = decodeString(b.subarray(2), "description");
      return s.ok ? ok({ type, description: s.value }) : s;
    }
    case NBD_INFO_BLOCK_SIZE:
      if (b.length !== 14) return bad("INFO_BLOCK_SIZE length is not 14");
      return ok({
        type,
        blockSize: { minimum: b.readUInt32BE(2), preferred: b.readUInt32BE(6), maximum: b.readUInt32BE(10) },
      });
    default:
      return ok({ type: "unknown", infoType: type });
  }
}

// ---- transmission: requests ------------------------------------------------------
export const REQUEST_HEADER_BYTES = 28;

export interface RequestHeader {
  flags: number;
  type: number;
  /** Opaque to the server; echoed in every reply. */
  cookie: bigint;
  /**
   * The full 64 bits: range checks run on bigint (offset + length), and only
   * a request that passed them has its offset made a number (below 2^53).
   */
  offset: bigint;
  length: number;
}

/** A request to encode; a number offset is taken as is (the test client's and tidemark's client's). */
export type RequestHeaderInput = Omit<RequestHeader, "offset"> & { offset: number | bigint };

export function encodeRequestHeader(r: RequestHeaderInput, magic: number = NBD_REQUEST_MAGIC): Buffer {
  const b = Buffer.alloc(REQUEST_HEADER_BYTES);
  b.writeUInt32BE(magic >>> 0, 0);
  b.writeUInt16BE(r.flags, 4);
  b.writeUInt16BE(r.type, 6);
  b.writeBigUInt64BE(r.cookie, 8);
  b.writeBigUInt64BE(BigInt(r.offset), 16);
  b.writeUInt32BE(r.length >>> 0, 24);
  return b;
}

export function decodeRequestHeader(b: Buffer): Decoded<RequestHeader> {
  if (b.length !== REQUEST_HEADER_BYTES) return bad("request header has wrong length");
  const magic = b.readUInt32BE(0);
  if (magic !== NBD_REQUEST_MAGIC) return bad(`request has bad magic 0x${magic.toString(16)}`);
  return ok({
    flags: b.readUInt16BE(4),
    type: b.readUInt16BE(6),
    cookie: b.readBigUInt64BE(8),
    offset: b.readBigUInt64BE(16),
    length: b.readUInt32BE(24),
  });
}

// ---- transmission: replies --------------------------------------------------------
export const SIMPLE_REPLY_HEADER_BYTES = 16;
export const STRUCTURED_REPLY_HEADER_BYTES = 20;
/** Both reply kinds start with a 4-byte magic that says which one follows. */
export const REPLY_MAGIC_BYTES = 4;

export function encodeSimpleReply(errno: number, cookie: bigint): Buffer {
  const b = Buffer.alloc(SIMPLE_REPLY_HEADER_BYTES);
  b.writeUInt32BE(NBD_SIMPLE_REPLY_MAGIC, 0);
  b.writeUInt32BE(errno >>> 0, 4);
  b.writeBigUInt64BE(cookie, 8);
  return b;
}

export interface SimpleReplyHeader {
  errno: number;
  cookie: bigint;
}

export function decodeSimpleReplyHeader(b: Buffer): Decoded<SimpleReplyHeader> {
  if (b.length !== SIMPLE_REPLY_HEADER_BYTES) return bad("simple reply has wrong length");
  if (b.readUInt32BE(0) !== NBD_SIMPLE_REPLY_MAGIC) return bad("simple reply has bad magic");
  return ok({ errno: b.readUInt32BE(4), cookie: b.readBigUInt64BE(8) });
}

export interface ChunkHeader {
  flags: number;
  type: number;
  cookie: bigint;
  length: number;
}

export function encodeChunkHeader(h: ChunkHeader): Buffer {
  const b = Buffer.alloc(STRUCTURED_REPLY_HEADER_BYTES);
  b.writeUInt32BE(NBD_STRUCTURED_REPLY_MAGIC, 0);
  b.writeUInt16BE(h.flags, 4);
  b.writeUInt16BE(h.type, 6);
  b.writeBigUInt64BE(h.cookie, 8);
  b.writeUInt32BE(h.length >>> 0, 16);
  return b;
}

export function decodeChunkHeader(b: Buffer): Decoded<ChunkHeader> {
  if (b.length !== STRUCTURED_REPLY_HEADER_BYTES) return bad("structured reply header has wrong length");
  if (b.readUInt32BE(0) !== NBD_STRUCTURED_REPLY_MAGIC) return bad("structured reply has bad magic");
  return ok({ flags: b.readUInt16BE(4), type: b.readUInt16BE(6), cookie: b.readBigUInt64BE(8), length: b.readUInt32BE(16) });
}

/** Header plus the 8-byte offset of an OFFSET_DATA chunk; the data follows it on the wire. */
export function encodeOffsetDataHead(cookie: bigint, offset: number, dataLength: number, done: boolean): Buffer {
  const h = encodeChunkHeader({
    flags: done ? NBD_REPLY_FLAG_DONE : 0,
    type: NBD_REPLY_TYPE_OFFSET_DATA,
    cookie,
    length: 8 + dataLength,
  });
  const o = Buffer.alloc(8);
  o.writeBigUInt64BE(BigInt(offset), 0);
  return Buffer.concat([h, o]);
}

export function encodeErrorChunk(cookie: bigint, errno: number, message: string): Buffer {
  // The message length field is 16 bits; proto.md also caps strings at 4096.
  const m = Buffer.from(message, "utf8").subarray(0, NBD_STRING_BYTES_MAX);
  const p = Buffer.alloc(6 + m.length);
  p.writeUInt32BE(errno >>> 0, 0);
  p.writeUInt16BE(m.length, 4);
  m.copy(p, 6);
  const h = encodeChunkHeader({ flags: NBD_REPLY_FLAG_DONE, type: NBD_REPLY_TYPE_ERROR, cookie, length: p.length });
  return Buffer.concat([h, p]);
}

export function encodeNoneChunk(cookie: bigint): Buffer {
  return encodeChunkHeader({ flags: NBD_REPLY_FLAG_DONE, type: NBD_REPLY_TYPE_NONE, cookie, length: 0 });
}

export type ChunkPayload =
  | { kind: "none" }
  | { kind: "data"; offset: number; data: Buffer }
  | { kind: "hole"; offset: number; length: number }
  | { kind: "error"; errno: number; message: string; offset?: number }
  | { kind: "unknown"; type: number };

export function decodeChunkPayload(type: number, p: Buffer): Decoded<ChunkPayload> {
  switch (type) {
    case NBD_REPLY_TYPE_NONE:
      return p.length === 0 ? ok({ kind: "none" }) : bad("NONE chunk with payload");
    case NBD_REPLY_TYPE_OFFSET_DATA:
      if (p.length < 9) return bad("OFFSET_DATA chunk shorter than 9 bytes");
      return ok({ kind: "data", offset: readU64(p, 0), data: p.subarray(8) });
    case NBD_REPLY_TYPE_OFFSET_HOLE:
      if (p.length !== 12) return bad("OFFSET_HOLE chunk length is not 12");
      return ok({ kind: "hole", offset: readU64(p, 0), length: p.readUInt32BE(8) });
    default: {
      if (!isStructuredErrorType(type)) return ok({ kind: "unknown", type });
      if (p.length < 6) return bad("error chunk shorter than 6 bytes");
      const errno = p.readUInt32BE(0);
      const mlen = p.readUInt16BE(4);
      if (mlen > p.length - 6) return bad("error chunk message runs past the payload");
      const message = p.subarray(6, 6 + mlen).toString("utf8");
      if (type === NBD_REPLY_TYPE_ERROR_OFFSET) {
        if (p.length !== 6 + mlen + 8) return bad("ERROR_OFFSET chunk has wrong length");
        return ok({ kind: "error", errno, message, offset: readU64(p, 6 + mlen) });
      }
      return ok({ kind: "error", errno, message });
    }
  }
}

// Transmission-phase rules as pure functions: which flags a connection gets,
// which requests are valid, and which NBD error an invalid one earns. The
// server calls an export only after checkRequest said ok, so nothing partial
// is ever written for a request that is refused.
import {
  NBD_CMD_DISC,
  NBD_CMD_FLAG_FUA,
  NBD_CMD_FLAG_NO_HOLE,
  NBD_CMD_FLUSH,
  NBD_CMD_READ,
  NBD_CMD_TRIM,
  NBD_CMD_WRITE,
  NBD_CMD_WRITE_ZEROES,
  NBD_EINVAL,
  NBD_ENOSPC,
  NBD_EPERM,
  NBD_FLAG_CAN_MULTI_CONN,
  NBD_FLAG_HAS_FLAGS,
  NBD_FLAG_READ_ONLY,
  NBD_FLAG_SEND_FLUSH,
  NBD_FLAG_SEND_FUA,
  NBD_FLAG_SEND_TRIM,
  NBD_FLAG_SEND_WRITE_ZEROES,
  type BlockSize,
  type RequestHeader,
} from "./protocol.ts";

/** Smallest addressable unit advertised in NBD_INFO_BLOCK_SIZE; requests must be aligned to it. */
export const MIN_BLOCK_BYTES = 512;
/** Size at which requests are efficient (the volumes' block size). */
export const PREFERRED_BLOCK_BYTES = 4096;
/**
 * proto.md: any payload up to 2^25 bytes SHOULD NOT be taken for a denial of
 * service. A WRITE up to this length past maxPayloadBytes is read and dropped
 * (EINVAL, the stream stays in sync); a longer one closes the connection.
 */
export const PAYLOAD_HARD_CAP_BYTES = 32 * 1024 * 1024;

export function blockSizeFor(maxPayloadBytes: number): BlockSize {
  return { minimum: MIN_BLOCK_BYTES, preferred: PREFERRED_BLOCK_BYTES, maximum: maxPayloadBytes };
}

/**
 * Flags for one connection. A read-only export advertises no write-side
 * features (as nbdkit does); FLUSH stays, it is harmless. CAN_MULTI_CONN holds
 * because every export's flush covers writes from all connections.
 */
export function transmissionFlags(readOnly: boolean): number {
  let f = NBD_FLAG_HAS_FLAGS | NBD_FLAG_SEND_FLUSH | NBD_FLAG_CAN_MULTI_CONN;
  if (readOnly) f |= NBD_FLAG_READ_ONLY;
  else f |= NBD_FLAG_SEND_FUA | NBD_FLAG_SEND_TRIM | NBD_FLAG_SEND_WRITE_ZEROES;
  return f;
}

export interface TransmissionLimits {
  sizeBytes: number;
  readOnly: boolean;
  /**
   * Largest READ/WRITE payload taken on this connection: the advertised
   * maximum when the client asked for NBD_INFO_BLOCK_SIZE, else
   * PAYLOAD_HARD_CAP_BYTES (proto.md: without negotiated block sizes a server
   * SHOULD take payloads up to 32 MiB; nbd-tester-client's integrityhuge does).
   */
  maxPayloadBytes: number;
}

/** The payload limit of a connection: see TransmissionLimits.maxPayloadBytes. */
export function payloadLimitFor(advertisedMaxBytes: number, clientAskedBlockSize: boolean): number {
  return clientAskedBlockSize ? advertisedMaxBytes : PAYLOAD_HARD_CAP_BYTES;
}

export type Verdict = { ok: true } | { ok: false; errno: number; message: string };

const OK: Verdict = { ok: true };
function refuse(errno: number, message: string): Verdict {
  return { ok: false, errno, message };
}

// FUA is accepted on every command (proto.md: once SEND_FUA is negotiated the
// server MUST accept it anywhere, and real clients set it on reads).
const ALLOWED_FLAGS: Record<number, number> = {
  [NBD_CMD_READ]: NBD_CMD_FLAG_FUA,
  [NBD_CMD_WRITE]: NBD_CMD_FLAG_FUA,
  [NBD_CMD_FLUSH]: NBD_CMD_FLAG_FUA,
  [NBD_CMD_TRIM]: NBD_CMD_FLAG_FUA,
  [NBD_CMD_WRITE_ZEROES]: NBD_CMD_FLAG_FUA | NBD_CMD_FLAG_NO_HOLE,
};

const COMMAND_NAMES: Record<number, string> = {
  [NBD_CMD_READ]: "READ",
  [NBD_CMD_WRITE]: "WRITE",
  [NBD_CMD_DISC]: "DISC",
  [NBD_CMD_FLUSH]: "FLUSH",
  [NBD_CMD_TRIM]: "TRIM",
  [NBD_CMD_WRITE_ZEROES]: "WRITE_ZEROES",
};

export function commandName(type: number): string {
  return COMMAND_NAMES[type] ?? `CMD_${type}`;
}

function isWriteSide(type: number): boolean {
  return type === NBD_CMD_WRITE || type === NBD_CMD_TRIM || type === NBD_CMD_WRITE_ZEROES;
}

/**
 * Checks one request (not DISC, which the connection handles itself). Order:
 * unknown command, flags, read-only, payload size, alignment, range — so the
 * most specific reason a client could fix is the one reported.
 */
export function checkRequest(h: RequestHeader, l: TransmissionLimits): Verdict {
  const name = commandName(h.type);
  const allowed = ALLOWED_FLAGS[h.type];
  if (allowed === undefined) return refuse(NBD_EINVAL, `unknown command ${h.type}`);
  if ((h.flags & ~allowed) !== 0) return refuse(NBD_EINVAL, `${name}: flags 0x${h.flags.toString(16)} not valid`);
  if (l.readOnly && isWriteSide(h.type)) return refuse(NBD_EPERM, `${name}: export is read-only`);
  if (h.type === NBD_CMD_FLUSH) {
    return h.offset === 0n && h.length === 0 ? OK : refuse(NBD_EINVAL, "FLUSH: offset and length must be 0");
  }
  // READ and WRITE carry their payload; TRIM and WRITE_ZEROES may be longer
  // (proto.md lets a client ask for more effect than the payload maximum).
  if ((h.type === NBD_CMD_READ || h.type === NBD_CMD_WRITE) && h.length > l.maxPayloadBytes) {
    return refuse(NBD_EINVAL, `${name}: length ${h.length} exceeds the maximum payload ${l.maxPayloadBytes}`);
  }
  // 64-bit arithmetic: as numbers, offsets past 2^53 round (2^53 + 1 became
  // 2^53, aligned, and a WRITE there earned ENOSPC instead of EINVAL).
  const size = BigInt(l.sizeBytes);
  const end = h.offset + BigInt(h.length);
  const min = BigInt(MIN_BLOCK_BYTES);
  // The last block of an export whose size is not a multiple of the minimum
  // block is reachable only with a short length ending exactly at the end.
  const aligned = h.offset % min === 0n && (BigInt(h.length) % min === 0n || end === size);
  if (!aligned) return refuse(NBD_EINVAL, `${name}: offset ${h.offset} length ${h.length} not aligned to ${MIN_BLOCK_BYTES}`);
  if (h.offset > size || end > size) {
    // proto.md: ENOSPC for a write past the end, EINVAL for reads and trims.
    const errno = h.type === NBD_CMD_WRITE || h.type === NBD_CMD_WRITE_ZEROES ? NBD_ENOSPC : NBD_EINVAL;
    return refuse(errno, `${name}: offset ${h.offset} length ${h.length} past the end (${l.sizeBytes})`);
  }
  return OK;
}

/** What to do with a WRITE's payload bytes before the verdict is acted on. */
export function writePayloadFate(h: RequestHeader, verdict: Verdict): "read" | "discard" | "disconnect" {
  if (h.length > PAYLOAD_HARD_CAP_BYTES) return "disconnect";
  return verdict.ok ? "read" : "discard";
}

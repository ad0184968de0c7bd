// The client side of NBD, for tidemark's own tools (the drill's workload): fixed newstyle
// handshake, NBD_OPT_GO, simple replies only, many requests in flight matched by cookie.
// Invariants: every request settles exactly once (reply, connection loss, or the request
// timeout, which fails the whole connection so no late reply is ever taken for another's).
import net from "node:net";
import { ByteReader } from "./byte-reader.ts";
import type { Codes } from "../errors/codes.ts";
import {
  NBD_CMD_DISC,
  NBD_CMD_FLAG_FUA,
  NBD_CMD_FLUSH,
  NBD_CMD_READ,
  NBD_CMD_WRITE,
  NBD_CMD_WRITE_ZEROES,
  NBD_FLAG_C_FIXED_NEWSTYLE,
  NBD_FLAG_C_NO_ZEROES,
  NBD_FLAG_FIXED_NEWSTYLE,
  NBD_FLAG_NO_ZEROES,
  NBD_FLAG_READ_ONLY,
  NBD_INFO_EXPORT,
  NBD_OPT_GO,
  NBD_REP_ACK,
  NBD_REP_INFO,
  OPTION_REPLY_HEADER_BYTES,
  SERVER_GREETING_BYTES,
  SIMPLE_REPLY_HEADER_BYTES,
  decodeInfoReply,
  decodeOptionReplyHeader,
  decodeServerGreeting,
  decodeSimpleReplyHeader,
  encodeClientFlags,
  encodeInfoRequest,
  encodeOption,
  encodeRequestHeader,
  isOptionReplyError,
  nbdErrnoName,
} from "./protocol.ts";

/** Replies buffered ahead of the reader; reads of the drill are 4 KiB to a few MiB. */
const READ_AHEAD_BYTES = 4 * 1024 * 1024;
/** Option replies (NBD_REP_INFO, errors) are small; a bigger one is a broken or hostile server. */
const OPTION_REPLY_BYTES_MAX = 64 * 1024;
export const NBD_CLIENT_CONNECT_TIMEOUT_MS_DEFAULT = 10_000;
/** A request unanswered this long fails its connection: a hung server must not hang its client forever. */
export const NBD_CLIENT_REQUEST_TIMEOUT_MS_DEFAULT = 60_000;
/** A single request's payload; the server advertises its own maximum, this bounds our buffers. */
export const NBD_CLIENT_PAYLOAD_BYTES_MAX = 32 * 1024 * 1024;

/**
 * TM_NBD_CONNECTION: TCP connect failed, the handshake broke, or the connection was lost or timed out.
 * TM_NBD_REFUSED: the server refused NBD_OPT_GO (unknown export, policy).
 * TM_NBD_REQUEST: the server answered a request with an NBD error number (EPERM on a read-only export, EIO).
 */
export type NbdClientErrorCode = Codes<"TM_NBD_CONNECTION" | "TM_NBD_REFUSED" | "TM_NBD_REQUEST">;

export class NbdClientError extends Error {
  constructor(
    readonly code: NbdClientErrorCode,
    message: string,
    /** The NBD error number, for TM_NBD_REQUEST. */
    readonly nbdErrno?: number,
  ) {
    super(message);
    this.name = "NbdClientError";
  }
}

export interface NbdClientOptions {
  host: string;
  port: number;
  exportName: string;
  connectTimeoutMs?: number;
  requestTimeoutMs?: number;
}

interface Pending {
  command: string;
  length: number;
  resolve: (data: Buffer | undefined) => void;
  reject: (e: Error) => void;
  timer: NodeJS.Timeout;
}

export class NbdClient {
  readonly sizeBytes: number;
  readonly readOnly: boolean;
  readonly transmissionFlags: number;
  private readonly pending = new Map<bigint, Pending>();
  private readonly inflight = new Set<Promise<unknown>>();
  private nextCookie = 1n;
  private failure: Error | null = null;
  private readonly closed: Promise<void>;
  private readonly where: string;

  private constructor(
    private readonly socket: net.Socket,
    private readonly reader: ByteReader,
    o: NbdClientOptions,
    info: { sizeBytes: number; transmissionFlags: number },
    private readonly requestTimeoutMs: number,
  ) {
    this.sizeBytes = info.sizeBytes;
    this.transmissionFlags = info.transmissionFlags;
    this.readOnly = (info.transmissionFlags & NBD_FLAG_READ_ONLY) !== 0;
    this.where = `nbd://${o.host}:${o.port}/${o.exportName}`;
    this.closed = new Promise((resolve) => (socket.destroyed ? resolve() : socket.once("close", () => resolve())));
    void this.readReplies();
  }

  static async connect(o: NbdClientOptions): Promise<NbdClient> {
    const where = `nbd://${o.host}:${o.port}/${o.exportName}`;
    const socket = await connectSocket(o.host, o.port, o.connectTimeoutMs ?? NBD_CLIENT_CONNECT_TIMEOUT_MS_DEFAULT, where);
    // Errors surface through the reader as an ended stream; without a listener one would crash the process.
    socket.on("error", () => undefined);
    socket.setNoDelay(true);
    const reader = new ByteReader(socket, READ_AHEAD_BYTES);
    const handshakeMs = o.connectTimeoutMs ?? NBD_CLIENT_CONNECT_TIMEOUT_MS_DEFAULT;
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      socket.destroy();
    }, handshakeMs);
    try {
      const info = await handshake(socket, reader, o.exportName, where);
      return new NbdClient(socket, reader, o, info, o.requestTimeoutMs ?? NBD_CLIENT_REQUEST_TIMEOUT_MS_DEFAULT);
    } catch (err) {
      socket.destroy();
      if (err instanceof NbdClientError) throw err;
      const why = timedOut ? `no handshake within ${handshakeMs} ms` : (err as Error).message;
      throw new NbdClientError("TM_NBD_CONNECTION", `${where}: handshake failed: ${why}`);
    } finally {
      clearTimeout(timer);
    }
  }

  read(offset: number, length: number): Promise<Buffer> {
    return this.request("READ", NBD_CMD_READ, 0, offset, length).then((d) => d!);
  }

  async write(offset: number, data: Buffer, o: { fua?: boolean } = {}): Promise<void> {
    await this.request("WRITE", NBD_CMD_WRITE, o.fua ? NBD_CMD_FLAG_FUA : 0, offset, data.length, data);
  }

  /** Zeroes a range without sending the zeroes (the server must advertise NBD_FLAG_SEND_WRITE_ZEROES). */
  async writeZeroes(offset: number, length: number): Promise<void> {
    await this.request("WRITE_ZEROES", NBD_CMD_WRITE_ZEROES, 0, offset, length);
  }

  async flush(): Promise<void> {
    await this.request("FLUSH", NBD_CMD_FLUSH, 0, 0, 0);
  }

  /** Soft disconnect: NBD_CMD_DISC once every reply is in, then wait for the server to close. */
  async disconnect(): Promise<void> {
    await Promise.allSettled(this.inflight);
    if (!this.socket.destroyed) this.socket.write(encodeRequestHeader({ flags: 0, type: NBD_CMD_DISC, cookie: 0n, offset: 0, length: 0 }));
    await this.closed;
  }

  /** Hard disconnect: requests in flight reject. */
  async close(): Promise<void> {
    this.socket.destroy();
    await this.closed;
  }

  private request(command: string, type: number, flags: number, offset: number, length: number, payload?: Buffer): Promise<Buffer | undefined> {
    if (this.failure) return Promise.reject(this.failure);
    const carriesPayload = type === NBD_CMD_READ || type === NBD_CMD_WRITE;
    if (!Number.isSafeInteger(offset) || offset < 0 || !Number.isInteger(length) || length < 0 || length > (carriesPayload ? NBD_CLIENT_PAYLOAD_BYTES_MAX : 0xffffffff)) {
      return Promise.reject(new NbdClientError("TM_NBD_REQUEST", `${this.where}: ${command} of ${length} bytes at ${offset} is out of range`));
    }
    const cookie = this.nextCookie++;
    const p = new Promise<Buffer | undefined>((resolve, reject) => {
      const timer = setTimeout(
        () => this.fail(new NbdClientError("TM_NBD_CONNECTION", `${this.where}: ${command} at ${offset} got no reply within ${this.requestTimeoutMs} ms; connection dropped`)),
        this.requestTimeoutMs,
      );
      this.pending.set(cookie, { command, length: type === NBD_CMD_READ ? length : 0, resolve, reject, timer });
      const header = encodeRequestHeader({ flags, type, cookie, offset, length });
      this.socket.write(payload ? Buffer.concat([header, payload]) : header);
    });
    this.inflight.add(p);
    const forget = () => this.inflight.delete(p);
    p.then(forget, forget);
    return p;
  }

  /** Fails every request in flight and every later one with `err`, and drops the connection. */
  private fail(err: Error): void {
    this.failure ??= err;
    for (const p of this.pending.values()) {
      clearTimeout(p.timer);
      p.reject(this.failure);
    }
    this.pending.clear();
    this.socket.destroy();
  }

  private async readReplies(): Promise<void> {
    try {
      while (true) {
        const h = decodeSimpleReplyHeader(await this.reader.read(SIMPLE_REPLY_HEADER_BYTES));
        if (!h.ok) throw new Error(h.reason);
        const p = this.pending.get(h.value.cookie);
        if (!p) throw new Error(`reply for unknown cookie ${h.value.cookie}`);
        this.pending.delete(h.value.cookie);
        clearTimeout(p.timer);
        if (h.value.errno !== 0) {
          p.reject(new NbdClientError("TM_NBD_REQUEST", `${this.where}: ${p.command} failed: ${nbdErrnoName(h.value.errno)}`, h.value.errno));
        } else if (p.length > 0) {
          // Copied out: the reader may hand out a slice of a larger chunk it keeps.
          p.resolve(Buffer.from(await this.reader.read(p.length)));
        } else {
          p.resolve(undefined);
        }
      }
    } catch (err) {
      const why = (err as Error).message;
      this.fail(new NbdClientError("TM_NBD_CONNECTION", `${this.where}: connection lost (${why})`));
    }
  }
}

function connectSocket(host: string, port: number, timeoutMs: number, where: string): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const s = net.connect({ host, port });
    const timer = setTimeout(() => {
      s.destroy();
      reject(new NbdClientError("TM_NBD_CONNECTION", `${where}: connect timed out after ${timeoutMs} ms`));
    }, timeoutMs);
    s.once("error", (err) => {
      clearTimeout(timer);
      reject(new NbdClientError("TM_NBD_CONNECTION", `${where}: connect failed (${(err as NodeJS.ErrnoException).code ?? err.message})`));
    });
    s.once("connect", () => {
      clearTimeout(timer);
      s.removeAllListeners("error");
      resolve(s);
    });
  });
}

/** Fixed newstyle handshake and NBD_OPT_GO; returns the export's size and transmission flags. */
async function handshake(socket: net.Socket, reader: ByteReader, exportName: string, where: string): Promise<{ sizeBytes: number; transmissionFlags: number }> {
  const g = decodeServerGreeting(await reader.read(SERVER_GREETING_BYTES));
  if (!g.ok) throw new Error(g.reason);
  if ((g.value.handshakeFlags & NBD_FLAG_FIXED_NEWSTYLE) === 0) throw new Error("the server does not speak fixed newstyle");
  const noZeroes = (g.value.handshakeFlags & NBD_FLAG_NO_ZEROES) !== 0;
  socket.write(encodeClientFlags(NBD_FLAG_C_FIXED_NEWSTYLE | (noZeroes ? NBD_FLAG_C_NO_ZEROES : 0)));
  socket.write(encodeOption(NBD_OPT_GO, encodeInfoRequest(exportName, [])));
  let info: { sizeBytes: number; transmissionFlags: number } | null = null;
  for (;;) {
    const h = decodeOptionReplyHeader(await reader.read(OPTION_REPLY_HEADER_BYTES));
    if (!h.ok) throw new Error(h.reason);
    if (h.value.option !== NBD_OPT_GO) throw new Error(`reply for option ${h.value.option}, expected NBD_OPT_GO`);
    if (h.value.length > OPTION_REPLY_BYTES_MAX) throw new Error(`option reply of ${h.value.length} bytes`);
    const data = await reader.read(h.value.length);
    if (isOptionReplyError(h.value.replyType)) {
      const msg = data.toString("utf8");
      throw new NbdClientError("TM_NBD_REFUSED", `${where}: the server refused the export (reply 0x${h.value.replyType.toString(16)}${msg ? `: ${msg}` : ""})`);
    }
    if (h.value.replyType === NBD_REP_INFO) {
      const d = decodeInfoReply(data);
      if (!d.ok) throw new Error(d.reason);
      if (d.value.type === NBD_INFO_EXPORT) info = { sizeBytes: d.value.sizeBytes, transmissionFlags: d.value.transmissionFlags };
    } else if (h.value.replyType === NBD_REP_ACK) {
      if (!info) throw new Error("NBD_OPT_GO acknowledged without NBD_INFO_EXPORT");
      return info;
    }
    // Other reply types are informational: ignore them, as the protocol asks.
  }
}

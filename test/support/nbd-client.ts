// A small promise-based NBD client for tests: fixed newstyle, NBD_OPT_GO,
// optional structured replies, many requests in flight matched by cookie.
// Raw access (request(), sendRaw(), NbdOptionSession) lets tests send what a
// well-behaved client never would. Uses the server's codec, so a test of
// the codec's layout belongs in test/unit/nbd-protocol.test.ts, not here.
import net from "node:net";
import tls from "node:tls";
import { ByteReader } from "../../appliance/nbd/byte-reader.ts";
import {
  NBD_CMD_DISC,
  NBD_CMD_FLAG_FUA,
  NBD_CMD_FLAG_NO_HOLE,
  NBD_CMD_FLUSH,
  NBD_CMD_READ,
  NBD_CMD_TRIM,
  NBD_CMD_WRITE,
  NBD_CMD_WRITE_ZEROES,
  NBD_FLAG_C_FIXED_NEWSTYLE,
  NBD_FLAG_C_NO_ZEROES,
  NBD_FLAG_NO_ZEROES,
  NBD_FLAG_READ_ONLY,
  NBD_INFO_BLOCK_SIZE,
  NBD_INFO_DESCRIPTION,
  NBD_INFO_EXPORT,
  NBD_INFO_NAME,
  NBD_OPT_ABORT,
  NBD_OPT_GO,
  NBD_OPT_INFO,
  NBD_OPT_LIST,
  NBD_OPT_STARTTLS,
  NBD_OPT_STRUCTURED_REPLY,
  NBD_REP_ACK,
  NBD_REP_INFO,
  NBD_REP_SERVER,
  NBD_REPLY_FLAG_DONE,
  NBD_SIMPLE_REPLY_MAGIC,
  NBD_STRUCTURED_REPLY_MAGIC,
  OPTION_REPLY_HEADER_BYTES,
  REPLY_MAGIC_BYTES,
  SERVER_GREETING_BYTES,
  SIMPLE_REPLY_HEADER_BYTES,
  STRUCTURED_REPLY_HEADER_BYTES,
  decodeChunkHeader,
  decodeChunkPayload,
  decodeInfoReply,
  decodeOptionReplyHeader,
  decodeRepServer,
  decodeServerGreeting,
  decodeSimpleReplyHeader,
  encodeClientFlags,
  encodeInfoRequest,
  encodeOption,
  encodeRequestHeader,
  isOptionReplyError,
  nbdErrnoName,
  type BlockSize,
  type InfoReply,
} from "../../appliance/nbd/protocol.ts";

const READ_AHEAD_BYTES = 1024 * 1024;

export class NbdRequestError extends Error {
  constructor(
    readonly errno: number,
    readonly command: string,
    readonly serverMessage: string | undefined,
  ) {
    super(`NBD ${command} failed: ${nbdErrnoName(errno)}${serverMessage ? ` (${serverMessage})` : ""}`);
    this.name = "NbdRequestError";
  }
}

export class NbdOptionError extends Error {
  constructor(
    readonly option: number,
    readonly replyType: number,
    readonly serverMessage: string,
  ) {
    super(`NBD option ${option} refused with reply 0x${replyType.toString(16)}: ${serverMessage}`);
    this.name = "NbdOptionError";
  }
}

export interface OptionReply {
  replyType: number;
  data: Buffer;
}

export interface ExportInfo {
  sizeBytes: number;
  transmissionFlags: number;
  blockSize?: BlockSize;
  name?: string;
  description?: string;
}

function connectSocket(host: string, port: number, localAddress?: string): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const s = net.connect({ host, port, localAddress });
    s.once("error", reject);
    s.once("connect", () => {
      s.off("error", reject);
      resolve(s);
    });
  });
}

/** The handshake phase: send options one at a time and read their replies. */
export class NbdOptionSession {
  private constructor(
    readonly socket: net.Socket,
    readonly reader: ByteReader,
  ) {}

  /** localAddress: connect from another loopback address, a second peer for the per-peer limits. */
  static async open(host: string, port: number, localAddress?: string): Promise<NbdOptionSession> {
    const socket = await connectSocket(host, port, localAddress);
    socket.on("error", () => {}); // Surfaced through the reader as an ended stream.
    const reader = new ByteReader(socket, READ_AHEAD_BYTES);
    const g = decodeServerGreeting(await reader.read(SERVER_GREETING_BYTES));
    if (!g.ok) throw new Error(`nbd client: ${g.reason}`);
    const noZeroes = (g.value.handshakeFlags & NBD_FLAG_NO_ZEROES) !== 0;
    socket.write(encodeClientFlags(NBD_FLAG_C_FIXED_NEWSTYLE | (noZeroes ? NBD_FLAG_C_NO_ZEROES : 0)));
    return new NbdOptionSession(socket, reader);
  }

  /** Sends one option and collects replies up to the final one (ACK or an error). */
  async option(option: number, data: Buffer = Buffer.alloc(0)): Promise<OptionReply[]> {
    this.socket.write(encodeOption(option, data));
    const replies: OptionReply[] = [];
    while (true) {
      const h = decodeOptionReplyHeader(await this.reader.read(OPTION_REPLY_HEADER_BYTES));
      if (!h.ok) throw new Error(`nbd client: ${h.reason}`);
      if (h.value.option !== option) throw new Error(`nbd client: reply for option ${h.value.option}, expected ${option}`);
      const reply = { replyType: h.value.replyType, data: await this.reader.read(h.value.length) };
      replies.push(reply);
      if (reply.replyType === NBD_REP_ACK || isOptionReplyError(reply.replyType)) return replies;
    }
  }

  async list(): Promise<{ name: string; description: string }[]> {
    const replies = await this.option(NBD_OPT_LIST);
    return replies.filter((r) => r.replyType === NBD_REP_SERVER).map((r) => {
      const d = decodeRepServer(r.data);
      if (!d.ok) throw new Error(`nbd client: ${d.reason}`);
      return d.value;
    });
  }

  async structuredReplies(): Promise<boolean> {
    const [r] = await this.option(NBD_OPT_STRUCTURED_REPLY);
    return r.replyType === NBD_REP_ACK;
  }

  /** NBD_OPT_INFO (or GO): rejects with NbdOptionError when the server refuses. */
  async info(name: string, option: typeof NBD_OPT_INFO | typeof NBD_OPT_GO = NBD_OPT_INFO, askBlockSize = true): Promise<ExportInfo> {
    const asked = askBlockSize ? [NBD_INFO_NAME, NBD_INFO_DESCRIPTION, NBD_INFO_BLOCK_SIZE] : [NBD_INFO_NAME];
    const replies = await this.option(option, encodeInfoRequest(name, asked));
    const last = replies[replies.length - 1];
    if (last.replyType !== NBD_REP_ACK) throw new NbdOptionError(option, last.replyType, last.data.toString("utf8"));
    const infos: InfoReply[] = replies
      .filter((r) => r.replyType === NBD_REP_INFO)
      .map((r) => {
        const d = decodeInfoReply(r.data);
        if (!d.ok) throw new Error(`nbd client: ${d.reason}`);
        return d.value;
      });
    const exp = infos.find((i) => i.type === NBD_INFO_EXPORT);
    if (!exp || exp.type !== NBD_INFO_EXPORT) throw new Error("nbd client: no NBD_INFO_EXPORT before ACK");
    const out: ExportInfo = { sizeBytes: exp.sizeBytes, transmissionFlags: exp.transmissionFlags };
    for (const i of infos) {
      if (i.type === NBD_INFO_BLOCK_SIZE) out.blockSize = i.blockSize;
      if (i.type === NBD_INFO_NAME) out.name = i.name;
      if (i.type === NBD_INFO_DESCRIPTION) out.description = i.description;
    }
    return out;
  }

  /** askBlockSize false: a client that did not negotiate block sizes (it may send 32 MiB payloads). */
  async go(name: string, structuredReplies: boolean, askBlockSize = true): Promise<NbdClient> {
    const info = await this.info(name, NBD_OPT_GO, askBlockSize);
    return new NbdClient(this.socket, this.reader, info, structuredReplies);
  }

  /**
   * NBD_OPT_STARTTLS, then a TLS client handshake on the same TCP stream with
   * `options` (pskCallback, ciphers, maxVersion, ...). Resolves with a session
   * inside TLS; rejects with NbdOptionError if STARTTLS is refused, or with the
   * TLS error if the handshake fails. This session's socket is the TCP one;
   * the new session's is the TLSSocket.
   */
  async startTls(options: tls.ConnectionOptions): Promise<NbdOptionSession> {
    const [r] = await this.option(NBD_OPT_STARTTLS);
    if (r.replyType !== NBD_REP_ACK) throw new NbdOptionError(NBD_OPT_STARTTLS, r.replyType, r.data.toString("utf8"));
    this.reader.detach();
    const secure = tls.connect({ checkServerIdentity: () => undefined, ...options, socket: this.socket });
    try {
      await new Promise<void>((resolve, reject) => {
        secure.once("secureConnect", () => resolve());
        secure.once("error", reject);
        secure.once("close", () => reject(new Error("nbd client: connection closed during the TLS handshake")));
      });
    } catch (err) {
      secure.destroy();
      throw err;
    }
    secure.on("error", () => {}); // Surfaced through the reader as an ended stream.
    return new NbdOptionSession(secure, new ByteReader(secure, READ_AHEAD_BYTES));
  }

  /** Soft disconnect: ABORT, wait for the ACK (or the close), then close. */
  async abort(): Promise<void> {
    await this.option(NBD_OPT_ABORT).catch(() => []);
    this.socket.destroy();
  }
}

export interface NbdConnectOptions {
  host: string;
  port: number;
  exportName: string;
  /** Negotiate NBD_OPT_STRUCTURED_REPLY first (default false: simple replies only). */
  structuredReplies?: boolean;
}

export interface RawRequest {
  type: number;
  flags?: number;
  offset?: number;
  length?: number;
  /** Bytes sent after the header (a WRITE's payload); any length, for malformed requests. */
  payload?: Buffer;
  /** Override the request magic, for malformed requests. */
  magic?: number;
}

export interface RawReply {
  errno: number;
  data?: Buffer;
  /** The server's message, when structured replies carried an error chunk. */
  message?: string;
}

interface Pending {
  type: number;
  offset: number;
  length: number;
  resolve: (r: RawReply) => void;
  reject: (e: Error) => void;
  data?: Buffer;
  errno: number;
  message?: string;
}

/** The transmission phase: pipelined requests, replies matched by cookie. */
export class NbdClient {
  readonly sizeBytes: number;
  readonly flags: number;
  readonly readOnly: boolean;
  readonly blockSize: BlockSize | undefined;
  /** Resolves when the socket has closed, for whatever reason. */
  readonly closed: Promise<void>;
  private readonly pending = new Map<bigint, Pending>();
  private readonly outstanding = new Set<Promise<RawReply>>();
  private nextCookie = 1n;
  private failure: Error | null = null;

  constructor(
    readonly socket: net.Socket,
    private readonly reader: ByteReader,
    info: ExportInfo,
    readonly structuredReplies: boolean,
  ) {
    this.sizeBytes = info.sizeBytes;
    this.flags = info.transmissionFlags;
    this.readOnly = (info.transmissionFlags & NBD_FLAG_READ_ONLY) !== 0;
    this.blockSize = info.blockSize;
    this.closed = new Promise((resolve) => {
      if (socket.destroyed) resolve();
      else socket.once("close", () => resolve());
    });
    void this.readReplies();
  }

  static async connect(o: NbdConnectOptions): Promise<NbdClient> {
    const s = await NbdOptionSession.open(o.host, o.port);
    try {
      const sr = o.structuredReplies ? await s.structuredReplies() : false;
      return await s.go(o.exportName, sr);
    } catch (err) {
      s.socket.destroy();
      throw err;
    }
  }

  /** Sends a request and resolves with the server's reply, errors included; rejects only if the connection is lost. */
  request(r: RawRequest): Promise<RawReply> {
    if (this.failure) return Promise.reject(this.failure);
    const cookie = this.nextCookie++;
    const length = r.length ?? r.payload?.length ?? 0;
    const offset = r.offset ?? 0;
    const p = new Promise<RawReply>((resolve, reject) => {
      this.pending.set(cookie, { type: r.type, offset, length, resolve, reject, errno: 0 });
    });
    this.outstanding.add(p);
    const forget = () => this.outstanding.delete(p);
    p.then(forget, forget);
    const header = encodeRequestHeader({ flags: r.flags ?? 0, type: r.type, cookie, offset, length }, r.magic);
    this.socket.write(r.payload ? Buffer.concat([header, r.payload]) : header);
    return p;
  }

  /** Writes arbitrary bytes on the connection. */
  sendRaw(b: Buffer): void {
    this.socket.write(b);
  }

  async read(offset: number, length: number): Promise<Buffer> {
    const r = await this.check("READ", this.request({ type: NBD_CMD_READ, offset, length }));
    return r.data ?? Buffer.alloc(0);
  }

  async write(offset: number, data: Buffer, o: { fua?: boolean } = {}): Promise<void> {
    await this.check("WRITE", this.request({ type: NBD_CMD_WRITE, offset, payload: data, flags: o.fua ? NBD_CMD_FLAG_FUA : 0 }));
  }

  async writeZeroes(offset: number, length: number, o: { fua?: boolean; noHole?: boolean } = {}): Promise<void> {
    const flags = (o.fua ? NBD_CMD_FLAG_FUA : 0) | (o.noHole ? NBD_CMD_FLAG_NO_HOLE : 0);
    await this.check("WRITE_ZEROES", this.request({ type: NBD_CMD_WRITE_ZEROES, offset, length, flags }));
  }

  async trim(offset: number, length: number, o: { fua?: boolean } = {}): Promise<void> {
    await this.check("TRIM", this.request({ type: NBD_CMD_TRIM, offset, length, flags: o.fua ? NBD_CMD_FLAG_FUA : 0 }));
  }

  async flush(): Promise<void> {
    await this.check("FLUSH", this.request({ type: NBD_CMD_FLUSH }));
  }

  /** Soft disconnect: DISC once every reply is in, then wait for the server to close. */
  async disconnect(): Promise<void> {
    await Promise.allSettled(this.outstanding);
    if (!this.socket.destroyed) this.socket.write(encodeRequestHeader({ flags: 0, type: NBD_CMD_DISC, cookie: 0n, offset: 0, length: 0 }));
    await this.closed;
  }

  /** Hard disconnect. */
  async close(): Promise<void> {
    this.socket.destroy();
    await this.closed;
  }

  private async check(command: string, p: Promise<RawReply>): Promise<RawReply> {
    const r = await p;
    if (r.errno !== 0) throw new NbdRequestError(r.errno, command, r.message);
    return r;
  }

  private async readReplies(): Promise<void> {
    try {
      while (true) {
        const magic = (await this.reader.read(REPLY_MAGIC_BYTES)).readUInt32BE(0);
        if (magic === NBD_SIMPLE_REPLY_MAGIC) await this.simpleReply();
        else if (magic === NBD_STRUCTURED_REPLY_MAGIC) await this.chunk();
        else throw new Error(`nbd client: bad reply magic 0x${magic.toString(16)}`);
      }
    } catch (err) {
      this.failure = err instanceof Error ? err : new Error(String(err));
      for (const p of this.pending.values()) p.reject(this.failure);
      this.pending.clear();
      this.socket.destroy();
    }
  }

  private take(cookie: bigint): Pending {
    const p = this.pending.get(cookie);
    if (!p) throw new Error(`nbd client: reply for unknown cookie ${cookie}`);
    return p;
  }

  private async simpleReply(): Promise<void> {
    const rest = await this.reader.read(SIMPLE_REPLY_HEADER_BYTES - REPLY_MAGIC_BYTES);
    const h = decodeSimpleReplyHeader(Buffer.concat([magicBytes(NBD_SIMPLE_REPLY_MAGIC), rest]));
    if (!h.ok) throw new Error(`nbd client: ${h.reason}`);
    const p = this.take(h.value.cookie);
    this.pending.delete(h.value.cookie);
    if (p.type === NBD_CMD_READ && h.value.errno === 0) {
      p.resolve({ errno: 0, data: Buffer.from(await this.reader.read(p.length)) });
    } else {
      p.resolve({ errno: h.value.errno });
    }
  }

  private async chunk(): Promise<void> {
    const rest = await this.reader.read(STRUCTURED_REPLY_HEADER_BYTES - REPLY_MAGIC_BYTES);
    const h = decodeChunkHeader(Buffer.concat([magicBytes(NBD_STRUCTURED_REPLY_MAGIC), rest]));
    if (!h.ok) throw new Error(`nbd client: ${h.reason}`);
    const p = this.take(h.value.cookie);
    const c = decodeChunkPayload(h.value.type, await this.reader.read(h.value.length));
    if (!c.ok) throw new Error(`nbd client: ${c.reason}`);
    const v = c.value;
    if (v.kind === "data" || v.kind === "hole") {
      p.data ??= Buffer.alloc(p.length);
      const at = v.offset - p.offset;
      const len = v.kind === "data" ? v.data.length : v.length;
      if (at < 0 || at + len > p.length) throw new Error("nbd client: chunk outside the request");
      if (v.kind === "data") v.data.copy(p.data, at);
      else p.data.fill(0, at, at + len);
    } else if (v.kind === "error") {
      p.errno = v.errno;
      p.message = v.message;
    } else if (v.kind === "unknown") {
      throw new Error(`nbd client: unknown chunk type ${v.type}`);
    }
    if ((h.value.flags & NBD_REPLY_FLAG_DONE) !== 0) {
      this.pending.delete(h.value.cookie);
      if (p.errno !== 0) p.resolve({ errno: p.errno, message: p.message });
      else p.resolve({ errno: 0, data: p.type === NBD_CMD_READ ? (p.data ?? Buffer.alloc(p.length)) : undefined });
    }
  }
}

function magicBytes(magic: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(magic, 0);
  return b;
}

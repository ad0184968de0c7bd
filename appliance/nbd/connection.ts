// One NBD client connection over a socket: drives the handshake machine (and
// the TLS upgrade on STARTTLS), then reads pipelined requests and replies to
// each as its export call completes.
// Invariants: a reply is written to the socket in one synchronous burst, so
// replies never interleave; a request's bytes are charged to this connection
// and to the server-wide BufferBudget before its payload is read or its export
// called, and given back once its reply has drained, and reading the socket
// stops while either is full (backpressure, not refusal); the handshake has a
// deadline from accept, transmission a stall timeout; a protocol violation
// closes only this connection.
import type { Socket } from "node:net";
import tls from "node:tls";
import type { Logger } from "pino";
import { InvariantError, assert } from "../invariant.ts";
import type { BufferBudget } from "./buffer-budget.ts";
import { ByteReader, StreamEndedError } from "./byte-reader.ts";
import type { NbdExport, NbdExportProvider } from "./export.ts";
import { Handshake, type HandshakeStep, type Negotiated } from "./handshake.ts";
import {
  CLIENT_FLAGS_BYTES,
  NBD_CMD_DISC,
  NBD_CMD_FLAG_FUA,
  NBD_CMD_FLUSH,
  NBD_CMD_READ,
  NBD_CMD_TRIM,
  NBD_CMD_WRITE,
  NBD_CMD_WRITE_ZEROES,
  NBD_FLAG_READ_ONLY,
  OPTION_HEADER_BYTES,
  REQUEST_HEADER_BYTES,
  decodeRequestHeader,
  encodeErrorChunk,
  encodeNoneChunk,
  encodeOffsetDataHead,
  encodeSimpleReply,
  nbdErrno,
  nbdErrnoName,
  type RequestHeader,
} from "./protocol.ts";
import type { NbdTls, NbdTlsMode } from "./tls-setup.ts";
import { checkRequest, commandName, payloadLimitFor, writePayloadFate, type TransmissionLimits } from "./transmission.ts";

/**
 * Bytes of request payloads plus read replies held per connection before
 * reading pauses; one more request (at most PAYLOAD_HARD_CAP_BYTES) may be
 * admitted past it, so a connection holds at most this plus 32 MiB.
 */
export const IN_FLIGHT_BYTES_MAX = 64 * 1024 * 1024;
/**
 * Requests per connection, from admission until the kernel took the reply,
 * before reading pauses: a client that does not read its replies stops being
 * read after this many, however small they are.
 */
export const IN_FLIGHT_REQUESTS_MAX = 256;
/**
 * Bytes read from the socket ahead of the request loop, the socket's own
 * buffer included (ByteReader).
 */
export const READ_AHEAD_BYTES_MAX = 256 * 1024;
/**
 * What each request is charged beside its data, to the connection and to the
 * budget: its header, and its reply's buffers, write request and callback
 * while the reply waits on a socket the client does not read (about 1.1 KiB of
 * process memory each, measured with zero-length READs). Without it a client
 * pipelining millions of zero-length READs and reading nothing held ~1.6 KiB
 * per 28 bytes charged.
 */
export const REQUEST_COST_BYTES = 2 * 1024;
export const HANDSHAKE_TIMEOUT_MS_DEFAULT = 30_000;
/**
 * Reply parts below this are copied into one buffer per turn of the loop
 * (a write per part cost more than the copy); larger read data goes as it is.
 */
const REPLY_COPY_BYTES_MAX = 64 * 1024;

export interface ConnectionConfig {
  exports: NbdExportProvider;
  logger: Logger;
  maxPayloadBytes: number;
  /** A deadline from accept to transmission (TLS handshake included), not an idle timer. */
  handshakeTimeoutMs: number;
  /** In transmission: a request half received, or replies the client does not take, for this long closes the connection. */
  stallTimeoutMs: number;
  /** In transmission: nothing in flight and nothing received for this long closes the connection; 0 never. */
  idleTimeoutMs: number;
  /** The server-wide bound on bytes held for clients. */
  budget: BufferBudget;
  tlsMode: NbdTlsMode;
  /** Set when tlsMode is not "off". */
  tls?: NbdTls;
  /** The per-export connection limit (ConnectionLimits via the server): a reason refuses. */
  reserveExport(name: string, log: Logger): string | undefined;
  releaseExport(name: string): void;
  /** Milliseconds on a monotonic clock; the stall and idle checks read it. */
  now(): number;
}

/** Thrown inside the loops to end the connection with a logged reason. */
class HardDisconnect extends Error {}

export class NbdConnection {
  private socket: Socket;
  private reader: ByteReader;
  private readonly log: Logger;
  private stopping = false;
  private inFlightBytes = 0;
  private inFlightRequests = 0;
  private admissionWaiter: (() => void) | null = null;
  private drainedWaiter: (() => void) | null = null;
  private exportName: string | undefined;
  private reservedExport: string | undefined;
  private requests = 0;
  private readonly errorCounts = new Map<string, number>();
  private exportErrorLogged = false;
  /** Aborted when the connection ends: a wait for the server-wide budget gives up. */
  private readonly ended = new AbortController();
  /** Charges not yet given back; whatever is left when the socket closes is released then. */
  private readonly charges = new Set<{ bytes: number }>();
  private phase: "handshake" | "transmission" | "closing" = "handshake";
  private receivingPayload = false;
  private lastProgressMs: number;
  private tls = false;
  private budgetBiteLogged = false;
  /** The budget's owner: one share per peer address, whatever its connection count. */
  private readonly peerAddress: string;

  constructor(
    socket: Socket,
    private readonly config: ConnectionConfig,
    id: number,
  ) {
    this.log = config.logger.child({ nbdConn: id, peer: `${socket.remoteAddress ?? "local"}:${socket.remotePort ?? ""}` });
    this.lastProgressMs = config.now();
    this.peerAddress = socket.remoteAddress ?? "local";
    this.socket = socket;
    this.reader = this.attach(socket);
  }

  private attach(socket: Socket): ByteReader {
    // A socket error ends this connection only; 'close' follows and the reader ends.
    socket.on("error", (err) => this.log.warn({ err: err.message }, "nbd: socket error"));
    socket.setNoDelay(true);
    // Write callbacks may never run on a dead socket: wake the request loop so
    // it finds the reader ended instead of waiting for bytes to drain.
    socket.on("close", () => this.wake());
    return new ByteReader(socket, READ_AHEAD_BYTES_MAX, () => (this.lastProgressMs = this.config.now()));
  }

  /** Serves the connection; resolves once the socket is closed. Never rejects. */
  async run(): Promise<void> {
    let reason = "client disconnected";
    try {
      const negotiated = await this.handshake();
      if (negotiated) reason = await this.transmit(negotiated);
      else reason = "handshake ended";
    } catch (err) {
      reason = this.describeEnd(err);
    }
    this.phase = "closing";
    this.ended.abort(new StreamEndedError("connection closed"));
    const s = this.socket;
    s.destroy();
    if (!s.closed) await new Promise<void>((resolve) => s.once("close", () => resolve()));
    // Replies that never drained (the socket died under them) give their bytes back now.
    for (const c of [...this.charges]) this.release(c);
    if (this.reservedExport !== undefined) this.config.releaseExport(this.reservedExport);
    this.log.info(
      { export: this.exportName, tls: this.tls, requests: this.requests, errors: Object.fromEntries(this.errorCounts), reason },
      "nbd: connection closed",
    );
  }

  /** Server shutdown: stop taking requests, let in-flight ones finish, then close. */
  shutdown(): void {
    this.stopping = true;
    this.reader.end(new StreamEndedError("server shutting down"));
    this.ended.abort(new StreamEndedError("server shutting down"));
    this.wake();
  }

  /**
   * The server's periodic check: a transmission that stalled (a request half
   * received, or replies not taken) or idled past its limit is closed.
   */
  checkTimers(nowMs: number): void {
    if (this.phase !== "transmission") return;
    const quietMs = nowMs - this.lastProgressMs;
    const halfReceived = this.receivingPayload || (this.reader.waiting() && this.reader.bufferedBytes() > 0);
    const unsent = this.socket.writableLength > 0;
    if ((halfReceived || unsent) && quietMs > this.config.stallTimeoutMs) {
      const what = halfReceived ? "a request half received" : `${this.socket.writableLength} reply bytes not taken`;
      this.close(`stalled: ${what} for ${quietMs} ms (nbdLimits.stallTimeoutMs ${this.config.stallTimeoutMs})`);
    } else if (this.config.idleTimeoutMs > 0 && !halfReceived && !unsent && this.inFlightRequests === 0 && quietMs > this.config.idleTimeoutMs) {
      this.close(`idle for ${quietMs} ms (nbdLimits.idleTimeoutMs ${this.config.idleTimeoutMs})`);
    }
  }

  private close(reason: string): void {
    if (this.phase === "closing") return;
    this.phase = "closing";
    this.log.warn({ reason }, "nbd: closing connection");
    const err = new StreamEndedError(reason);
    this.reader.end(err);
    this.ended.abort(err);
    this.socket.destroy();
  }

  private describeEnd(err: unknown): string {
    if (err instanceof HardDisconnect) {
      this.log.warn({ reason: err.message }, "nbd: closing connection on protocol violation");
      return err.message;
    }
    if (err instanceof StreamEndedError) return err.message;
    // A broken invariant ends the process (the top level's handler); any other
    // failure (say, an export provider throwing) ends this connection only.
    if (err instanceof InvariantError) throw err;
    this.log.error({ err }, "nbd: connection failed");
    return err instanceof Error ? err.message : String(err);
  }

  // ---- handshake --------------------------------------------------------------
  private async handshake(): Promise<Negotiated | undefined> {
    const hs = new Handshake({
      exports: this.config.exports,
      maxPayloadBytes: this.config.maxPayloadBytes,
      tls: this.config.tlsMode,
      reserveExport: (name) => this.config.reserveExport(name, this.log),
    });
    // A deadline from accept, not socket.setTimeout (an idle timer that any
    // byte resets: a client trickling a byte every 10 s stayed forever).
    const deadline = setTimeout(() => {
      this.log.warn({ timeoutMs: this.config.handshakeTimeoutMs }, "nbd: handshake deadline passed; closing");
      const err = new StreamEndedError(`handshake not finished within ${this.config.handshakeTimeoutMs} ms`);
      this.reader.end(err);
      this.socket.destroy();
    }, this.config.handshakeTimeoutMs);
    try {
      this.socket.write(hs.greeting());
      const flags = await this.reader.read(CLIENT_FLAGS_BYTES);
      this.act(hs.clientFlags(flags));
      while (hs.state === "options") {
        const framed = hs.optionHeader(await this.reader.read(OPTION_HEADER_BYTES));
        if (!framed.ok) {
          this.act(framed.step);
          break;
        }
        const data = await this.reader.read(framed.header.length);
        const step = this.act(hs.option(framed.header, data));
        if (step.negotiated) {
          this.reservedExport = step.negotiated.export.name;
          return step.negotiated;
        }
        if (step.event === "starttls") {
          await this.startTls();
          hs.tlsEstablished();
        }
        if (step.state === "closed") {
          // ABORT: the ACK goes out, then a clean close.
          await new Promise<void>((resolve) => this.socket.end(resolve));
          return undefined;
        }
      }
      return undefined;
    } finally {
      clearTimeout(deadline);
    }
  }

  /** STARTTLS was acknowledged: the same TCP stream continues as TLS. */
  private async startTls(): Promise<void> {
    const setup = this.config.tls;
    assert(setup !== undefined, "nbd: STARTTLS acknowledged without a TLS setup");
    // proto.md: the client starts the TLS handshake only after the ACK; bytes
    // already here would be cleartext smuggled into the TLS session.
    if (this.reader.bufferedBytes() !== 0) throw new HardDisconnect("STARTTLS: client sent bytes before the ACK");
    const raw = this.socket;
    // The ACK must leave in the clear before the socket changes hands.
    await new Promise<void>((resolve) => raw.write(Buffer.alloc(0), () => resolve()));
    this.reader.detach();
    const secure = new tls.TLSSocket(raw, setup.socketOptions);
    this.socket = secure;
    this.reader = this.attach(secure);
    await new Promise<void>((resolve, reject) => {
      secure.once("secure", () => resolve());
      secure.once("error", (err) => reject(err));
      secure.once("close", () => reject(new StreamEndedError("connection closed during the TLS handshake")));
    }).catch((err: unknown) => {
      if (err instanceof StreamEndedError) throw err;
      // A wrong PSK, an untrusted client certificate, a client that does not
      // trust ours: the admin needs the peer and the TLS library's words.
      this.log.warn({ err: (err as Error).message, kind: setup.kind }, "nbd: TLS handshake failed; closing");
      throw new StreamEndedError(`TLS handshake failed: ${(err as Error).message}`);
    });
    // A server socket made by hand (not by tls.Server) does not act on an
    // untrusted client certificate: OpenSSL only records the verify error
    // (a missing certificate already failed the handshake above).
    if (setup.kind === "x509" && setup.socketOptions.requestCert) {
      const handle = (secure as unknown as { ssl?: { verifyError(): Error | null } }).ssl;
      const verifyError = handle ? handle.verifyError() : new Error("TLS state lost");
      if (verifyError !== null) {
        this.log.warn({ err: verifyError.message, kind: setup.kind }, "nbd: TLS client certificate refused; closing");
        throw new StreamEndedError(`TLS client certificate refused: ${verifyError.message}`);
      }
    }
    this.tls = true;
    this.log.info({ kind: setup.kind, protocol: secure.getProtocol(), cipher: secure.getCipher().name }, "nbd: TLS established");
  }

  private act(step: HandshakeStep): HandshakeStep {
    for (const b of step.send) this.socket.write(b);
    if (step.state === "closed" && step.event !== "abort") throw new HardDisconnect(`handshake: ${step.reason ?? step.event}`);
    if (step.event === "optionInvalid" || step.event === "infoOrGoUnknown" || step.event === "tlsRequired" || step.event === "starttlsRefused" || step.event === "goRefused") {
      this.log.info({ reason: step.reason }, "nbd: option refused");
    }
    if (step.negotiated) {
      this.exportName = step.negotiated.export.name;
      this.log.info(
        {
          export: this.exportName,
          tls: this.tls,
          flags: step.negotiated.transmissionFlags,
          structuredReplies: step.negotiated.structuredReplies,
        },
        "nbd: handshake complete",
      );
    }
    return step;
  }

  // ---- transmission -----------------------------------------------------------
  private async transmit(n: Negotiated): Promise<string> {
    const limits: TransmissionLimits = {
      sizeBytes: n.export.sizeBytes,
      readOnly: (n.transmissionFlags & NBD_FLAG_READ_ONLY) !== 0,
      maxPayloadBytes: payloadLimitFor(this.config.maxPayloadBytes, n.clientAskedBlockSize),
    };
    this.phase = "transmission";
    this.lastProgressMs = this.config.now();
    let reason = "client disconnected";
    try {
      // Pipelined requests already read ahead are parsed, charged and handed
      // to the export in one synchronous pass: a promise is awaited only when
      // bytes, the budget or admission make this connection wait.
      while (!this.stopping) {
        if (this.full()) await this.admission();
        if (this.stopping) break;
        const d = decodeRequestHeader(this.reader.tryRead(REQUEST_HEADER_BYTES) ?? (await this.reader.read(REQUEST_HEADER_BYTES)));
        if (!d.ok) throw new HardDisconnect(d.reason);
        const h = d.value;
        if (h.type === NBD_CMD_DISC) {
          reason = "client sent DISC";
          break;
        }
        this.requests++;
        const verdict = checkRequest(h, limits);
        const fate = h.type === NBD_CMD_WRITE ? writePayloadFate(h, verdict) : undefined;
        if (fate === "disconnect") throw new HardDisconnect(`WRITE length ${h.length} is past the hard cap`);
        // Bytes this request holds until its reply drains: a WRITE payload
        // read into memory, or a READ's data, and the request's own cost. A
        // refused WRITE's payload is skipped in read-ahead sized pieces and
        // holds nothing.
        const held = fate === "read" || (h.type === NBD_CMD_READ && verdict.ok) ? h.length : 0;
        const charge = this.chargeNow(REQUEST_COST_BYTES + held) ?? (await this.charge(REQUEST_COST_BYTES + held));
        let payload: Buffer | undefined;
        if (fate !== undefined) {
          this.receivingPayload = true;
          try {
            if (fate === "read") payload = this.reader.tryRead(h.length) ?? (await this.reader.read(h.length));
            else await this.reader.skip(h.length);
          } catch (err) {
            this.release(charge);
            throw err;
          } finally {
            this.receivingPayload = false;
          }
        }
        this.inFlightRequests++;
        if (!verdict.ok) this.reply(n, h, charge, { errno: verdict.errno, message: verdict.message });
        else void this.serve(n.export, n, h, payload, charge);
      }
    } catch (err) {
      if (err instanceof StreamEndedError) reason = err.message;
      else throw err;
    } finally {
      // DISC, end of stream, shutdown or violation: in-flight requests still
      // finish (their writes may already be on the export), then we close.
      await this.drained();
    }
    if (!this.socket.destroyed) await new Promise<void>((resolve) => this.socket.end(resolve));
    return reason;
  }

  /**
   * Takes `bytes` from the server-wide budget, then counts them here. While
   * the budget is short this waits, and the socket is not read meanwhile.
   */
  private async charge(bytes: number): Promise<{ bytes: number }> {
    await this.config.budget.take(bytes, this.peerAddress, this.ended.signal, (why) => {
      // Once per connection: the bite recurs with every request while it holds.
      if (this.budgetBiteLogged) return;
      this.budgetBiteLogged = true;
      this.log.warn({ reason: why }, "nbd: buffer budget full; not reading this connection until bytes come back");
    });
    const c = { bytes };
    this.charges.add(c);
    this.inFlightBytes += bytes;
    return c;
  }

  /** The charge at once when the budget has room and nobody waits, else null (then `charge`). */
  private chargeNow(bytes: number): { bytes: number } | null {
    if (this.ended.signal.aborted || !this.config.budget.tryTake(bytes, this.peerAddress)) return null;
    const c = { bytes };
    this.charges.add(c);
    this.inFlightBytes += bytes;
    return c;
  }

  /** Gives a charge back, once (a drained write and the close may both try). */
  private release(c: { bytes: number }): void {
    if (!this.charges.delete(c)) return;
    this.inFlightBytes -= c.bytes;
    assert(this.inFlightBytes >= 0, "nbd: in-flight byte count went negative");
    this.config.budget.release(c.bytes, this.peerAddress);
    this.wake();
  }

  private async serve(e: NbdExport, n: Negotiated, h: RequestHeader, payload: Buffer | undefined, charge: { bytes: number }): Promise<void> {
    const fua = (h.flags & NBD_CMD_FLAG_FUA) !== 0;
    // checkRequest passed: offset + length is within the export, below 2^53.
    const offset = Number(h.offset);
    let data: Buffer | undefined;
    try {
      switch (h.type) {
        case NBD_CMD_READ:
          data = h.length === 0 ? Buffer.alloc(0) : await e.read(offset, h.length);
          break;
        case NBD_CMD_WRITE:
          if (h.length > 0) await e.write(offset, payload as Buffer, fua);
          break;
        case NBD_CMD_WRITE_ZEROES:
          if (h.length > 0) await e.writeZeroes(offset, h.length, fua);
          break;
        case NBD_CMD_TRIM:
          if (h.length > 0) await e.trim(offset, h.length, fua);
          break;
        case NBD_CMD_FLUSH:
          await e.flush();
          break;
      }
    } catch (err) {
      const errno = nbdErrno(err);
      if (!this.exportErrorLogged) {
        // The first export failure per connection is logged; the rest are
        // counted and summarised when the connection closes.
        this.exportErrorLogged = true;
        this.log.warn({ err, command: commandName(h.type), errno: nbdErrnoName(errno) }, "nbd: export request failed");
      }
      this.reply(n, h, charge, { errno, message: err instanceof Error ? err.message : String(err) });
      return;
    }
    // Outside the try: a short read is an export bug, not a client error.
    assert(h.type !== NBD_CMD_READ || data?.length === h.length, `export ${e.name} read returned ${data?.length} of ${h.length} bytes`);
    this.reply(n, h, charge, { data });
  }

  /** Replies finished in this turn of the event loop, written together by flushReplies(). */
  private outParts: Buffer[] = [];
  private outReleases: (() => void)[] = [];

  /** Queues one reply for this turn's write, and releases its charge once that write has drained. */
  private reply(n: Negotiated, h: RequestHeader, charge: { bytes: number }, r: { errno: number; message: string } | { data?: Buffer }): void {
    const parts = this.outParts;
    if ("errno" in r) {
      const name = nbdErrnoName(r.errno);
      this.errorCounts.set(name, (this.errorCounts.get(name) ?? 0) + 1);
      // With structured replies a READ must not get a simple reply, and an
      // error chunk carries the message to the human.
      if (n.structuredReplies) parts.push(encodeErrorChunk(h.cookie, r.errno, r.message));
      else parts.push(encodeSimpleReply(r.errno, h.cookie));
    } else if (h.type === NBD_CMD_READ) {
      const data = r.data as Buffer;
      // An OFFSET_DATA chunk must describe at least one byte.
      if (n.structuredReplies && data.length === 0) parts.push(encodeNoneChunk(h.cookie));
      else if (n.structuredReplies) parts.push(encodeOffsetDataHead(h.cookie, Number(h.offset), data.length, true), data);
      else if (data.length === 0) parts.push(encodeSimpleReply(0, h.cookie));
      else parts.push(encodeSimpleReply(0, h.cookie), data);
    } else {
      parts.push(encodeSimpleReply(0, h.cookie));
    }
    // The request is answered once its reply is queued on the socket; its
    // bytes stay charged until the kernel has taken them, so a client that
    // does not read its replies stops being read from.
    this.inFlightRequests--;
    this.outReleases.push(() => this.release(charge));
    // Replies finished in one turn of the event loop (a group commit
    // resolves dozens of writes at once) leave in one socket write.
    if (this.outReleases.length === 1) setImmediate(() => this.flushReplies());
    assert(this.inFlightRequests >= 0, "nbd: in-flight request count went negative");
    this.wake();
    if (this.inFlightRequests === 0) {
      const d = this.drainedWaiter;
      this.drainedWaiter = null;
      d?.();
    }
  }

  /**
   * One write for this turn's replies: small parts (headers, 4 KiB reads)
   * copied into one buffer, large read data passed as it is; one callback
   * gives back every charge once the kernel has taken the last byte.
   */
  private flushReplies(): void {
    const parts = this.outParts;
    const releases = this.outReleases;
    if (releases.length === 0) return; // written already, before a close
    this.outParts = [];
    this.outReleases = [];
    const done = () => {
      this.lastProgressMs = this.config.now();
      for (const r of releases) r();
    };
    if (this.socket.destroyed || !this.socket.writable) return done();
    const small: Buffer[] = [];
    let smallBytes = 0;
    const out: Buffer[] = [];
    const cut = () => {
      if (small.length === 0) return;
      out.push(small.length === 1 ? small[0] : Buffer.concat(small, smallBytes));
      small.length = 0;
      smallBytes = 0;
    };
    for (const p of parts) {
      if (p.length >= REPLY_COPY_BYTES_MAX) {
        cut();
        out.push(p);
      } else {
        small.push(p);
        smallBytes += p.length;
        if (smallBytes >= REPLY_COPY_BYTES_MAX) cut();
      }
    }
    cut();
    if (out.length > 1) this.socket.cork();
    out.forEach((b, i) => this.socket.write(b, i === out.length - 1 ? done : undefined));
    if (out.length > 1) this.socket.uncork();
  }

  private wake(): void {
    const w = this.admissionWaiter;
    this.admissionWaiter = null;
    w?.();
  }

  private full(): boolean {
    return this.inFlightBytes >= IN_FLIGHT_BYTES_MAX || this.charges.size >= IN_FLIGHT_REQUESTS_MAX;
  }

  private async admission(): Promise<void> {
    // One request's charge (at most REQUEST_COST_BYTES plus
    // PAYLOAD_HARD_CAP_BYTES) is below the bound, so once earlier replies
    // drain the next one is admitted. Charges are given back once the reply
    // drained: replies queued on a socket the client does not read count too.
    while (!this.stopping && !this.socket.destroyed && this.full()) {
      await new Promise<void>((resolve) => (this.admissionWaiter = resolve));
    }
  }

  private async drained(): Promise<void> {
    while (this.inFlightRequests > 0) await new Promise<void>((resolve) => (this.drainedWaiter = resolve));
    // The last replies go out before the caller ends the socket.
    this.flushReplies();
  }
}

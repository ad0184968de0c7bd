// One NBD client connection over a socket: drives the handshake machine, then
// reads pipelined requests and replies to each as its export call completes.
// Invariants: a reply is written to the socket in one synchronous burst, so
// replies never interleave; reading stops while in-flight bytes or requests
// are at their bound; a protocol violation closes only this connection.
import type { Socket } from "node:net";
import type { Logger } from "pino";
import { InvariantError, assert } from "../invariant.ts";
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
import { checkRequest, commandName, writePayloadFate, type TransmissionLimits } from "./transmission.ts";

/** Bytes of request payloads plus read replies held per connection before reading pauses. */
export const IN_FLIGHT_BYTES_MAX = 64 * 1024 * 1024;
/** Requests being served per connection before reading pauses. */
export const IN_FLIGHT_REQUESTS_MAX = 256;
/** Bytes the reader may buffer ahead of the request loop. */
export const READ_AHEAD_BYTES_MAX = 256 * 1024;
export const HANDSHAKE_TIMEOUT_MS_DEFAULT = 30_000;

export interface ConnectionConfig {
  exports: NbdExportProvider;
  logger: Logger;
  maxPayloadBytes: number;
  handshakeTimeoutMs: number;
}

/** Thrown inside the loops to end the connection with a logged reason. */
class HardDisconnect extends Error {}

export class NbdConnection {
  private readonly reader: ByteReader;
  private readonly log: Logger;
  private stopping = false;
  private inFlightBytes = 0;
  private inFlightRequests = 0;
  private admissionWaiter: (() => void) | null = null;
  private drainedWaiter: (() => void) | null = null;
  private exportName: string | undefined;
  private requests = 0;
  private readonly errorCounts = new Map<string, number>();
  private exportErrorLogged = false;

  constructor(
    private readonly socket: Socket,
    private readonly config: ConnectionConfig,
    id: number,
  ) {
    this.log = config.logger.child({ nbdConn: id, peer: `${socket.remoteAddress ?? "local"}:${socket.remotePort ?? ""}` });
    this.reader = new ByteReader(socket, READ_AHEAD_BYTES_MAX);
    // A socket error ends this connection only; 'close' follows and the reader ends.
    socket.on("error", (err) => this.log.warn({ err: err.message }, "nbd: socket error"));
    socket.setNoDelay(true);
    // Write callbacks may never run on a dead socket: wake the request loop so
    // it finds the reader ended instead of waiting for bytes to drain.
    socket.on("close", () => this.wake());
  }

  /** Serves the connection; resolves once the socket is closed. Never rejects. */
  async run(): Promise<void> {
    const closed = new Promise<void>((resolve) => this.socket.once("close", () => resolve()));
    let reason = "client disconnected";
    try {
      const negotiated = await this.handshake();
      if (negotiated) reason = await this.transmit(negotiated);
      else reason = "handshake ended";
    } catch (err) {
      reason = this.describeEnd(err);
    }
    this.socket.destroy();
    await closed;
    this.log.info(
      { export: this.exportName, requests: this.requests, errors: Object.fromEntries(this.errorCounts), reason },
      "nbd: connection closed",
    );
  }

  /** Server shutdown: stop taking requests, let in-flight ones finish, then close. */
  shutdown(): void {
    this.stopping = true;
    this.reader.end(new StreamEndedError("server shutting down"));
    this.wake();
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
    const hs = new Handshake(this.config.exports, this.config.maxPayloadBytes);
    this.socket.setTimeout(this.config.handshakeTimeoutMs, () => {
      this.log.warn({ timeoutMs: this.config.handshakeTimeoutMs }, "nbd: handshake timed out");
      this.reader.end(new StreamEndedError("handshake timed out"));
    });
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
        if (step.negotiated) return step.negotiated;
        if (step.state === "closed") {
          // ABORT: the ACK goes out, then a clean close.
          await new Promise<void>((resolve) => this.socket.end(resolve));
          return undefined;
        }
      }
      return undefined;
    } finally {
      this.socket.setTimeout(0);
    }
  }

  private act(step: HandshakeStep): HandshakeStep {
    for (const b of step.send) this.socket.write(b);
    if (step.state === "closed" && step.event !== "abort") throw new HardDisconnect(`handshake: ${step.reason ?? step.event}`);
    if (step.event === "optionInvalid" || step.event === "infoOrGoUnknown") {
      this.log.info({ reason: step.reason }, "nbd: option refused");
    }
    if (step.negotiated) {
      this.exportName = step.negotiated.export.name;
      this.log.info(
        {
          export: this.exportName,
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
      maxPayloadBytes: this.config.maxPayloadBytes,
    };
    let reason = "client disconnected";
    try {
      while (!this.stopping) {
        await this.admission();
        if (this.stopping) break;
        const d = decodeRequestHeader(await this.reader.read(REQUEST_HEADER_BYTES));
        if (!d.ok) throw new HardDisconnect(d.reason);
        const h = d.value;
        if (h.type === NBD_CMD_DISC) {
          reason = "client sent DISC";
          break;
        }
        this.requests++;
        const verdict = checkRequest(h, limits);
        let payload: Buffer | undefined;
        if (h.type === NBD_CMD_WRITE) {
          const fate = writePayloadFate(h, verdict);
          if (fate === "disconnect") throw new HardDisconnect(`WRITE length ${h.length} is past the hard cap`);
          if (fate === "read") payload = await this.reader.read(h.length);
          else await this.reader.skip(h.length);
        }
        const charge = REQUEST_HEADER_BYTES + h.length * Number(h.type === NBD_CMD_WRITE || (h.type === NBD_CMD_READ && verdict.ok));
        this.inFlightBytes += charge;
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

  private async serve(e: NbdExport, n: Negotiated, h: RequestHeader, payload: Buffer | undefined, charge: number): Promise<void> {
    const fua = (h.flags & NBD_CMD_FLAG_FUA) !== 0;
    let data: Buffer | undefined;
    try {
      switch (h.type) {
        case NBD_CMD_READ:
          data = h.length === 0 ? Buffer.alloc(0) : await e.read(h.offset, h.length);
          break;
        case NBD_CMD_WRITE:
          if (h.length > 0) await e.write(h.offset, payload as Buffer, fua);
          break;
        case NBD_CMD_WRITE_ZEROES:
          if (h.length > 0) await e.writeZeroes(h.offset, h.length, fua);
          break;
        case NBD_CMD_TRIM:
          if (h.length > 0) await e.trim(h.offset, h.length, fua);
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

  /** Writes one reply in a single synchronous burst and releases its charge once flushed. */
  private corked = false;

  private reply(n: Negotiated, h: RequestHeader, charge: number, r: { errno: number; message: string } | { data?: Buffer }): void {
    const parts: Buffer[] = [];
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
      else if (n.structuredReplies) parts.push(encodeOffsetDataHead(h.cookie, h.offset, data.length, true), data);
      else parts.push(encodeSimpleReply(0, h.cookie), data);
    } else {
      parts.push(encodeSimpleReply(0, h.cookie));
    }
    // The request is answered once its reply is queued on the socket; its
    // bytes stay charged until the kernel has taken them, so a client that
    // does not read its replies stops being read from.
    this.inFlightRequests--;
    const release = () => this.releaseBytes(charge);
    if (this.socket.destroyed || !this.socket.writable) release();
    else {
      // Replies finished in one turn of the event loop (a group commit
      // resolves dozens of writes at once) leave in one socket write.
      if (!this.corked) {
        this.corked = true;
        this.socket.cork();
        setImmediate(() => {
          this.corked = false;
          this.socket.uncork();
        });
      }
      parts.forEach((p, i) => this.socket.write(p, i === parts.length - 1 ? release : undefined));
    }
    assert(this.inFlightRequests >= 0, "nbd: in-flight request count went negative");
    this.wake();
    if (this.inFlightRequests === 0) {
      const d = this.drainedWaiter;
      this.drainedWaiter = null;
      d?.();
    }
  }

  private releaseBytes(charge: number): void {
    this.inFlightBytes -= charge;
    assert(this.inFlightBytes >= 0, "nbd: in-flight byte count went negative");
    this.wake();
  }

  private wake(): void {
    const w = this.admissionWaiter;
    this.admissionWaiter = null;
    w?.();
  }

  private async admission(): Promise<void> {
    // One request's charge (at most a header plus PAYLOAD_HARD_CAP_BYTES) is
    // below the bound, so once earlier replies drain the next one is admitted.
    const full = () => this.inFlightBytes >= IN_FLIGHT_BYTES_MAX || this.inFlightRequests >= IN_FLIGHT_REQUESTS_MAX;
    while (!this.stopping && !this.socket.destroyed && full()) {
      await new Promise<void>((resolve) => (this.admissionWaiter = resolve));
    }
  }

  private async drained(): Promise<void> {
    while (this.inFlightRequests > 0) await new Promise<void>((resolve) => (this.drainedWaiter = resolve));
  }
}

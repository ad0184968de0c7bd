// Authenticated connections (subsystem links, CLI/RCM control): TLS with mutual authentication
// (link-tls.ts, docs/security.md), then inside it the HMAC handshake of docs/wire.md, then frames.
// Invariants: nothing but handshake frames flows before both sides proved the cluster key; under TLS
// a replication link's TLS identity names the node its hello claims; a bad byte, a TLS failure or a
// socket error ends that one connection (logged with the peer's address), never the server or the process.
import { EventEmitter } from "node:events";
import net from "node:net";
import tls from "node:tls";
import { createHmac, randomBytes, timingSafeEqual } from "node:crypto";
import type { Logger } from "pino";
import {
  encodeFrame,
  ERROR_MESSAGE_BYTES_MAX,
  FRAME_PAYLOAD_MAX,
  FrameDecoder,
  FrameError,
  NONCE_BYTES,
  roleCode,
  WIRE_ERROR,
  describeWireError,
  type Frame,
  type FrameType,
  type LinkRole,
  type WireErrorCode,
} from "./frames.ts";
import type { ErrorCodeOf } from "../errors/codes.ts";
import { certIdentity, securityOf, subsystemIdentity, tlsClientOptions, tlsServerOptions, type LinkSecurity, type LinkTls } from "./link-tls.ts";

export type { LinkRole } from "./frames.ts";

/** Handshake frames are small (the largest is an error frame); a stranger cannot make us hold more. */
export const HANDSHAKE_PAYLOAD_MAX = 8192;
/** After close() has flushed what was queued, a peer that does not close its side is cut off. */
export const LINK_CLOSE_GRACE_MS = 2000;

const SERVER_LABEL = Buffer.from("tidemark-v1 server", "utf8");
const CLIENT_LABEL = Buffer.from("tidemark-v1 client", "utf8");

/** The registry's TM_LINK_* codes (appliance/errors/codes.ts). */
export type LinkErrorCode = ErrorCodeOf<"TM_LINK_">;

/** Why a handshake failed or a link closed; the message names the peer. */
export class LinkError extends Error {
  readonly code: LinkErrorCode;
  constructor(code: LinkErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "LinkError";
    this.code = code;
  }
}

export interface LinkPeer {
  /** The connection's role, as the client declared it in its hello. */
  role: LinkRole;
  /** The other side's node id (0 for a control client). */
  nodeId: number;
  /** "host:port" of the other side. */
  address: string;
}

/** The node id the RCM announces in its challenge (it is no subsystem). */
export const RCM_NODE_ID = 0xfffe;

/** The TLS identity node `nodeId` must present on a replication link, or as a server; null: any the CA or PSK admits. */
function identityFor(role: LinkRole, nodeId: number): string | null {
  if (nodeId === RCM_NODE_ID) return "rcm";
  if (role === "control" && nodeId === 0) return null;
  return subsystemIdentity(nodeId);
}

export interface LinkEvents {
  frame: [frame: Frame];
  close: [error?: Error];
}

function keyBytes(key: string): Buffer {
  if (typeof key !== "string" || key.length === 0) throw new Error("link: the cluster key must be a non-empty string");
  return Buffer.from(key, "utf8");
}

function u16(n: number): Buffer {
  const b = Buffer.alloc(2);
  b.writeUInt16BE(n, 0);
  return b;
}

/** The server's proof: HMAC-SHA256(key, "tidemark-v1 server" || clientNonce || serverNonce || u16 serverNodeId). */
export function serverMac(key: Buffer, clientNonce: Buffer, serverNonce: Buffer, serverNodeId: number): Buffer {
  return createHmac("sha256", key).update(SERVER_LABEL).update(clientNonce).update(serverNonce).update(u16(serverNodeId)).digest();
}

/** The client's proof: HMAC-SHA256(key, "tidemark-v1 client" || clientNonce || serverNonce || u8 role || u16 clientNodeId). */
export function clientMac(key: Buffer, clientNonce: Buffer, serverNonce: Buffer, role: LinkRole, clientNodeId: number): Buffer {
  return createHmac("sha256", key)
    .update(CLIENT_LABEL)
    .update(clientNonce)
    .update(serverNonce)
    .update(Buffer.of(roleCode(role)))
    .update(u16(clientNodeId))
    .digest();
}

function macEqual(a: Buffer, b: Buffer): boolean {
  // Both are 32 bytes by the codec; the length test only guards timingSafeEqual's precondition.
  return a.length === b.length && timingSafeEqual(a, b);
}

function remoteAddress(socket: net.Socket): string {
  const host = socket.remoteAddress ?? "unknown";
  return `${host.includes(":") ? `[${host}]` : host}:${socket.remotePort ?? 0}`;
}

/** A handshake refusal (about no one group); the message is cut at a character boundary to fit the frame's bound. */
function errorFrame(code: WireErrorCode, message: string): Buffer {
  let text = message;
  while (Buffer.byteLength(text, "utf8") > ERROR_MESSAGE_BYTES_MAX) text = text.slice(0, Math.floor(text.length * 0.9));
  return encodeFrame({ type: "error", code, group: "", message: text });
}

/** Ends the socket after the last bytes are flushed; destroys it if the peer does not close in time. */
function endSocket(socket: net.Socket, last?: Buffer): void {
  if (socket.destroyed) return;
  if (last && socket.writable) socket.end(last);
  else socket.end();
  setTimeout(() => socket.destroy(), LINK_CLOSE_GRACE_MS).unref();
}

/**
 * One authenticated connection. Created by connectLink() or by a link server
 * once the handshake is complete; frames that arrived with the end of the
 * handshake and everything after are held, and the socket is not read, until
 * the first 'frame' listener is attached, so none is lost between the
 * handshake and the caller's wiring.
 * Events: 'frame' (Frame) for every frame after the handshake ('error' frames
 * included), 'close' (error?) once, with the reason unless close() was called
 * or the peer closed cleanly between frames.
 */
export class Link extends EventEmitter<LinkEvents> {
  readonly peer: LinkPeer;
  /** TLS mode, protocol, cipher and the peer's identity (status). */
  readonly security: LinkSecurity;
  readonly #socket: net.Socket;
  readonly #decoder: FrameDecoder;
  readonly #logger: Logger;
  #pending: Frame[];
  #started = false;
  #closing = false;
  #closed = false;
  #closeError: Error | undefined;

  /** @internal Use connectLink() or createLinkServer(). */
  constructor(socket: net.Socket, decoder: FrameDecoder, peer: LinkPeer, logger: Logger, pending: Frame[], security: LinkSecurity) {
    super();
    this.peer = peer;
    this.security = security;
    this.#socket = socket;
    this.#decoder = decoder;
    this.#logger = logger;
    this.#pending = pending;
    decoder.setPayloadMax(FRAME_PAYLOAD_MAX);
    socket.pause();
    socket.on("data", (chunk: Buffer) => this.#onData(chunk));
    socket.on("end", () => this.#onEnd());
    socket.on("error", (err) => this.#onSocketError(err));
    socket.on("close", () => this.#onClose());
    (this as EventEmitter).on("newListener", (event: string | symbol) => {
      if (event === "frame" && !this.#started) {
        this.#started = true;
        // The listener is added after this event returns: deliver on the next microtask.
        queueMicrotask(() => this.#start());
      }
    });
    if (socket.destroyed) queueMicrotask(() => this.#onClose());
  }

  /** Bytes written and not yet taken by the socket: an event subscriber's unread events (events/hub.ts). */
  get bufferedSendBytes(): number {
    return this.#socket.writableLength;
  }

  /** host:port of the peer, for log lines about it. */
  get peerAddress(): string {
    return this.peer.address;
  }

  /** True once the socket has closed ('close' has been or is being emitted). */
  get closed(): boolean {
    return this.#closed;
  }

  /** Encodes and writes a frame; false means the socket's buffer is full (await whenDrained()) or the link is closing. */
  send(frame: Frame): boolean {
    return this.sendRaw(encodeFrame(frame));
  }

  /** Writes bytes that already hold whole encoded frames (e.g. kept for a resend). */
  sendRaw(buf: Buffer): boolean {
    if (this.#closing || this.#closed || !this.#socket.writable) return false;
    return this.#socket.write(buf);
  }

  /** Resolves when the socket can take more; rejects with TM_LINK_CLOSED if the link closes first. */
  whenDrained(): Promise<void> {
    if (this.#closing || this.#closed) return Promise.reject(this.#closedError());
    if (!this.#socket.writableNeedDrain) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const onDrain = (): void => {
        this.#socket.off("close", onClose);
        resolve();
      };
      const onClose = (): void => {
        this.#socket.off("drain", onDrain);
        reject(this.#closedError());
      };
      this.#socket.once("drain", onDrain);
      this.#socket.once("close", onClose);
    });
  }

  /** Flushes what is queued, then closes; 'close' follows without an error. */
  close(): void {
    if (this.#closing || this.#closed) return;
    this.#closing = true;
    endSocket(this.#socket);
  }

  #closedError(): LinkError {
    return new LinkError("TM_LINK_CLOSED", `link to ${this.peer.address} is closed`, { cause: this.#closeError });
  }

  #start(): void {
    const pending = this.#pending;
    this.#pending = [];
    this.#deliver(pending);
    if (!this.#closing && !this.#closed) this.#socket.resume();
  }

  #deliver(frames: Frame[]): void {
    for (const frame of frames) {
      if (this.#closing || this.#closed) return;
      if (frame.type === "hello" || frame.type === "challenge" || frame.type === "auth" || frame.type === "ready") {
        this.#fail(new LinkError("TM_LINK_PROTOCOL", `${this.peer.address} sent a ${frame.type} frame after the handshake`));
        return;
      }
      this.emit("frame", frame);
    }
  }

  #onData(chunk: Buffer): void {
    let frames: Frame[];
    try {
      frames = this.#decoder.push(chunk);
    } catch (err) {
      if (!(err instanceof FrameError)) throw err;
      this.#fail(err);
      return;
    }
    this.#deliver(frames);
  }

  #onEnd(): void {
    const held = this.#decoder.bufferedBytes;
    if (held > 0 && !this.#closing) {
      this.#fail(
        new LinkError(
          "TM_LINK_PROTOCOL",
          `${this.peer.address} ended the connection inside a frame (${held} bytes held at stream offset ${this.#decoder.streamOffset - held})`,
        ),
      );
    }
  }

  #onSocketError(err: Error): void {
    this.#closeError ??= err;
    this.#logger.warn({ peer: this.peer.address, nodeId: this.peer.nodeId, err: err.message }, "link socket error");
  }

  /** A protocol fault ends this connection at once: the stream cannot be trusted past it. */
  #fail(err: Error): void {
    this.#closeError ??= err;
    this.#logger.warn({ peer: this.peer.address, nodeId: this.peer.nodeId, err: err.message }, "dropping link: bad frame");
    this.#socket.destroy();
  }

  #onClose(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#pending = [];
    this.emit("close", this.#closeError);
  }
}

// ---------------------------------------------------------------- handshake

/**
 * Reads handshake frames from a socket until `step` returns a result, then
 * stops reading (the socket is left paused) and calls onDone with the frames
 * that arrived after the last handshake frame. `step` returns undefined to
 * wait for more and throws to refuse; decode faults go to onFault too.
 * Returns a function that stops reading, for when the handshake is abandoned.
 */
function readHandshake<T>(
  socket: net.Socket,
  decoder: FrameDecoder,
  step: (frame: Frame) => T | undefined,
  onFault: (err: Error) => void,
  onDone: (value: T, rest: Frame[]) => void,
): () => void {
  const onData = (chunk: Buffer): void => {
    let frames: Frame[];
    try {
      frames = decoder.push(chunk);
    } catch (err) {
      onFault(err as Error);
      return;
    }
    for (let i = 0; i < frames.length; i++) {
      let value: T | undefined;
      try {
        value = step(frames[i]);
      } catch (err) {
        onFault(err as Error);
        return;
      }
      if (value !== undefined) {
        socket.pause();
        socket.off("data", onData);
        onDone(value, frames.slice(i + 1));
        return;
      }
    }
  };
  socket.on("data", onData);
  return () => socket.off("data", onData);
}

/** Thrown by a handshake step: refuse the peer with an error frame carrying `wireCode`. */
class Refusal extends LinkError {
  readonly wireCode: WireErrorCode;
  /** Message sent to the peer (the local error message names the peer instead). */
  readonly peerMessage: string;
  constructor(code: LinkErrorCode, wireCode: WireErrorCode, message: string, peerMessage: string) {
    super(code, message);
    this.wireCode = wireCode;
    this.peerMessage = peerMessage;
  }
}

/** What each handshake state accepts: the doc's sequence table, as data. */
const CLIENT_EXPECTS: Record<"challenge" | "ready", FrameType> = { challenge: "challenge", ready: "ready" };
const SERVER_EXPECTS: Record<"hello" | "auth", FrameType> = { hello: "hello", auth: "auth" };

export interface ConnectLinkOptions {
  host: string;
  port: number;
  /** The cluster key (config/keys.ts); its UTF-8 bytes key the HMAC. */
  key: string;
  /** TLS around the connection (link-tls.ts); mode "off" is plain TCP. */
  tls: LinkTls;
  role: LinkRole;
  /** This node's id; 0 for a control client. */
  nodeId: number;
  /** Bound on connect plus handshake. */
  timeoutMs: number;
  logger: Logger;
  /** If set, refuse a server that announces another node id. */
  peerNodeId?: number;
}

/**
 * Client side: connect, send hello, check the server's proof, send ours, wait
 * for ready. Rejects with a LinkError naming host:port (TM_LINK_CONNECT,
 * TM_LINK_TIMEOUT, TM_LINK_AUTH, TM_LINK_REFUSED, TM_LINK_PROTOCOL,
 * TM_LINK_CLOSED).
 */
export function connectLink(options: ConnectLinkOptions): Promise<Link> {
  const { host, port, role, nodeId, timeoutMs, logger } = options;
  const where = `${host.includes(":") ? `[${host}]` : host}:${port}`;
  const clientNonce = randomBytes(NONCE_BYTES);
  let key: Buffer;
  let helloBytes: Buffer;
  try {
    key = keyBytes(options.key);
    // Encoded before connecting so a bad role or node id is refused here, not in a socket callback.
    helloBytes = encodeFrame({ type: "hello", role, nodeId, nonce: clientNonce });
  } catch (err) {
    return Promise.reject(err);
  }
  const decoder = new FrameDecoder({ payloadMax: HANDSHAKE_PAYLOAD_MAX });

  return new Promise<Link>((resolve, reject) => {
    const t = options.tls;
    let pskHint: string | null = null;
    const socket = t.mode === "off" ? net.connect({ host, port }) : tls.connect({ host, port, ...tlsClientOptions(t, (hint) => (pskHint = hint)) });
    socket.setNoDelay(true);
    let settled = false;
    let connected = false;
    let secured = t.mode === "off";
    let serverNodeId = 0;
    let state: keyof typeof CLIENT_EXPECTS = "challenge";
    // TLS 1.3 sends no PSK identity hint: a PSK server is known by the node id of its
    // HMAC-proven challenge (every holder of the PSK is equal; only x509 names each node).
    const peerIdentity = (): string | null =>
      t.mode === "psk" ? (pskHint ?? (serverNodeId === 0 ? null : identityFor("link", serverNodeId))) : t.mode === "x509" ? certIdentity(socket as tls.TLSSocket) : null;

    const onConnect = (): void => {
      connected = true;
      if (t.mode === "off") socket.write(helloBytes);
    };
    const onSecure = (): void => {
      secured = true;
      socket.write(helloBytes);
    };
    const onError = (err: Error): void => {
      fail(
        connected && !secured
          ? new LinkError("TM_LINK_TLS", `TLS (${t.mode}) with ${where} failed: ${err.message}`, { cause: err })
          : new LinkError(
              connected ? "TM_LINK_CLOSED" : "TM_LINK_CONNECT",
              connected ? `connection to ${where} failed during the handshake: ${err.message}` : `cannot connect to ${where}: ${err.message}`,
              { cause: err },
            ),
      );
    };
    const onClose = (): void => {
      // Under TLS 1.3 our side of the TLS handshake ends before the server has checked
      // our certificate: a server that closes before its challenge most likely refused it.
      const tlsRefused = connected && (!secured || (t.mode !== "off" && state === "challenge"));
      fail(
        tlsRefused
          ? new LinkError("TM_LINK_TLS", `peer at ${where} closed the connection during the TLS (${t.mode}) handshake or before its challenge: it refused our key or certificate`)
          : new LinkError("TM_LINK_CLOSED", `peer at ${where} closed the connection during the handshake`),
      );
    };
    const unlisten = (): void => {
      clearTimeout(timer);
      stopReading();
      socket.off("connect", onConnect);
      socket.off("secureConnect", onSecure);
      socket.off("error", onError);
      socket.off("close", onClose);
    };
    const fail = (err: LinkError, tellPeer?: Buffer): void => {
      if (settled) return;
      settled = true;
      unlisten();
      // Late socket errors after giving up must not become uncaught exceptions.
      socket.on("error", () => {});
      if (tellPeer) endSocket(socket, tellPeer);
      else socket.destroy();
      reject(err);
    };

    const timer = setTimeout(() => {
      fail(
        new LinkError(
          "TM_LINK_TIMEOUT",
          connected
            ? `peer at ${where} did not complete the handshake within ${timeoutMs} ms`
            : `could not connect to ${where} within ${timeoutMs} ms`,
        ),
      );
    }, timeoutMs);
    socket.on("connect", onConnect);
    socket.on("secureConnect", onSecure);
    socket.on("error", onError);
    socket.on("close", onClose);

    const step = (frame: Frame): true | undefined => {
      if (frame.type === "error") {
        throw new LinkError("TM_LINK_REFUSED", `peer at ${where} refused the handshake: ${frame.message} (${describeWireError(frame.code)})`);
      }
      if (frame.type !== CLIENT_EXPECTS[state]) {
        throw new Refusal(
          "TM_LINK_PROTOCOL",
          WIRE_ERROR.protocol,
          `peer at ${where} sent ${frame.type} while a ${CLIENT_EXPECTS[state]} was expected`,
          `expected ${CLIENT_EXPECTS[state]}, got ${frame.type}`,
        );
      }
      if (frame.type === "challenge") {
        if (!macEqual(frame.mac, serverMac(key, clientNonce, frame.nonce, frame.nodeId))) {
          throw new Refusal(
            "TM_LINK_AUTH",
            WIRE_ERROR.auth,
            `peer at ${where} does not hold the cluster key`,
            "your challenge proof is wrong: you do not hold the cluster key",
          );
        }
        if (options.peerNodeId !== undefined && frame.nodeId !== options.peerNodeId) {
          throw new Refusal(
            "TM_LINK_PROTOCOL",
            WIRE_ERROR.role,
            `peer at ${where} is node ${frame.nodeId}, not node ${options.peerNodeId}`,
            `expected node ${options.peerNodeId}, you are node ${frame.nodeId}`,
          );
        }
        const wanted = identityFor("link", frame.nodeId);
        const identity = peerIdentity();
        if (t.mode === "x509" && wanted !== null && identity !== wanted) {
          throw new Refusal(
            "TM_LINK_TLS",
            WIRE_ERROR.auth,
            `peer at ${where} says it is node ${frame.nodeId} but its TLS identity is ${JSON.stringify(identity)}, not "${wanted}"`,
            `node ${frame.nodeId} must have TLS identity "${wanted}"`,
          );
        }
        serverNodeId = frame.nodeId;
        socket.write(encodeFrame({ type: "auth", mac: clientMac(key, clientNonce, frame.nonce, role, nodeId) }));
        state = "ready";
        return undefined;
      }
      return true;
    };
    const onFault = (err: Error): void => {
      if (err instanceof Refusal) fail(err, errorFrame(err.wireCode, err.peerMessage));
      else if (err instanceof LinkError) fail(err);
      else fail(new LinkError("TM_LINK_PROTOCOL", `peer at ${where} sent a bad handshake frame: ${err.message}`, { cause: err }));
    };
    const onDone = (_ready: true, rest: Frame[]): void => {
      if (settled) return;
      settled = true;
      unlisten();
      const link = new Link(socket, decoder, { role, nodeId: serverNodeId, address: where }, logger, rest, securityOf(t.mode, t.mode === "off" ? null : (socket as tls.TLSSocket), peerIdentity()));
      logger.debug({ peer: where, nodeId: serverNodeId, role }, "link established");
      resolve(link);
    };
    const stopReading = readHandshake(socket, decoder, step, onFault, onDone);
  });
}

export interface LinkServerOptions {
  /** The cluster key (config/keys.ts); its UTF-8 bytes key the HMAC. */
  key: string;
  /** TLS around every connection (link-tls.ts); mode "off" is plain TCP. */
  tls: LinkTls;
  /** This node's id, announced in the challenge. */
  nodeId: number;
  logger: Logger;
  /** Every connection must finish the handshake within this bound or is closed. */
  handshakeTimeoutMs: number;
  /** Called once per authenticated connection; attach 'frame' and 'close' here. */
  onLink: (link: Link) => void;
}

/**
 * Server side: a net.Server (not yet listening) that runs the handshake on
 * every connection and passes each authenticated one to onLink. Refusals and
 * faults are logged with the remote address and end only that connection.
 */
export function createLinkServer(options: LinkServerOptions): net.Server {
  const key = keyBytes(options.key);
  const t = options.tls;
  if (t.mode === "off") return net.createServer((socket) => acceptConnection(socket, key, options, null));
  // The PSK identity a client claimed, kept until its connection is handed over (no getter on the socket).
  const claimed = new WeakMap<tls.TLSSocket, string>();
  const server = tls.createServer(
    tlsServerOptions(t, options.handshakeTimeoutMs, (socket, identity) => {
      claimed.set(socket, identity);
      return true;
    }),
    (socket) => acceptConnection(socket, key, options, t.mode === "psk" ? (claimed.get(socket) ?? null) : certIdentity(socket)),
  );
  // Read each TCP socket's address at accept: a TLS socket that failed its handshake may
  // already be closed, and a closed socket no longer knows its peer (Node caches the
  // address once read, on the TCP socket the TLS socket keeps as _parent).
  const addresses = new WeakMap<net.Socket, string>();
  server.prependListener("connection", (raw: net.Socket) => void addresses.set(raw, remoteAddress(raw)));
  // A wrong PSK, an untrusted certificate, a plain-TCP client or a stalled TLS handshake: that connection only.
  server.on("tlsClientError", (err: Error, socket: tls.TLSSocket) => {
    const raw = (socket as tls.TLSSocket & { _parent?: net.Socket })._parent;
    const peer = (raw && addresses.get(raw)) ?? remoteAddress(socket);
    options.logger.warn({ peer, tls: t.mode, err: err.message }, "refusing connection: TLS handshake failed");
    socket.destroy();
  });
  return server;
}

function acceptConnection(socket: net.Socket, key: Buffer, options: LinkServerOptions, tlsIdentity: string | null): void {
  const { logger, nodeId, handshakeTimeoutMs } = options;
  const mode = options.tls.mode;
  const address = remoteAddress(socket);
  const decoder = new FrameDecoder({ payloadMax: HANDSHAKE_PAYLOAD_MAX });
  const serverNonce = randomBytes(NONCE_BYTES);
  socket.setNoDelay(true);
  let done = false;
  let state: keyof typeof SERVER_EXPECTS = "hello";
  let hello: { role: LinkRole; nodeId: number; nonce: Buffer } | null = null;

  const onError = (err: Error): void => drop("connection failed during the handshake", err);
  const onEnd = (): void => drop("peer closed during the handshake", new Error(`ended after ${decoder.streamOffset} bytes`));
  const onClose = (): void => finish();
  // Once given up on, a connection keeps a no-op error listener: a late reset must not crash the server.
  const ignoreError = (): void => {};
  socket.on("error", ignoreError);
  socket.on("error", onError);
  socket.on("end", onEnd);
  socket.on("close", onClose);

  const finish = (): void => {
    if (done) return;
    done = true;
    clearTimeout(timer);
    stopReading();
    socket.off("error", onError);
    socket.off("end", onEnd);
    socket.off("close", onClose);
  };
  const refuse = (wireCode: WireErrorCode, peerMessage: string, logMessage: string, detail: Record<string, unknown> = {}): void => {
    if (done) return;
    finish();
    logger.warn({ peer: address, ...detail }, logMessage);
    endSocket(socket, errorFrame(wireCode, peerMessage));
  };
  const drop = (logMessage: string, err: Error): void => {
    if (done) return;
    finish();
    logger.warn({ peer: address, err: err.message }, logMessage);
    socket.destroy();
  };

  const timer = setTimeout(
    () => refuse(WIRE_ERROR.timeout, `handshake not complete within ${handshakeTimeoutMs} ms`, "handshake timed out; closing", { timeoutMs: handshakeTimeoutMs }),
    handshakeTimeoutMs,
  );

  const step = (frame: Frame): true | undefined => {
    if (frame.type === "error") throw new LinkError("TM_LINK_REFUSED", `peer refused the handshake: ${frame.message} (${describeWireError(frame.code)})`);
    if (frame.type !== SERVER_EXPECTS[state]) {
      throw new Refusal(
        "TM_LINK_PROTOCOL",
        WIRE_ERROR.protocol,
        `sent ${frame.type} while a ${SERVER_EXPECTS[state]} was expected`,
        `expected ${SERVER_EXPECTS[state]}, got ${frame.type}`,
      );
    }
    if (frame.type === "hello") {
      // A subsystem has a nonzero id; a control client (CLI, RCM) has none.
      if ((frame.role === "link") === (frame.nodeId === 0)) {
        throw new Refusal(
          "TM_LINK_PROTOCOL",
          WIRE_ERROR.role,
          `hello with role ${frame.role} and node id ${frame.nodeId}`,
          `role ${frame.role} cannot have node id ${frame.nodeId}`,
        );
      }
      const wanted = identityFor(frame.role, frame.nodeId);
      if (mode !== "off" && wanted !== null && tlsIdentity !== wanted) {
        throw new Refusal(
          "TM_LINK_TLS",
          WIRE_ERROR.auth,
          `hello as node ${frame.nodeId} (${frame.role}) over a TLS identity ${JSON.stringify(tlsIdentity)}, not "${wanted}"`,
          `node ${frame.nodeId} must have TLS identity "${wanted}"`,
        );
      }
      hello = { role: frame.role, nodeId: frame.nodeId, nonce: frame.nonce };
      socket.write(encodeFrame({ type: "challenge", nodeId, nonce: serverNonce, mac: serverMac(key, frame.nonce, serverNonce, nodeId) }));
      state = "auth";
      return undefined;
    }
    if (frame.type === "auth" && hello !== null) {
      if (!macEqual(frame.mac, clientMac(key, hello.nonce, serverNonce, hello.role, hello.nodeId))) {
        throw new Refusal(
          "TM_LINK_AUTH",
          WIRE_ERROR.auth,
          "wrong auth proof: the client does not hold the cluster key",
          "your auth proof is wrong: you do not hold the cluster key",
        );
      }
      return true;
    }
    return undefined;
  };
  const onFault = (err: Error): void => {
    if (err instanceof Refusal) refuse(err.wireCode, err.peerMessage, `refusing connection: ${err.message}`, { nodeId: hello?.nodeId });
    else if (err instanceof FrameError) drop("dropping connection: bad frame in the handshake", err);
    else drop("dropping connection", err);
  };
  const onDone = (_authenticated: true, rest: Frame[]): void => {
    if (done || hello === null) return;
    finish();
    socket.off("error", ignoreError);
    socket.write(encodeFrame({ type: "ready" }));
    const security = securityOf(mode, mode === "off" ? null : (socket as tls.TLSSocket), tlsIdentity);
    const link = new Link(socket, decoder, { role: hello.role, nodeId: hello.nodeId, address }, logger, rest, security);
    // Control connections come and go with every CLI call: not worth a line each.
    const level = hello.role === "control" ? "debug" : "info";
    logger[level]({ peer: address, nodeId: hello.nodeId, role: hello.role, tls: security.tls, identity: security.peerIdentity }, "link authenticated");
    // Synchronous: an exception in onLink is a bug of the caller and surfaces as one.
    options.onLink(link);
  };
  const stopReading = readHandshake(socket, decoder, step, onFault, onDone);
}

// The fixed-newstyle handshake as a pure state machine: it takes the client's
// bytes (already framed) and returns the bytes to send and the next state.
// HANDSHAKE_TRANSITIONS is the whole machine; docs/nbd.md prints the same rows
// and a unit test keeps the two equal. Every option gets a reply.
import { assert } from "../invariant.ts";
import type { NbdExport, NbdExportProvider } from "./export.ts";
import {
  NBD_FLAG_FIXED_NEWSTYLE,
  NBD_FLAG_NO_ZEROES,
  NBD_INFO_BLOCK_SIZE,
  NBD_INFO_DESCRIPTION,
  NBD_INFO_NAME,
  NBD_OPT_ABORT,
  NBD_OPT_EXPORT_NAME,
  NBD_OPT_GO,
  NBD_OPT_INFO,
  NBD_OPT_LIST,
  NBD_OPT_STARTTLS,
  NBD_OPT_STRUCTURED_REPLY,
  NBD_REP_ACK,
  NBD_REP_ERR_INVALID,
  NBD_REP_ERR_POLICY,
  NBD_REP_ERR_TLS_REQD,
  NBD_REP_ERR_UNKNOWN,
  NBD_REP_ERR_UNSUP,
  NBD_REP_INFO,
  NBD_REP_SERVER,
  decodeClientFlags,
  decodeExportName,
  decodeInfoRequest,
  decodeOptionHeader,
  encodeExportNameReply,
  encodeInfoBlockSize,
  encodeInfoExport,
  encodeInfoString,
  encodeOptionError,
  encodeOptionReply,
  encodeRepServer,
  encodeServerGreeting,
  type BlockSize,
  type OptionHeader,
} from "./protocol.ts";
import type { NbdTlsMode } from "./tls-setup.ts";
import { blockSizeFor, transmissionFlags } from "./transmission.ts";

/** Option data longer than this closes the connection: INFO/GO need at most 4 + 4096 + 2 + 2n. */
export const OPTION_DATA_BYTES_MAX = 64 * 1024;
/** Options one connection may send before it is taken for a denial of service. */
export const OPTIONS_PER_CONNECTION_MAX = 1024;

export type HandshakeState = "awaitClientFlags" | "options" | "transmission" | "closed";

export type HandshakeEvent =
  | "clientFlagsAccepted"
  | "clientFlagsRejected"
  | "optionHeaderRejected"
  | "tooManyOptions"
  | "abort"
  | "list"
  | "structuredReply"
  | "infoKnown"
  | "goKnown"
  | "infoOrGoUnknown"
  | "exportNameKnown"
  | "exportNameUnknown"
  | "optionInvalid"
  | "optionUnsupported"
  | "starttls"
  | "starttlsRefused"
  | "tlsRequired"
  | "exportNameTlsRequired"
  | "goRefused"
  | "exportNameRefused";

export interface Transition {
  from: HandshakeState;
  event: HandshakeEvent;
  to: HandshakeState;
  /** What the server sends; docs/nbd.md shows this text verbatim. */
  send: string;
}

export const HANDSHAKE_TRANSITIONS: readonly Transition[] = [
  { from: "awaitClientFlags", event: "clientFlagsAccepted", to: "options", send: "nothing" },
  { from: "awaitClientFlags", event: "clientFlagsRejected", to: "closed", send: "nothing (hard disconnect)" },
  { from: "options", event: "optionHeaderRejected", to: "closed", send: "nothing (hard disconnect)" },
  { from: "options", event: "tooManyOptions", to: "closed", send: "nothing (hard disconnect)" },
  { from: "options", event: "abort", to: "closed", send: "ACK" },
  { from: "options", event: "list", to: "options", send: "SERVER per export, ACK" },
  { from: "options", event: "structuredReply", to: "options", send: "ACK" },
  { from: "options", event: "infoKnown", to: "options", send: "INFO(EXPORT, BLOCK_SIZE[, NAME][, DESCRIPTION]), ACK" },
  { from: "options", event: "goKnown", to: "transmission", send: "INFO(EXPORT, BLOCK_SIZE[, NAME][, DESCRIPTION]), ACK" },
  { from: "options", event: "infoOrGoUnknown", to: "options", send: "ERR_UNKNOWN with message" },
  { from: "options", event: "exportNameKnown", to: "transmission", send: "size, flags[, 124 zeroes]" },
  { from: "options", event: "exportNameUnknown", to: "closed", send: "nothing (hard disconnect)" },
  { from: "options", event: "optionInvalid", to: "options", send: "ERR_INVALID with message" },
  { from: "options", event: "optionUnsupported", to: "options", send: "ERR_UNSUP with message" },
  { from: "options", event: "starttls", to: "options", send: "ACK, then the TLS handshake" },
  { from: "options", event: "starttlsRefused", to: "options", send: "ERR_POLICY (tls off) or ERR_INVALID (already TLS) with message" },
  { from: "options", event: "tlsRequired", to: "options", send: "ERR_TLS_REQD with message" },
  { from: "options", event: "exportNameTlsRequired", to: "closed", send: "nothing (hard disconnect)" },
  { from: "options", event: "goRefused", to: "options", send: "ERR_POLICY with message (connection limit)" },
  { from: "options", event: "exportNameRefused", to: "closed", send: "nothing (hard disconnect)" },
];

export function nextState(from: HandshakeState, event: HandshakeEvent): HandshakeState {
  const t = HANDSHAKE_TRANSITIONS.find((row) => row.from === from && row.event === event);
  assert(t !== undefined, `handshake: no transition from ${from} on ${event}`);
  return t.to;
}

export interface Negotiated {
  export: NbdExport;
  transmissionFlags: number;
  structuredReplies: boolean;
  blockSize: BlockSize;
  /** The client asked for NBD_INFO_BLOCK_SIZE in GO: it promised to keep to blockSize. */
  clientAskedBlockSize: boolean;
}

export interface HandshakeOptions {
  exports: NbdExportProvider;
  maxPayloadBytes: number;
  /** nbdkit's --tls; "on" and "require" need the connection to run the TLS handshake on "starttls". */
  tls: NbdTlsMode;
  /**
   * Counts a connection into an export before GO or EXPORT_NAME succeeds;
   * a reason refuses it (the per-export connection limit). Default: always ok.
   */
  reserveExport?: (name: string) => string | undefined;
}

export interface HandshakeStep {
  event: HandshakeEvent;
  state: HandshakeState;
  /** Bytes to write, in order, before acting on `state`. */
  send: Buffer[];
  /** Set when state is "transmission". */
  negotiated?: Negotiated;
  /** Why the connection closes or an option was refused; for the log. */
  reason?: string;
}

export class Handshake {
  state: HandshakeState = "awaitClientFlags";
  private noZeroes = false;
  private structuredReplies = false;
  private optionCount = 0;
  private tlsUp = false;
  private readonly exports: NbdExportProvider;

  constructor(private readonly o: HandshakeOptions) {
    this.exports = o.exports;
  }

  /**
   * The connection finished the TLS handshake after a "starttls" step.
   * proto.md: what was negotiated in the clear is forgotten.
   */
  tlsEstablished(): void {
    assert(this.o.tls !== "off" && !this.tlsUp, "handshake: TLS established twice or while off");
    this.tlsUp = true;
    this.structuredReplies = false;
  }

  greeting(): Buffer {
    return encodeServerGreeting(NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES);
  }

  clientFlags(b: Buffer): HandshakeStep {
    const d = decodeClientFlags(b);
    if (!d.ok) return this.step("clientFlagsRejected", [], d.reason);
    this.noZeroes = d.value.noZeroes;
    return this.step("clientFlagsAccepted", []);
  }

  /** Frames the next option: its data length is known only after this. */
  optionHeader(b: Buffer): { ok: true; header: OptionHeader } | { ok: false; step: HandshakeStep } {
    const d = decodeOptionHeader(b);
    if (!d.ok) return { ok: false, step: this.step("optionHeaderRejected", [], d.reason) };
    if (d.value.length > OPTION_DATA_BYTES_MAX) {
      const reason = `option ${d.value.option} data of ${d.value.length} bytes exceeds ${OPTION_DATA_BYTES_MAX}`;
      return { ok: false, step: this.step("optionHeaderRejected", [], reason) };
    }
    if (++this.optionCount > OPTIONS_PER_CONNECTION_MAX) {
      return { ok: false, step: this.step("tooManyOptions", [], `more than ${OPTIONS_PER_CONNECTION_MAX} options`) };
    }
    return { ok: true, header: d.value };
  }

  option(h: OptionHeader, data: Buffer): HandshakeStep {
    assert(this.state === "options", `handshake: option in state ${this.state}`);
    assert(data.length === h.length, "handshake: option data length differs from its header");
    // With tls "require" nothing of the exports (names, sizes, the list) is
    // said before TLS is up: every option but STARTTLS and ABORT is refused.
    if (this.o.tls === "require" && !this.tlsUp && h.option !== NBD_OPT_STARTTLS && h.option !== NBD_OPT_ABORT) {
      const reason = "TLS is required: send NBD_OPT_STARTTLS first";
      // EXPORT_NAME cannot be answered with an error: the session ends.
      if (h.option === NBD_OPT_EXPORT_NAME) return this.step("exportNameTlsRequired", [], reason);
      return this.step("tlsRequired", [encodeOptionError(h.option, NBD_REP_ERR_TLS_REQD, reason)], reason);
    }
    switch (h.option) {
      case NBD_OPT_STARTTLS:
        return this.startTls(data);
      case NBD_OPT_ABORT:
        // proto.md: ignore any data sent with ABORT rather than reject it.
        return this.step("abort", [encodeOptionReply(h.option, NBD_REP_ACK)], "client sent ABORT");
      case NBD_OPT_LIST: {
        if (data.length !== 0) return this.invalid(h.option, "LIST takes no data");
        const send = this.exports.list().map((e) => encodeOptionReply(h.option, NBD_REP_SERVER, encodeRepServer(e.name, e.description)));
        send.push(encodeOptionReply(h.option, NBD_REP_ACK));
        return this.step("list", send);
      }
      case NBD_OPT_STRUCTURED_REPLY:
        if (data.length !== 0) return this.invalid(h.option, "STRUCTURED_REPLY takes no data");
        this.structuredReplies = true;
        return this.step("structuredReply", [encodeOptionReply(h.option, NBD_REP_ACK)]);
      case NBD_OPT_INFO:
      case NBD_OPT_GO:
        return this.infoOrGo(h.option, data);
      case NBD_OPT_EXPORT_NAME:
        return this.exportName(data);
      default: {
        const reason = `option ${h.option} is not supported`;
        return this.step("optionUnsupported", [encodeOptionError(h.option, NBD_REP_ERR_UNSUP, reason)], reason);
      }
    }
  }

  private startTls(data: Buffer): HandshakeStep {
    if (data.length !== 0) return this.invalid(NBD_OPT_STARTTLS, "STARTTLS takes no data");
    if (this.o.tls === "off") {
      const reason = "TLS is not configured on this server (nbdTls.mode off)";
      return this.step("starttlsRefused", [encodeOptionError(NBD_OPT_STARTTLS, NBD_REP_ERR_POLICY, reason)], reason);
    }
    if (this.tlsUp) {
      const reason = "TLS is already established";
      return this.step("starttlsRefused", [encodeOptionError(NBD_OPT_STARTTLS, NBD_REP_ERR_INVALID, reason)], reason);
    }
    return this.step("starttls", [encodeOptionReply(NBD_OPT_STARTTLS, NBD_REP_ACK)]);
  }

  private infoOrGo(option: number, data: Buffer): HandshakeStep {
    const req = decodeInfoRequest(data);
    if (!req.ok) return this.invalid(option, req.reason);
    const found = this.resolve(req.value.name);
    if (!found.ok) {
      return this.step("infoOrGoUnknown", [encodeOptionError(option, NBD_REP_ERR_UNKNOWN, found.reason)], found.reason);
    }
    if (option === NBD_OPT_GO) {
      const refused = this.o.reserveExport?.(found.export.name);
      if (refused !== undefined) return this.step("goRefused", [encodeOptionError(option, NBD_REP_ERR_POLICY, refused)], refused);
    }
    const n = this.negotiate(found.export, req.value.infos.includes(NBD_INFO_BLOCK_SIZE));
    // Each information item is its own NBD_REP_INFO; BLOCK_SIZE is sent even
    // unasked, because the server enforces 512-byte alignment.
    const info = (payload: Buffer) => encodeOptionReply(option, NBD_REP_INFO, payload);
    const send = [info(encodeInfoExport(n.export.sizeBytes, n.transmissionFlags)), info(encodeInfoBlockSize(n.blockSize))];
    if (req.value.infos.includes(NBD_INFO_NAME)) send.push(info(encodeInfoString(NBD_INFO_NAME, n.export.name)));
    if (req.value.infos.includes(NBD_INFO_DESCRIPTION) && n.export.description !== undefined) {
      send.push(info(encodeInfoString(NBD_INFO_DESCRIPTION, n.export.description)));
    }
    send.push(encodeOptionReply(option, NBD_REP_ACK));
    if (option === NBD_OPT_INFO) return this.step("infoKnown", send);
    return { ...this.step("goKnown", send), negotiated: n };
  }

  private exportName(data: Buffer): HandshakeStep {
    // EXPORT_NAME cannot carry an error: proto.md says terminate the session.
    const name = decodeExportName(data);
    if (!name.ok) return this.step("exportNameUnknown", [], name.reason);
    const found = this.resolve(name.value);
    if (!found.ok) return this.step("exportNameUnknown", [], found.reason);
    const refused = this.o.reserveExport?.(found.export.name);
    if (refused !== undefined) return this.step("exportNameRefused", [], refused);
    const n = this.negotiate(found.export, false);
    const send = [encodeExportNameReply(n.export.sizeBytes, n.transmissionFlags, this.noZeroes)];
    return { ...this.step("exportNameKnown", send), negotiated: n };
  }

  private resolve(name: string): { ok: true; export: NbdExport } | { ok: false; reason: string } {
    let wanted = name;
    if (wanted === "") {
      if (this.exports.defaultExport === undefined) {
        return { ok: false, reason: "an empty export name selects the default export, and none is configured" };
      }
      wanted = this.exports.defaultExport;
    }
    const e = this.exports.get(wanted);
    return e ? { ok: true, export: e } : { ok: false, reason: `no export named ${JSON.stringify(wanted)}` };
  }

  private negotiate(e: NbdExport, clientAskedBlockSize: boolean): Negotiated {
    return {
      export: e,
      transmissionFlags: transmissionFlags(e.isReadOnly()),
      structuredReplies: this.structuredReplies,
      blockSize: blockSizeFor(this.o.maxPayloadBytes),
      clientAskedBlockSize,
    };
  }

  private invalid(option: number, reason: string): HandshakeStep {
    return this.step("optionInvalid", [encodeOptionError(option, NBD_REP_ERR_INVALID, reason)], reason);
  }

  private step(event: HandshakeEvent, send: Buffer[], reason?: string): HandshakeStep {
    this.state = nextState(this.state, event);
    return { event, state: this.state, send, reason };
  }
}

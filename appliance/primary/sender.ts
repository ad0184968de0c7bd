// One ordered stream of RCRs from this primary to one secondary subsystem.
// It streams committed journal entries in seq order, bounded by bytes in
// flight, and on every reconnect resends from the last cumulative ack (the
// secondary drops what it already holds). SYNC frames of every group the
// secondary belongs to go down the same link.
import type { Logger } from "pino";
import type { Journal, JournalEntry } from "./journal.ts";
import { OP_VERIFY, OP_WRITE } from "./journal.ts";
import { linkTransition, type LinkState } from "./link-state.ts";
import type { FrameLink, LinkConnector } from "../replication/frame-link.ts";
import type { LinkSecurity } from "../replication/link-tls.ts";
import { describeWireError, type Frame, type RcrRecord } from "../replication/frames.ts";
import type { Refusal } from "./refusal.ts";
import type { Runtime, TimerHandle } from "../runtime/runtime.ts";

/** Entries read from the journal per query. */
export const READ_BATCH_ENTRIES = 512;
/** Payload bytes per RCR frame (the frame limit is 16 MiB). */
export const FRAME_DATA_BYTES_MAX = 4 * 1024 * 1024;

export interface SenderOptions {
  primaryId: number;
  secondaryId: number;
  /** Opens the link (TCP with the cluster key's handshake, or the simulator's). */
  connect: LinkConnector;
  runtime: Runtime;
  reconnectMs: number;
  linkTimeoutMs: number;
  inflightBytesMax: number;
  journal: Journal;
  generationOf: (group: string) => number;
  logger: Logger;
  /** Every RCR with seq <= `seq` on this link is durably queued on the secondary. */
  onAck: (secondaryId: number, seq: number) => void;
  /** The secondary acknowledged less than it had: it lost RCRs it had acknowledged. */
  onAckRegressed: ((secondaryId: number, had: number, got: number) => void) | null;
  /** A secondary refused a frame (error frame): fencing, or a group it cannot take. */
  onRefused: (secondaryId: number, refusal: Refusal) => void;
  /** The highest seq this primary ever issued: an ack above it is not ours. */
  highestSeq: () => number;
}

export class LinkSender {
  state: LinkState = "idle";
  private link: FrameLink | null = null;
  private sentSeq = 0;
  ackedSeq = 0;
  private inflight: { seq: number; bytes: number }[] = [];
  private inflightBytes = 0;
  private pumping = false;
  private timer: TimerHandle | null = null;
  lastError: string | null = null;
  connectedAt: number | null = null;
  /** TLS state and peer identity of the current or last link (status); null before the first. */
  security: LinkSecurity | null = null;
  private lastHeard = 0;
  private liveness: TimerHandle | null = null;
  sentFrames = 0;
  /** Per group: the generation its frames carried on the current connection (a refusal is about that connection). */
  private sentGeneration = new Map<string, number>();

  constructor(private readonly o: SenderOptions) {}

  start(): void {
    this.move("start");
    void this.connect();
  }

  stop(): void {
    if (this.state === "closed") return;
    this.move("stop");
    if (this.timer) this.o.runtime.clearTimeout(this.timer);
    if (this.liveness) this.o.runtime.clearInterval(this.liveness);
    this.link?.close();
    this.link = null;
  }

  get bytesInFlight(): number {
    return this.inflightBytes;
  }

  get lastSentSeq(): number {
    return this.sentSeq;
  }

  /** Drops the connection; the link reconnects and resends from the last ack. */
  restart(): void {
    this.link?.close();
  }

  /** New entries were committed: stream them if the link is up. */
  wake(): void {
    if (this.state === "up") void this.pump();
  }

  sendSync(group: string, t: bigint): void {
    if (this.state !== "up" || !this.link) return;
    const generation = this.o.generationOf(group);
    this.sentGeneration.set(group, generation);
    this.link.send({ type: "sync", generation, group, primaryId: this.o.primaryId, t });
  }

  /** COPIED(C_k): this primary's copies for the group's resync are all acknowledged (docs/resync.md). */
  sendCopied(group: string, t: bigint): void {
    if (this.state !== "up" || !this.link) return;
    const generation = this.o.generationOf(group);
    this.sentGeneration.set(group, generation);
    this.link.send({ type: "copied", generation, group, primaryId: this.o.primaryId, t });
  }

  private move(event: Parameters<typeof linkTransition>[1]): void {
    const from = this.state;
    this.state = linkTransition(this.state, event);
    if (from !== this.state && (this.state === "up" || from === "up")) {
      this.o.logger.info({ peer: this.o.secondaryId, from, to: this.state, error: this.lastError ?? undefined }, "link state");
    }
  }

  private async connect(): Promise<void> {
    const { o } = this;
    let link: FrameLink;
    try {
      link = await o.connect(o.secondaryId);
    } catch (err) {
      if (this.state !== "connecting") return;
      const msg = (err as Error).message;
      if (msg !== this.lastError) o.logger.warn({ peer: o.secondaryId, err: msg }, "link connect failed; retrying");
      this.lastError = msg;
      this.move("connect-failed");
      this.timer = o.runtime.setTimeout(() => this.retry(), o.reconnectMs);
      return;
    }
    if (this.state !== "connecting") {
      link.close();
      return;
    }
    this.link = link;
    this.security = link.security ?? null;
    this.lastError = null;
    this.connectedAt = this.o.runtime.nowMs();
    // Resend everything not acknowledged: the secondary drops duplicates by seq.
    this.sentSeq = this.ackedSeq;
    this.sentGeneration = new Map();
    this.inflight = [];
    this.inflightBytes = 0;
    link.on("frame", (f: Frame) => {
      this.lastHeard = this.o.runtime.nowMs();
      this.onFrame(f);
    });
    link.on("close", (err?: Error) => this.onClose(link, err));
    this.lastHeard = this.o.runtime.nowMs();
    this.liveness ??= o.runtime.setInterval(() => this.checkLiveness(), Math.max(25, Math.floor(o.linkTimeoutMs / 4)));
    this.move("connected");
    void this.pump();
  }

  /** Heartbeats keep a quiet link talking; silence past the timeout drops it. */
  private checkLiveness(): void {
    if (this.state !== "up" || !this.link) return;
    const quiet = this.o.runtime.nowMs() - this.lastHeard;
    if (quiet > this.o.linkTimeoutMs) {
      this.o.logger.warn({ peer: this.o.secondaryId, quietMs: quiet }, "link silent past linkTimeoutMs; dropping it");
      this.lastError = `no frame from secondary #${this.o.secondaryId} for ${quiet} ms`;
      const link = this.link;
      this.onClose(link, new Error(this.lastError));
      link.close();
      return;
    }
    this.link.send({ type: "heartbeat" });
  }

  private retry(): void {
    this.timer = null;
    if (this.state !== "backoff") return;
    this.move("retry");
    void this.connect();
  }

  private onClose(link: FrameLink, err?: Error): void {
    if (this.link !== link) return;
    this.link = null;
    if (this.state !== "up") return;
    this.lastError = err?.message ?? "connection closed by peer";
    this.move("lost");
    this.timer = this.o.runtime.setTimeout(() => this.retry(), this.o.reconnectMs);
  }

  private onFrame(f: Frame): void {
    if (f.type === "ack") {
      if (f.seq < this.ackedSeq && this.o.onAckRegressed) {
        // The secondary holds less than it acknowledged: it lost durably queued
        // RCRs, some of which this primary may have trimmed. Never go on as if not.
        const had = this.ackedSeq;
        this.ackedSeq = f.seq;
        this.o.onAckRegressed(this.o.secondaryId, had, f.seq);
        return;
      }
      if (f.seq <= this.ackedSeq) return;
      if (f.seq > this.o.highestSeq()) {
        // A peer acknowledging what this primary never issued is broken or not ours.
        this.o.logger.error({ peer: this.o.secondaryId, ack: f.seq, highest: this.o.highestSeq() }, "ack beyond any seq issued here; dropping link");
        this.link?.close();
        return;
      }
      // After a restart the secondary first says what it already holds: skip it.
      if (f.seq > this.sentSeq) this.sentSeq = f.seq;
      this.ackedSeq = f.seq;
      while (this.inflight.length > 0 && this.inflight[0].seq <= f.seq) {
        this.inflightBytes -= this.inflight.shift()!.bytes;
      }
      this.o.onAck(this.o.secondaryId, f.seq);
      void this.pump();
    } else if (f.type === "error") {
      this.o.logger.warn({ peer: this.o.secondaryId, code: describeWireError(f.code), group: f.group, message: f.message }, "secondary refused");
      this.o.onRefused(this.o.secondaryId, { code: f.code, group: f.group, message: f.message, sentGeneration: this.sentGeneration.get(f.group) });
    }
  }

  private async pump(): Promise<void> {
    if (this.pumping) return;
    this.pumping = true;
    try {
      while (this.state === "up" && this.link && this.inflightBytes < this.o.inflightBytesMax) {
        const room = this.o.inflightBytesMax - this.inflightBytes;
        const entries = this.o.journal.readLink(this.o.secondaryId, this.sentSeq, READ_BATCH_ENTRIES, Math.max(room, FRAME_DATA_BYTES_MAX));
        if (entries.length === 0) break;
        const link = this.link;
        let ok = true;
        for (const frame of framesOf(entries, this.o.primaryId, this.o.generationOf)) {
          if (frame.frame.type === "rcr") this.sentGeneration.set(frame.frame.group, frame.frame.generation);
          ok = link.send(frame.frame);
          this.sentFrames++;
          this.inflight.push({ seq: frame.lastSeq, bytes: frame.bytes });
          this.inflightBytes += frame.bytes;
          this.sentSeq = frame.lastSeq;
        }
        if (!ok) await link.whenDrained();
      }
    } catch (err) {
      this.o.logger.error({ peer: this.o.secondaryId, err: (err as Error).message }, "sending RCRs failed; dropping link");
      this.link?.close();
    } finally {
      this.pumping = false;
    }
  }
}

/** Packs consecutive entries of one group into RCR frames of bounded size. */
function* framesOf(
  entries: JournalEntry[],
  primaryId: number,
  generationOf: (g: string) => number,
): Generator<{ frame: Frame; lastSeq: number; bytes: number }> {
  let records: RcrRecord[] = [];
  let group = "";
  let bytes = 0;
  let lastSeq = 0;
  const flush = () => {
    const out = { frame: { type: "rcr", generation: generationOf(group), group, records } as Frame, lastSeq, bytes };
    records = [];
    bytes = 0;
    return out;
  };
  for (const e of entries) {
    // A verify record carries hashes, not its range: its data counts.
    const payload = e.op === OP_WRITE ? e.length : e.op === OP_VERIFY ? (e.data?.length ?? 0) : 0;
    if (records.length > 0 && (e.group !== group || bytes + payload > FRAME_DATA_BYTES_MAX)) yield flush();
    group = e.group;
    records.push({
      primaryId,
      seq: e.seq,
      ts: e.ts,
      volume: e.target,
      op: e.op === OP_WRITE ? "write" : e.op === OP_VERIFY ? "verify" : "zero",
      offset: e.offset,
      length: e.length,
      data: e.op === OP_WRITE || e.op === OP_VERIFY ? (e.data ?? undefined) : undefined,
    });
    bytes += payload;
    bytes += 64;
    lastSeq = e.seq;
  }
  if (records.length > 0) yield flush();
}

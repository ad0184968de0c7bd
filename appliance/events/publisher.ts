// Serves `subscribe` on control connections (docs/events.md, docs/wire.md):
// answers with the source's current state as `exists` events, then pushes
// every event of the process's hub as an `event` frame, and a heartbeat
// every EVENT_HEARTBEAT_MS so a subscriber can tell a hung source from a
// quiet one. Used by the subsystem process and by the RCM.
import type { Logger } from "pino";
import type { FrameLink } from "../replication/frame-link.ts";
import type { Runtime, TimerHandle } from "../runtime/runtime.ts";
import { codeOf } from "../errors/codes.ts";
import { EventHub, type EventSink } from "./hub.ts";
import type { EventBody, TidemarkEvent } from "./kinds.ts";

/** A subscriber that hears nothing for 3 of these takes the source for hung (appliance/cli/events.ts). */
export const EVENT_HEARTBEAT_MS = 2000;

/** A control connection as the publisher needs it: frames, close, and its unsent bytes (link.ts). */
export type SubscriberLink = FrameLink & { readonly bufferedSendBytes?: number; readonly peerAddress?: string };

export interface EventPublisherOptions {
  source: string;
  incarnation: string;
  runtime: Runtime;
  logger: Logger;
  /** The source's objects now, as `exists` bodies; called with no event pending (the caller emitted them first). */
  exists: () => EventBody[];
  /** Called before `exists` at each subscription: a source that diffs its state emits what changed first. */
  refresh?: () => void;
  /** The first subscriber came / the last one left: a source that watches its state only while watched. */
  onWatched?: (watched: boolean) => void;
}

export class EventPublisher {
  readonly hub: EventHub;
  private heartbeat: TimerHandle | null = null;

  constructor(private readonly o: EventPublisherOptions) {
    this.hub = new EventHub({ source: o.source, incarnation: o.incarnation, nowMs: () => o.runtime.nowMs(), logger: o.logger });
  }

  emit(body: EventBody): void {
    this.hub.emit(body);
  }

  /**
   * Answers a `subscribe` request (id `requestId`) on `link` and starts
   * pushing events to it. The answer is sent here, synchronously, so no
   * event frame can overtake it.
   */
  subscribe(link: SubscriberLink, requestId: number): void {
    const peer = link.peerAddress ?? "control client";
    const first = this.hub.subscribers === 0;
    let unsubscribe: () => void;
    let exists: TidemarkEvent[];
    try {
      if (first) this.o.onWatched?.(true);
      this.o.refresh?.();
      const sink: EventSink = {
        peer,
        send: (e) => {
          const { seq, timeMs, ...body } = e;
          link.send({ type: "event", seq, timeMs, body });
        },
        bufferedBytes: () => link.bufferedSendBytes ?? 0,
        close: () => link.close(),
        heartbeat: () => void link.send({ type: "heartbeat" }),
      };
      unsubscribe = this.hub.subscribe(sink);
      exists = this.o.exists().map((b) => this.hub.stamp(b, this.hub.lastSeq));
    } catch (err) {
      if (first && this.hub.subscribers === 0) this.o.onWatched?.(false);
      link.send({ type: "response", id: requestId, ok: false, body: { code: codeOf(err, "TM_CONTROL"), message: (err as Error).message } });
      return;
    }
    link.send({ type: "response", id: requestId, ok: true, body: { source: this.o.source, incarnation: this.o.incarnation, seq: this.hub.lastSeq, exists } });
    this.o.logger.info({ peer, subscribers: this.hub.subscribers }, "event subscriber connected");
    this.heartbeat ??= this.o.runtime.setInterval(() => this.hub.pulse(), EVENT_HEARTBEAT_MS);
    link.on("close", () => {
      unsubscribe();
      if (this.hub.subscribers > 0) return;
      if (this.heartbeat) this.o.runtime.clearInterval(this.heartbeat);
      this.heartbeat = null;
      this.o.onWatched?.(false);
    });
  }

  stop(): void {
    if (this.heartbeat) this.o.runtime.clearInterval(this.heartbeat);
    this.heartbeat = null;
    this.hub.closeAll();
  }
}

// The event hub of one process (a subsystem or the RCM): numbers each event
// of this source, and pushes it to every subscriber's control connection.
// Pure of sockets and timers: a subscriber is a sink that sends frames and
// says how many bytes it still holds unsent.
// Bounds (docs/events.md, "Bounds"): at most `subscribersMax` subscribers per
// process, and each holds at most `subscriberBufferBytesMax` unsent bytes: a
// subscriber that does not read is dropped (one log line naming the peer),
// never allowed to grow this process's memory.
import type { Logger } from "pino";
import { tmError } from "../errors/codes.ts";
import { actionFits, type EventBody, type TidemarkEvent } from "./kinds.ts";

/** Subscribers per process: each is a control connection and a status walk's worth of work per change. */
export const EVENT_SUBSCRIBERS_MAX = 16;
/** Unsent bytes per subscriber (its socket's write buffer) before it is dropped: thousands of events. */
export const EVENT_SUBSCRIBER_BUFFER_BYTES_MAX = 1024 * 1024;

export interface EventSink {
  /** Who it is, for the log line that drops it. */
  readonly peer: string;
  /** Sends one event frame; the bytes are queued on the connection. */
  send(event: TidemarkEvent): void;
  /** Bytes queued on the connection and not yet written to the socket. */
  bufferedBytes(): number;
  /** Closes the connection (the subscriber reconnects if it still wants events). */
  close(): void;
  /** Sends a heartbeat frame (publisher.ts): says the source is alive while nothing changes. */
  heartbeat?(): void;
}

export interface EventHubOptions {
  /** `ss<id>` or `rcm`. */
  source: string;
  incarnation: string;
  nowMs: () => number;
  logger: Logger;
  subscribersMax?: number;
  subscriberBufferBytesMax?: number;
}

export class EventHub {
  private seq = 0;
  private readonly sinks = new Set<EventSink>();
  private readonly subscribersMax: number;
  private readonly bufferMax: number;
  private refusalLogged = false;

  constructor(private readonly o: EventHubOptions) {
    this.subscribersMax = o.subscribersMax ?? EVENT_SUBSCRIBERS_MAX;
    this.bufferMax = o.subscriberBufferBytesMax ?? EVENT_SUBSCRIBER_BUFFER_BYTES_MAX;
  }

  get subscribers(): number {
    return this.sinks.size;
  }

  /** The seq of the last change: what `exists` lines carry. */
  get lastSeq(): number {
    return this.seq;
  }

  /** The event as it travels: this source's seq and the wall clock. */
  stamp(body: EventBody, seq: number): TidemarkEvent {
    return { ...body, source: this.o.source, incarnation: this.o.incarnation, seq, timeMs: this.o.nowMs() };
  }

  /**
   * Adds a subscriber; a process with `subscribersMax` already refuses it
   * (TM_EVENTS_SUBSCRIBERS). Returns a function that removes it.
   */
  subscribe(sink: EventSink): () => void {
    if (this.sinks.size >= this.subscribersMax) {
      // Logged once while the limit holds: a refused CLI tries again every second.
      if (!this.refusalLogged) this.o.logger.warn({ peer: sink.peer, subscribers: this.sinks.size, subscribersMax: this.subscribersMax }, "event subscriber refused: too many subscribers (logged once until one leaves)");
      this.refusalLogged = true;
      throw tmError("TM_EVENTS_SUBSCRIBERS", `${this.o.source} has ${this.sinks.size} event subscribers already, its limit; close one first`, {
        source: this.o.source,
        subscribersMax: this.subscribersMax,
      });
    }
    this.sinks.add(sink);
    return () => {
      if (this.sinks.delete(sink)) this.refusalLogged = false;
    };
  }

  /** Numbers one change of this source and pushes it to every subscriber. */
  emit(body: EventBody): TidemarkEvent {
    // A kind with an action of the other shape is a bug at the emitting site.
    if (!actionFits(body.kind, body.action)) throw new Error(`events: action ${body.action} does not fit kind ${body.kind}`);
    const event = this.stamp(body, ++this.seq);
    for (const sink of this.sinks) this.push(sink, event);
    return event;
  }

  /** A heartbeat to every subscriber that still reads. */
  pulse(): void {
    for (const sink of this.sinks) if (this.keeps(sink, this.seq)) sink.heartbeat?.();
  }

  private push(sink: EventSink, event: TidemarkEvent): void {
    if (this.keeps(sink, event.seq)) sink.send(event);
  }

  /** False (and the subscriber dropped, one log line) once it holds more unsent bytes than its bound. */
  private keeps(sink: EventSink, seq: number): boolean {
    const held = sink.bufferedBytes();
    if (held <= this.bufferMax) return true;
    this.sinks.delete(sink);
    this.refusalLogged = false;
    this.o.logger.warn({ peer: sink.peer, bufferedBytes: held, bufferBytesMax: this.bufferMax, seq }, "event subscriber dropped: it does not read its events");
    sink.close();
    return false;
  }

  /** Drops every subscriber (the process stops). */
  closeAll(): void {
    for (const sink of this.sinks) sink.close();
    this.sinks.clear();
  }
}

/** `1796316464874-4242`: this process's start and pid; a restarted source has another. */
export function processIncarnation(startMs: number, pid: number): string {
  return `${startMs}-${pid}`;
}

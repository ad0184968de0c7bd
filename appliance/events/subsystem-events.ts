// The events of one subsystem: while anyone subscribes, its engines' state
// is walked every EVENT_WATCH_INTERVAL_MS and right after each control step
// that changes a group (fence, takeover, suspend, resync, turn...), and the
// differences go out as events (state-events.ts). Nothing is walked while no
// one subscribes. Other modules (verify) emit their occurrences through
// `emit` directly.
import type { Logger } from "pino";
import type { Runtime, TimerHandle } from "../runtime/runtime.ts";
import { EventPublisher, type SubscriberLink } from "./publisher.ts";
import { StateTracker, type EventView } from "./state-events.ts";
import type { EventBody } from "./kinds.ts";

/**
 * How often a watched subsystem walks its state for changes the engines
 * make on their own (a link lost, a copy's end). A walk is one status of
 * each engine: a few SQLite counts per group and volume.
 */
export const EVENT_WATCH_INTERVAL_MS = 250;

export interface SubsystemEventsOptions {
  id: number;
  incarnation: string;
  view: () => EventView;
  runtime: Runtime;
  logger: Logger;
}

export class SubsystemEvents {
  private readonly publisher: EventPublisher;
  private tracker: StateTracker | null = null;
  private timer: TimerHandle | null = null;

  constructor(private readonly o: SubsystemEventsOptions) {
    this.publisher = new EventPublisher({
      source: `ss${o.id}`,
      incarnation: o.incarnation,
      runtime: o.runtime,
      logger: o.logger,
      exists: () => this.tracker?.exists() ?? [],
      refresh: () => this.check(),
      onWatched: (watched) => this.watch(watched),
    });
  }

  private watch(watched: boolean): void {
    if (watched) {
      this.tracker ??= new StateTracker(this.o.view(), this.o.runtime.nowMs());
      this.timer ??= this.o.runtime.setInterval(() => this.check(), EVENT_WATCH_INTERVAL_MS);
      return;
    }
    if (this.timer) this.o.runtime.clearInterval(this.timer);
    this.timer = null;
    this.tracker = null;
  }

  /** Emits what changed since the last walk; nothing while no one subscribes. */
  check(): void {
    if (!this.tracker) return;
    let view: EventView;
    try {
      view = this.o.view();
    } catch (err) {
      // A status walk that fails (a state disk error) is the engines' to report; events try again next tick.
      this.o.logger.warn({ err: (err as Error).message }, "events: the subsystem's state could not be read");
      return;
    }
    for (const body of this.tracker.next(view, this.o.runtime.nowMs())) this.publisher.emit(body);
  }

  /** An occurrence of another module (verify): sent to the subscribers with this subsystem's next seq. */
  emit(body: EventBody): void {
    if (this.tracker) this.publisher.emit(body);
  }

  subscribe(link: SubscriberLink, requestId: number): void {
    this.publisher.subscribe(link, requestId);
  }

  stop(): void {
    this.watch(false);
    this.publisher.stop();
  }
}

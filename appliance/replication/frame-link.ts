// One authenticated, ordered, reliable stream of frames between two
// processes, as the engines use it. The subsystem's links are TCP
// connections (link.ts); the seeded simulation's are in-memory pairs whose
// delivery, delays, hangs and cuts it chooses. Frames arrive in the order
// they were sent or not at all: after a loss the link closes.
import type { Frame } from "./frames.ts";
import type { LinkSecurity } from "./link-tls.ts";

export interface FrameLink {
  /** TLS mode and peer identity (link.ts); the simulation's links have none. */
  readonly security?: LinkSecurity;
  /** Queues a frame; false once the peer is behind (wait for whenDrained). */
  send(frame: Frame): boolean;
  whenDrained(): Promise<void>;
  /** Closes the link; both sides then see "close" once. */
  close(): void;
  on(event: "frame", listener: (frame: Frame) => void): unknown;
  on(event: "close", listener: (error?: Error) => void): unknown;
}

/** Opens a replication link from this primary to one secondary subsystem. */
export type LinkConnector = (secondaryId: number) => Promise<FrameLink>;

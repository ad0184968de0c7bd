// The state machine of one replication link (primary -> secondary subsystem),
// as data: docs/state-machines.md shows the same table. Pure.
export type LinkState = "idle" | "connecting" | "up" | "backoff" | "closed";
export type LinkEvent = "start" | "connected" | "connect-failed" | "lost" | "retry" | "stop";

export const LINK_TRANSITIONS: Readonly<Record<LinkState, Partial<Record<LinkEvent, LinkState>>>> = {
  idle: { start: "connecting", stop: "closed" },
  connecting: { connected: "up", "connect-failed": "backoff", stop: "closed" },
  up: { lost: "backoff", stop: "closed" },
  backoff: { retry: "connecting", stop: "closed" },
  closed: {},
};

export function linkTransition(state: LinkState, event: LinkEvent): LinkState {
  const next = LINK_TRANSITIONS[state][event];
  if (next === undefined) throw new Error(`link: event '${event}' is not allowed in state '${state}'`);
  return next;
}

// Heartbeats on control connections (docs/wire.md, "Heartbeats on control
// connections"). A control request may legitimately take long (a takeover's
// apply step waits for the secondaries to drain), so a caller cannot tell a
// slow step from a silent host by the answer alone. The answering side (a
// subsystem, the RCM) therefore sends a heartbeat frame every quarter of
// `linkTimeoutMs` while the connection is open, and the caller gives up on a
// peer it has heard nothing from for `linkTimeoutMs` (control-client.ts),
// whatever the request's own timeout. Process edge only: the seeded
// simulation's control plane has its own timeouts and no sockets.
import type { Link } from "../replication/link.ts";

/** Heartbeats per `linkTimeoutMs`: three may be lost or late before the caller gives up. */
export const HEARTBEATS_PER_TIMEOUT = 4;
/** Below this interval heartbeats would cost more than they tell. */
const HEARTBEAT_MIN_MS = 25;

export function heartbeatIntervalMs(linkTimeoutMs: number): number {
  return Math.max(HEARTBEAT_MIN_MS, Math.floor(linkTimeoutMs / HEARTBEATS_PER_TIMEOUT));
}

/**
 * Sends a heartbeat on `link` every heartbeatIntervalMs(linkTimeoutMs) until
 * it closes. None is queued while the peer leaves earlier bytes unread: it
 * would not reach a peer that does not read, and a client that never reads
 * must not make this process buffer for it.
 */
export function sendHeartbeats(link: Link, linkTimeoutMs: number): void {
  if (link.closed) return;
  const timer = setInterval(() => {
    if (link.bufferedSendBytes === 0) link.send({ type: "heartbeat" });
  }, heartbeatIntervalMs(linkTimeoutMs));
  timer.unref();
  link.once("close", () => clearInterval(timer));
}

/**
 * The caller's side: calls `onSilent` once if `link` delivers no frame at all
 * (answer, heartbeat, anything) for `silenceMs`. Returns a function that ends
 * the watch; the link's close ends it too.
 */
export function watchSilence(link: Link, silenceMs: number, onSilent: () => void): () => void {
  const timer = setTimeout(onSilent, silenceMs);
  timer.unref();
  const heard = () => void timer.refresh();
  link.on("frame", heard);
  // A long-lived client starts a watch per busy spell: each must take its close listener back too.
  const stop = () => {
    clearTimeout(timer);
    link.off("frame", heard);
    link.off("close", stop);
  };
  link.once("close", stop);
  return stop;
}

// `tidemark events`: follows every subsystem and the RCM, one line per state
// change, until stopped (Ctrl-C). Each source pushes its events over a
// control connection (docs/events.md): first its state as `exists` lines,
// then its changes; a source that goes away is reconnected every second,
// and the stream says so (`source` lines: lost, connected, restarted).
import { silentLogger } from "./silent-logger.ts";
import type { LoadedTopology } from "../../config/load.ts";
import { connectLink, type Link } from "../replication/link.ts";
import { linkSecretsOf, type LinkSecrets } from "../../config/keys.ts";
import { controlIdentity } from "./control-client.ts";
import type { Frame } from "../replication/frames.ts";
import { EVENT_HEARTBEAT_MS } from "../events/publisher.ts";
import { eventJson, eventText, existsEndLine } from "../events/format.ts";
import { processIncarnation } from "../events/hub.ts";
import type { TidemarkEvent } from "../events/kinds.ts";

/** Between two attempts to reach a source that is gone. */
export const EVENTS_RECONNECT_MS = 1000;
/** A source that sends nothing, not even a heartbeat, this long is taken for hung: its connection is dropped and made again. */
export const EVENTS_SILENCE_MS = 3 * EVENT_HEARTBEAT_MS;
/** Connect plus handshake, and then the subscribe answer, each within this. */
export const EVENTS_CONNECT_TIMEOUT_MS = 3000;
export const EVENTS_SUBSCRIBE_TIMEOUT_MS = 10_000;
/**
 * Bytes written to stdout and not yet taken by it (a pager, a slow pipe).
 * Past it the CLI stops following: every connection is closed and lines are
 * dropped until stdout is down to half, then the sources are reconnected and
 * their state comes again as `exists` lines; one `#` line says how many were dropped.
 */
export const EVENTS_OUTPUT_BACKLOG_BYTES_MAX = 4 * 1024 * 1024;
/** Change lines held while the first `exists` lines of every source come in; past it they are dropped and counted. */
export const EVENTS_HELD_LINES_MAX = 10_000;

const silent = silentLogger;

interface Endpoint {
  source: string;
  host: string;
  port: number;
  peerNodeId?: number;
}

export interface EventsOptions {
  json: boolean;
  /** One line, without its newline. */
  write: (line: string) => void;
  /** Bytes written and not yet taken by the output (process.stdout.writableLength); none: never behind. */
  backlogBytes?: () => number;
}

/** A source's answer to `subscribe` as it must look; anything else from a peer is refused, not trusted. */
function subscribeAnswer(body: unknown): { incarnation: string; exists: TidemarkEvent[] } | null {
  const b = body as { incarnation?: unknown; exists?: unknown } | null;
  if (typeof b !== "object" || b === null || typeof b.incarnation !== "string" || !Array.isArray(b.exists)) return null;
  const exists = b.exists.map((e) => eventOf(e)).filter((e): e is TidemarkEvent => e !== null);
  return { incarnation: b.incarnation, exists };
}

function eventOf(v: unknown, seq?: number, timeMs?: number): TidemarkEvent | null {
  if (typeof v !== "object" || v === null || Array.isArray(v)) return null;
  const e = { ...(v as Record<string, unknown>) };
  if (seq !== undefined) e.seq = seq;
  if (timeMs !== undefined) e.timeMs = timeMs;
  if (typeof e.source !== "string" || typeof e.kind !== "string" || typeof e.action !== "string" || typeof e.seq !== "number" || typeof e.timeMs !== "number") return null;
  return e as unknown as TidemarkEvent;
}

export class EventsFollower {
  private stopped = false;
  private readonly links = new Set<Link>();
  private seq = 0;
  private readonly incarnation = processIncarnation(Math.round(performance.timeOrigin), process.pid);
  /** Sources whose first attempt is not over: until then change lines are held. */
  private initial: Set<string>;
  private held: string[] = [];
  private heldDropped = 0;
  private readonly endpoints: Endpoint[];
  private readonly sleeps = new Set<() => void>();
  /** Lines dropped since the output fell behind; null while it keeps up. */
  private overflow: number | null = null;

  constructor(
    topo: LoadedTopology,
    private readonly o: EventsOptions,
  ) {
    this.endpoints = topo.config.subsystems.map((s) => ({ source: `ss${s.id}`, host: s.host, port: s.replicationPort, peerNodeId: s.id }));
    const rcm = topo.config.rcm;
    if (rcm) this.endpoints.push({ source: "rcm", host: rcm.host, port: rcm.port });
    this.initial = new Set(this.endpoints.map((e) => e.source));
    // The CLI's key and TLS credentials (config/keys.ts): a bad key file stops `events` before it connects.
    this.secrets = linkSecretsOf(topo, controlIdentity(topo));
  }

  private readonly secrets: LinkSecrets;

  /** Follows every source until stop(). */
  run(): Promise<void> {
    return Promise.all(this.endpoints.map((e) => this.follow(e))).then(() => {});
  }

  stop(): void {
    this.stopped = true;
    for (const l of this.links) l.close();
    for (const wake of this.sleeps) wake();
  }

  private print(e: TidemarkEvent, held: boolean): void {
    if (this.behind()) return;
    const line = this.o.json ? eventJson(e) : eventText(e);
    if (!held || this.initial.size === 0) return this.o.write(line);
    if (this.held.length < EVENTS_HELD_LINES_MAX) this.held.push(line);
    else this.heldDropped++;
  }

  /** True while the output is behind (and the line is dropped); the first time, every connection is closed. */
  private behind(): boolean {
    const backlog = this.o.backlogBytes?.() ?? 0;
    if (this.overflow === null) {
      if (backlog <= EVENTS_OUTPUT_BACKLOG_BYTES_MAX) return false;
      this.overflow = 0;
      for (const l of this.links) l.close();
    }
    this.overflow++;
    return true;
  }

  /** Before a reconnection: waits while the output is behind, then says what was dropped. */
  private async caughtUp(): Promise<void> {
    while (this.overflow !== null && !this.stopped) {
      if ((this.o.backlogBytes?.() ?? 0) <= EVENTS_OUTPUT_BACKLOG_BYTES_MAX / 2) {
        this.o.write(`# ${this.overflow} lines dropped: the output did not keep up (more than ${EVENTS_OUTPUT_BACKLOG_BYTES_MAX} bytes unwritten); every source is followed again from its state now`);
        this.overflow = null;
        return;
      }
      await this.sleep(EVENTS_RECONNECT_MS);
      await this.caughtUp();
    }
  }

  private firstDone(source: string): void {
    if (!this.initial.delete(source) || this.initial.size > 0) return;
    this.o.write(existsEndLine(this.o.json, Date.now()));
    for (const line of this.held) this.o.write(line);
    if (this.heldDropped > 0) this.o.write(`# ${this.heldDropped} change lines dropped while the first state came in (more than ${EVENTS_HELD_LINES_MAX})`);
    this.held = [];
  }

  private async follow(ep: Endpoint): Promise<void> {
    // The incarnation the source last answered with (a holder: the callback below sets it).
    const last = { incarnation: null as string | null };
    let lostSaid = false;
    while (!this.stopped) {
      try {
        const answer = await this.session(ep, (incarnation, exists) => {
          const first = this.initial.has(ep.source);
          const restarted = last.incarnation !== null && last.incarnation !== incarnation;
          this.connectionLine(first ? "exists" : "change", ep.source, { state: "connected", peerIncarnation: incarnation, restarted, error: null });
          for (const e of exists) this.print(e, false);
          last.incarnation = incarnation;
          lostSaid = false;
          this.firstDone(ep.source);
        });
        if (this.stopped) return;
        if (!lostSaid) this.connectionLine("change", ep.source, { state: "lost", peerIncarnation: last.incarnation, restarted: false, error: answer });
        lostSaid = true;
      } catch (err) {
        if (this.stopped) return;
        if (!lostSaid) {
          const first = this.initial.has(ep.source);
          this.connectionLine(first ? "exists" : "change", ep.source, { state: "lost", peerIncarnation: last.incarnation, restarted: false, error: (err as Error).message });
          lostSaid = true;
          this.firstDone(ep.source);
        }
      }
      await this.sleep(EVENTS_RECONNECT_MS);
    }
  }

  /** The CLI's own line about its connection to a source. */
  private connectionLine(action: "exists" | "change", to: string, fields: { state: string; peerIncarnation: string | null; restarted: boolean; error: string | null }): void {
    const e: TidemarkEvent = { kind: "connection", action, to, ...fields, source: "cli", incarnation: this.incarnation, seq: ++this.seq, timeMs: Date.now() };
    this.print(e, action === "change");
  }

  private sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const wake = () => {
        clearTimeout(t);
        this.sleeps.delete(wake);
        resolve();
      };
      const t = setTimeout(wake, ms);
      this.sleeps.add(wake);
    });
  }

  /**
   * One connection to a source: subscribe, print its events until it is
   * lost. Resolves with why it ended; rejects if it never subscribed.
   */
  private async session(ep: Endpoint, onSubscribed: (incarnation: string, exists: TidemarkEvent[]) => void): Promise<string> {
    const link = await connectLink({ host: ep.host, port: ep.port, key: this.secrets.key, tls: this.secrets.tls, role: "control", nodeId: 0, timeoutMs: EVENTS_CONNECT_TIMEOUT_MS, logger: silent, peerNodeId: ep.peerNodeId });
    if (this.stopped) {
      link.close();
      return "stopped";
    }
    this.links.add(link);
    return new Promise<string>((resolve, reject) => {
      let subscribed = false;
      let heardMs = Date.now();
      let why = `${ep.source} at ${ep.host}:${ep.port} closed the connection`;
      const subscribeTimer = setTimeout(() => {
        why = `${ep.source} did not answer subscribe within ${EVENTS_SUBSCRIBE_TIMEOUT_MS} ms`;
        link.close();
      }, EVENTS_SUBSCRIBE_TIMEOUT_MS);
      const silence = setInterval(() => {
        if (!subscribed || Date.now() - heardMs < EVENTS_SILENCE_MS) return;
        why = `${ep.source} sent nothing for ${EVENTS_SILENCE_MS} ms (not even a heartbeat)`;
        link.close();
      }, EVENT_HEARTBEAT_MS);
      link.on("frame", (f: Frame) => {
        heardMs = Date.now();
        if (f.type === "response" && f.id === 1 && !subscribed) {
          clearTimeout(subscribeTimer);
          const answer = f.ok ? subscribeAnswer(f.body) : null;
          if (!answer) {
            const b = f.body as { code?: unknown; message?: unknown } | null;
            why = f.ok ? `${ep.source} answered subscribe with a malformed body` : `${ep.source} refused subscribe: ${String(b?.code ?? "")} ${String(b?.message ?? "")}`.trim();
            link.close();
            return;
          }
          subscribed = true;
          onSubscribed(answer.incarnation, answer.exists);
        } else if (f.type === "event" && subscribed) {
          const e = eventOf(f.body, f.seq, f.timeMs);
          // A malformed event from a peer is left out, never trusted or thrown on.
          if (e) this.print(e, true);
        }
      });
      link.on("close", (err?: Error) => {
        clearTimeout(subscribeTimer);
        clearInterval(silence);
        this.links.delete(link);
        if (err) why = `${why}: ${err.message}`;
        if (subscribed) resolve(why);
        else reject(new Error(why));
      });
      link.send({ type: "request", id: 1, body: { op: "subscribe" } });
    });
  }
}

// The simulated network between subsystems and the RCM: replication links as
// in-memory pairs of FrameLink endpoints, and control requests. Every frame
// goes through the real codec (encodeFrame, then decodeFrame on arrival).
// Within one direction of one link frames arrive in order or not at all, as
// TCP gives them; the seed chooses delays, and partitions that either hold
// frames (a hung link: the sender's liveness check must notice) or drop the
// connection. A process that dies takes its connections with it: the peer
// sees "close" a little later, as after a reset.
import { EventEmitter } from "node:events";
import { decodeFrame, encodeFrame, type Frame } from "../../../appliance/replication/frames.ts";
import type { FrameLink } from "../../../appliance/replication/frame-link.ts";
import { ControlError } from "../../../appliance/cli/control-client.ts";
import { codeOf } from "../../../appliance/errors/codes.ts";
import type { Scheduler, SimProcess } from "./scheduler.ts";

export type PartitionMode = "hold" | "drop";

/** Whoever accepts connections for a node id (a subsystem incarnation). */
export interface Listener {
  proc: SimProcess;
  acceptLink(link: FrameLink, primaryId: number): void;
  request(body: unknown): Promise<unknown>;
}

export interface NetworkOptions {
  delayMinMs: number;
  delayMaxMs: number;
  /** How long a connect to an unreachable node takes to fail. */
  connectTimeoutMs: number;
}

class Endpoint extends EventEmitter implements FrameLink {
  peer!: Endpoint;
  closed = false;
  /** Delivery time of the last frame sent this way: arrivals stay in order. */
  lastArrivalMs = 0;
  /** Frames held by a hanging partition, in order. */
  held: Buffer[] = [];

  constructor(
    readonly net: SimNetwork,
    readonly proc: SimProcess,
    readonly nodeId: number,
  ) {
    super();
  }

  send(frame: Frame): boolean {
    if (this.closed) return false;
    this.net.carry(this, encodeFrame(frame));
    return true;
  }

  whenDrained(): Promise<void> {
    return this.closed ? Promise.reject(new Error("link closed")) : Promise.resolve();
  }

  close(): void {
    this.net.closePair(this, false);
  }

  /** Delivery of one frame to this endpoint. */
  deliver(buf: Buffer): void {
    if (this.closed) return;
    const frame = decodeFrame(buf);
    this.net.observe(this.peer.nodeId, this.nodeId, frame);
    this.emit("frame", frame);
  }

  closeNow(err?: Error): void {
    if (this.closed) return;
    this.closed = true;
    this.emit("close", err);
  }
}

export class SimNetwork {
  private readonly listeners = new Map<number, Listener>();
  private readonly cut = new Map<string, PartitionMode>();
  private readonly pairs = new Set<Endpoint>();
  framesSent = 0;
  /** Sees every frame as it arrives (the checker reads acks here). */
  observe: (from: number, to: number, frame: Frame) => void = () => {};

  constructor(
    private readonly sched: Scheduler,
    private readonly o: NetworkOptions,
  ) {}

  private delay(): number {
    return this.sched.int(this.o.delayMinMs, this.o.delayMaxMs);
  }

  private key(a: number, b: number): string {
    return a < b ? `${a}-${b}` : `${b}-${a}`;
  }

  listen(nodeId: number, l: Listener): void {
    this.listeners.set(nodeId, l);
  }

  partitionOf(a: number, b: number): PartitionMode | undefined {
    return this.cut.get(this.key(a, b));
  }

  /** Cuts the path between two nodes (0 is the RCM). */
  partition(a: number, b: number, mode: PartitionMode): void {
    this.cut.set(this.key(a, b), mode);
    if (mode === "drop") for (const e of [...this.pairs]) if (this.between(e, a, b)) this.closePair(e, true);
  }

  heal(a: number, b: number): void {
    this.cut.delete(this.key(a, b));
    // A hung link that outlived the partition delivers what it held, in order.
    for (const e of this.pairs) {
      if (!this.between(e, a, b)) continue;
      for (const side of [e, e.peer]) for (const buf of side.held.splice(0)) this.carry(side, buf);
    }
  }

  healAll(): void {
    for (const k of [...this.cut.keys()]) {
      const [a, b] = k.split("-").map(Number);
      this.heal(a, b);
    }
  }

  private between(e: Endpoint, a: number, b: number): boolean {
    return (e.nodeId === a && e.peer.nodeId === b) || (e.nodeId === b && e.peer.nodeId === a);
  }

  /** A replication link from `from` (node id, process) to subsystem `to`. */
  connect(proc: SimProcess, from: number, to: number): Promise<FrameLink> {
    return new Promise((resolve, reject) => {
      const fail = (why: string) => reject(new Error(`simulated connect #${from} -> #${to}: ${why}`));
      proc.after(this.delay(), () => {
        const l = this.listeners.get(to);
        const mode = this.partitionOf(from, to);
        if (mode === "hold") return proc.after(this.o.connectTimeoutMs, () => fail("timed out"));
        if (mode === "drop" || !l || !l.proc.alive) return fail("connection refused");
        const mine = new Endpoint(this, proc, from);
        const theirs = new Endpoint(this, l.proc, to);
        mine.peer = theirs;
        theirs.peer = mine;
        this.pairs.add(mine);
        l.acceptLink(theirs, from);
        resolve(mine);
      });
    });
  }

  /** Schedules a frame's arrival at the other end, behind every frame sent before it. */
  carry(from: Endpoint, buf: Buffer): void {
    const to = from.peer;
    this.framesSent++;
    if (this.partitionOf(from.nodeId, to.nodeId) === "hold") {
      from.held.push(buf);
      return;
    }
    const at = Math.max(from.lastArrivalMs, this.sched.nowMs + this.delay());
    from.lastArrivalMs = at;
    this.sched.at(at - this.sched.nowMs, () => to.deliver(buf), to.proc);
  }

  /** Closes both ends: an orderly close lets what was sent arrive first; a reset does not. */
  closePair(e: Endpoint, reset: boolean): void {
    if (e.closed) return;
    const peer = e.peer;
    this.pairs.delete(e);
    this.pairs.delete(peer);
    e.closed = true;
    e.held = [];
    this.sched.at(0, () => e.emit("close", reset ? new Error("connection reset") : undefined), e.proc);
    const at = reset ? this.sched.nowMs + this.delay() : Math.max(e.lastArrivalMs, this.sched.nowMs + this.delay());
    this.sched.at(at - this.sched.nowMs, () => peer.closeNow(reset ? new Error("connection reset by peer") : undefined), peer.proc);
  }

  /** kill -9 or a power cut: every connection of the process is reset. */
  processDied(proc: SimProcess): void {
    for (const e of [...this.pairs]) {
      if (e.proc === proc) this.closePair(e, true);
      else if (e.peer.proc === proc) this.closePair(e.peer, true);
    }
  }

  /**
   * A control request from `caller` (the RCM, node 0) to subsystem `to`, as
   * one connection per request: JSON there and back, refused when the
   * subsystem is down or cut off, lost when it dies before it answers.
   */
  request<T>(caller: SimProcess, to: number, body: unknown, timeoutMs: number): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      let settled = false;
      const finish = (f: () => void) => {
        if (settled) return;
        settled = true;
        f();
      };
      caller.after(timeoutMs, () => finish(() => reject(new ControlError("TM_CONTROL_TIMEOUT", `subsystem #${to}: no answer within ${timeoutMs} ms`))));
      const text = JSON.stringify(body);
      caller.after(this.delay(), () => {
        const l = this.listeners.get(to);
        const mode = this.partitionOf(0, to);
        if (mode === "hold") return;
        if (mode === "drop" || !l || !l.proc.alive) {
          return finish(() => reject(new ControlError("TM_UNREACHABLE", `subsystem #${to} is unreachable: connection refused`)));
        }
        const server = l.proc;
        l.request(JSON.parse(text)).then(
          (value) => {
            const answer = JSON.stringify(value);
            this.sched.at(this.delay(), () => finish(() => resolve(JSON.parse(answer) as T)), caller);
          },
          (err: Error) => {
            // A broken invariant stops a real subsystem (core.ts rethrows it); here watchInvariants
            // has failed the seed already, and the caller hears nothing, as from a process that died.
            // Rethrown, it would escape as an unhandled rejection (the noFence control, seed 24).
            if (err.name === "InvariantError") return;
            // What the subsystem's control answer and the CLI's client make of it (core.ts, control-client.ts).
            const e = ControlError.fromAnswer({ code: codeOf(err, "TM_CONTROL"), message: err.message }, "TM_CONTROL", `subsystem #${to}: `, "request failed");
            this.sched.at(this.delay(), () => finish(() => reject(e)), caller);
          },
        );
        // The subsystem dying before it answers closes the connection.
        const watch = () => {
          if (settled) return;
          if (!server.alive) return void caller.after(this.delay(), () => finish(() => reject(new ControlError("TM_CONTROL_CLOSED", `subsystem #${to}: connection closed`))));
          caller.after(5, watch);
        };
        caller.after(5, watch);
      });
    });
  }
}

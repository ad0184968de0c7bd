// The CLI's side of the control RPC: an authenticated "control" link to a
// subsystem's replication port, one request/response at a time per call.
import { silentLogger as silent } from "./silent-logger.ts";
import { connectLink, type Link } from "../replication/link.ts";
import type { Frame } from "../replication/frames.ts";
import type { LoadedTopology } from "../../config/load.ts";
import { subsystemConfig } from "../../config/load.ts";
import { linkSecretsOf } from "../../config/keys.ts";
import { attachedControlPlane, type ControlPlane } from "./control-plane.ts";
import { realRuntime } from "../runtime/runtime.ts";
import { clockReader } from "../primary/clock-source.ts";
import { peerErrorCode, type ErrorCode, type PeerErrorCode } from "../errors/codes.ts";
import { watchSilence } from "../control/heartbeat.ts";

/** Linux retransmits a lost SYN after 1 s: a connect given less than 2 s fails on one lost packet. */
const CONNECT_TIMEOUT_MIN_MS = 2000;

const IDENTITY = Symbol("tidemark control identity");

/** The TLS identity control connections made with this topology use: "cli" unless the RCM set "rcm" (withControlIdentity). */
export function controlIdentity(topo: object): string {
  return (topo as { [IDENTITY]?: string })[IDENTITY] ?? "cli";
}

/** The topology as a process other than the CLI sees it (the RCM): its control connections present `identity`. */
export function withControlIdentity<T extends object>(topo: T, identity: string): T {
  return { ...topo, [IDENTITY]: identity };
}

/**
 * A control request that failed: locally (unreachable, closed, timed out) with
 * a registry code, or on the peer, with the code its answer carried (kept as
 * sent: a newer peer may know codes this build does not).
 */
export class ControlError extends Error {
  constructor(
    readonly code: ErrorCode | PeerErrorCode,
    message: string,
  ) {
    super(message);
    this.name = "ControlError";
  }

  /** From a peer's `{ ok: false, body: { code, message } }` answer; a body without a code gets `fallback`. */
  static fromAnswer(body: unknown, fallback: ErrorCode, prefix: string, defaultMessage: string): ControlError {
    const b = (typeof body === "object" && body !== null ? body : {}) as { code?: unknown; message?: unknown };
    const message = typeof b.message === "string" ? b.message : defaultMessage;
    return new ControlError(peerErrorCode(b.code, fallback), `${prefix}${message}`);
  }
}

export class ControlClient {
  private nextId = 1;
  private readonly waiting = new Map<number, { resolve: (v: unknown) => void; reject: (e: Error) => void }>();
  /** Ends the silence watch, which runs while a request waits (control/heartbeat.ts). */
  private unwatch: (() => void) | null = null;

  private constructor(
    private readonly link: Link,
    readonly subsystemId: number,
    /** The topology's linkTimeoutMs: a peer heard from neither by answer nor by heartbeat for this long is given up. */
    private readonly silenceMs: number,
  ) {
    link.on("frame", (f: Frame) => {
      if (f.type !== "response") return;
      const w = this.waiting.get(f.id);
      if (!w) return;
      this.waiting.delete(f.id);
      if (f.ok) w.resolve(f.body);
      else {
        w.reject(ControlError.fromAnswer(f.body, "TM_CONTROL", `subsystem #${subsystemId}: `, "request failed"));
      }
    });
    link.on("close", (err?: Error) => {
      this.failAll(new ControlError("TM_CONTROL_CLOSED", `subsystem #${subsystemId}: connection closed${err ? `: ${err.message}` : ""}`));
    });
  }

  private failAll(err: ControlError): void {
    const waiting = [...this.waiting.values()];
    this.waiting.clear();
    for (const w of waiting) w.reject(err);
  }

  /** A request settled: with none left waiting, silence means nothing. */
  private settled(id: number): void {
    this.waiting.delete(id);
    if (this.waiting.size > 0) return;
    this.unwatch?.();
    this.unwatch = null;
  }

  /**
   * `timeoutMs` defaults to the topology's linkTimeoutMs, the silence after
   * which a peer is given up (3 s by default), but never under 2 s, so that
   * one lost SYN (retransmitted after 1 s) is not taken for a dead host. A
   * host whose cable is pulled answers no SYN, and every RCM step that needs
   * it waits this long: a fixed 3 s made a 1 s topology take 15 s to suspend
   * a group around it.
   */
  static async connect(topo: LoadedTopology, id: number, timeoutMs = Math.max(CONNECT_TIMEOUT_MIN_MS, topo.config.linkTimeoutMs)): Promise<ControlClient> {
    const ss = subsystemConfig(topo, id);
    // Outside the try: a bad key file is the caller's to fix, not an unreachable subsystem.
    const secrets = linkSecretsOf(topo, controlIdentity(topo));
    try {
      const link = await connectLink({
        host: ss.host,
        port: ss.replicationPort,
        key: secrets.key,
        tls: secrets.tls,
        role: "control",
        nodeId: 0,
        timeoutMs,
        logger: silent,
        peerNodeId: id,
      });
      return new ControlClient(link, id, topo.config.linkTimeoutMs);
    } catch (err) {
      throw new ControlError("TM_UNREACHABLE", `subsystem #${id} at ${ss.host}:${ss.replicationPort} is unreachable: ${(err as Error).message}`);
    }
  }

  /**
   * One request. It fails after `timeoutMs` without an answer, or sooner once
   * the subsystem has sent nothing, not even a heartbeat, for the topology's
   * linkTimeoutMs: a host that went silent is told from a slow step.
   */
  request<T = unknown>(body: unknown, timeoutMs = 10_000): Promise<T> {
    const id = this.nextId++;
    this.unwatch ??= watchSilence(this.link, this.silenceMs, () => {
      this.unwatch = null;
      this.failAll(
        new ControlError(
          "TM_CONTROL_SILENT",
          `subsystem #${this.subsystemId}: silent for ${this.silenceMs} ms (no answer and no heartbeat): its host, its process or the network to it is down or hung`,
        ),
      );
      this.link.close();
    });
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.settled(id);
        reject(new ControlError("TM_CONTROL_TIMEOUT", `subsystem #${this.subsystemId}: no answer within ${timeoutMs} ms`));
      }, timeoutMs);
      this.waiting.set(id, {
        resolve: (v) => {
          clearTimeout(timer);
          this.settled(id);
          resolve(v as T);
        },
        reject: (e) => {
          clearTimeout(timer);
          this.settled(id);
          reject(e);
        },
      });
      this.link.send({ type: "request", id, body });
    });
  }

  close(): void {
    this.link.close();
  }
}

/** The plane a topology was given, else TCP with one connection per request and the real clock. */
export function controlPlaneOf(topo: LoadedTopology): ControlPlane {
  return (
    attachedControlPlane(topo) ?? {
      call: async <T>(id: number, body: unknown, timeoutMs: number) => {
        const c = await ControlClient.connect(topo, id);
        try {
          return await c.request<T>(body, timeoutMs);
        } finally {
          c.close();
        }
      },
      runtime: realRuntime,
      clockNs: clockReader(topo.config.clock),
    }
  );
}

/** Runs one request against each listed subsystem; unreachable ones come back as errors. */
export async function askAll<T>(
  topo: LoadedTopology,
  ids: number[],
  body: unknown,
): Promise<Map<number, { ok: true; value: T } | { ok: false; error: string; code?: string }>> {
  const out = new Map<number, { ok: true; value: T } | { ok: false; error: string; code?: string }>();
  const plane = controlPlaneOf(topo);
  await Promise.all(
    ids.map(async (id) => {
      try {
        out.set(id, { ok: true, value: await plane.call<T>(id, body, 10_000) });
      } catch (err) {
        const code = (err as { code?: unknown }).code;
        out.set(id, { ok: false, error: (err as Error).message, ...(typeof code === "string" ? { code } : {}) });
      }
    }),
  );
  return out;
}

// The CLI's side of the control RPC: an authenticated "control" link to a
// subsystem's replication port, one request/response at a time per call.
import pino from "pino";
import { connectLink, type Link } from "../replication/link.ts";
import type { Frame } from "../replication/frames.ts";
import type { LoadedTopology } from "../../config/load.ts";
import { subsystemConfig } from "../../config/load.ts";
import { linkSecretsOf } from "../../config/keys.ts";
import { attachedControlPlane, type ControlPlane } from "./control-plane.ts";
import { realRuntime } from "../runtime/runtime.ts";
import { clockReader } from "../primary/clock-source.ts";
import { peerErrorCode, type ErrorCode, type PeerErrorCode } from "../errors/codes.ts";

const silent = pino({ level: "silent" });

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

  private constructor(
    private readonly link: Link,
    readonly subsystemId: number,
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
      for (const w of this.waiting.values()) {
        w.reject(new ControlError("TM_CONTROL_CLOSED", `subsystem #${subsystemId}: connection closed${err ? `: ${err.message}` : ""}`));
      }
      this.waiting.clear();
    });
  }

  static async connect(topo: LoadedTopology, id: number, timeoutMs = 3000): Promise<ControlClient> {
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
      return new ControlClient(link, id);
    } catch (err) {
      throw new ControlError("TM_UNREACHABLE", `subsystem #${id} at ${ss.host}:${ss.replicationPort} is unreachable: ${(err as Error).message}`);
    }
  }

  request<T = unknown>(body: unknown, timeoutMs = 10_000): Promise<T> {
    const id = this.nextId++;
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiting.delete(id);
        reject(new ControlError("TM_CONTROL_TIMEOUT", `subsystem #${this.subsystemId}: no answer within ${timeoutMs} ms`));
      }, timeoutMs);
      this.waiting.set(id, {
        resolve: (v) => {
          clearTimeout(timer);
          resolve(v as T);
        },
        reject: (e) => {
          clearTimeout(timer);
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
): Promise<Map<number, { ok: true; value: T } | { ok: false; error: string }>> {
  const out = new Map<number, { ok: true; value: T } | { ok: false; error: string }>();
  const plane = controlPlaneOf(topo);
  await Promise.all(
    ids.map(async (id) => {
      try {
        out.set(id, { ok: true, value: await plane.call<T>(id, body, 10_000) });
      } catch (err) {
        out.set(id, { ok: false, error: (err as Error).message });
      }
    }),
  );
  return out;
}

// The NBD server: listens (TCP, or an inherited socket under systemd socket
// activation) and runs one NbdConnection per client. It knows nothing of
// replication; the subsystem hands it exports. A failing connection never
// affects another, and socket errors are logged, never thrown. It owns what
// bounds all connections together: the buffer budget, the connection counts
// (in total, per peer address, per export) and the stall/idle sweep.
import net from "node:net";
import { performance } from "node:perf_hooks";
import type { Logger } from "pino";
import { assert } from "../invariant.ts";
import { BufferBudget } from "./buffer-budget.ts";
import { HANDSHAKE_TIMEOUT_MS_DEFAULT, NbdConnection, REQUEST_COST_BYTES } from "./connection.ts";
import { ConnectionLimits } from "./connection-limits.ts";
import { NBD_LIMITS_DEFAULT, type NbdLimits, type NbdServerOptions } from "./export.ts";
import { PAYLOAD_HARD_CAP_BYTES, PREFERRED_BLOCK_BYTES } from "./transmission.ts";

export type { NbdExport, NbdExportProvider, NbdServerOptions, NbdLimits } from "./export.ts";
export { NBD_LIMITS_DEFAULT } from "./export.ts";

/** Smallest server-wide budget: two of the largest requests, so one always fits while another drains. */
export const BUFFER_BYTES_MIN = 2 * (PAYLOAD_HARD_CAP_BYTES + REQUEST_COST_BYTES);

export class NbdServer {
  private readonly log: Logger;
  private server: net.Server | undefined;
  private readonly connections = new Map<NbdConnection, Promise<void>>();
  private nextId = 1;
  private closing = false;
  private readonly limits: NbdLimits;
  private readonly counts: ConnectionLimits;
  readonly budget: BufferBudget;
  private readonly now: () => number;
  private sweepTimer: NodeJS.Timeout | undefined;

  constructor(private readonly options: NbdServerOptions) {
    const max = options.maxPayloadBytes;
    // proto.md: the maximum payload is at least the preferred block size; past
    // 32 MiB a payload may be taken for a denial of service.
    assert(Number.isInteger(max) && max >= PREFERRED_BLOCK_BYTES && max <= PAYLOAD_HARD_CAP_BYTES, `nbd: maxPayloadBytes ${max} outside ${PREFERRED_BLOCK_BYTES}..${PAYLOAD_HARD_CAP_BYTES}`);
    this.limits = { ...NBD_LIMITS_DEFAULT, ...options.limits };
    assert(this.limits.bufferBytesMax >= BUFFER_BYTES_MIN, `nbd: bufferBytesMax ${this.limits.bufferBytesMax} below ${BUFFER_BYTES_MIN}`);
    assert((options.tlsMode ?? "off") === "off" || options.tls !== undefined, "nbd: tlsMode on/require without a TLS setup");
    const perPeer = Math.min(this.limits.bufferBytesPerPeerMax, this.limits.bufferBytesMax);
    assert(perPeer >= PAYLOAD_HARD_CAP_BYTES + REQUEST_COST_BYTES, `nbd: bufferBytesPerPeerMax ${perPeer} below one 32 MiB request`);
    this.budget = new BufferBudget(this.limits.bufferBytesMax, perPeer);
    this.counts = new ConnectionLimits(this.limits);
    this.now = options.now ?? (() => performance.now());
    this.log = options.logger;
  }

  async listen(host: string, port: number): Promise<{ host: string; port: number }> {
    const server = this.createServer();
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen({ host, port }, () => {
        server.off("error", reject);
        resolve();
      });
    });
    const a = server.address() as net.AddressInfo;
    this.log.info({ host: a.address, port: a.port }, "nbd: listening");
    return { host: a.address, port: a.port };
  }

  /** Systemd socket activation: serves an already listening socket (LISTEN_FDS gives fd 3). */
  async listenFd(fd: number): Promise<void> {
    const server = this.createServer();
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen({ fd }, () => {
        server.off("error", reject);
        resolve();
      });
    });
    this.log.info({ fd }, "nbd: listening on inherited socket");
  }

  /** Stops listening; each connection finishes its in-flight requests, then closes. */
  async close(): Promise<void> {
    this.closing = true;
    clearInterval(this.sweepTimer);
    const server = this.server;
    const stopped = server ? new Promise<void>((resolve) => server.close(() => resolve())) : Promise.resolve();
    for (const c of this.connections.keys()) c.shutdown();
    await Promise.all([stopped, ...this.connections.values()]);
    this.log.info("nbd: server closed");
  }

  connectionCount(): number {
    return this.connections.size;
  }

  private createServer(): net.Server {
    assert(this.server === undefined, "nbd: server already listening");
    // allowHalfOpen: a client's FIN ends only what it sends. Requests it sent
    // before it are still answered, then the connection's own end() closes
    // (Node's default would end the socket at the FIN and lose those replies).
    const server = net.createServer({ allowHalfOpen: true }, (socket) => this.accept(socket));
    server.on("error", (err) => this.log.error({ err }, "nbd: listener error"));
    this.server = server;
    // Stalls are found by a sweep, not a timer per connection: a second's
    // lateness is nothing against timeouts of tens of seconds.
    const sweepMs = Math.max(10, Math.min(1000, this.limits.stallTimeoutMs / 4));
    this.sweepTimer = setInterval(() => {
      const t = this.now();
      for (const c of this.connections.keys()) c.checkTimers(t);
    }, sweepMs);
    this.sweepTimer.unref();
    return server;
  }

  private accept(socket: net.Socket): void {
    if (this.closing) {
      socket.destroy();
      return;
    }
    const peer = socket.remoteAddress ?? "local";
    const admitted = this.counts.admitPeer(peer);
    if (!admitted.ok) {
      // Logged once per peer while the limit holds: a client retrying in a
      // loop must not flood the log.
      if (admitted.logIt) this.log.warn({ peer, reason: admitted.reason }, "nbd: connection limit reached; refusing connections");
      socket.on("error", () => {});
      socket.destroy();
      return;
    }
    const id = this.nextId++;
    const conn = new NbdConnection(
      socket,
      {
        exports: this.options.exports,
        logger: this.log,
        maxPayloadBytes: this.options.maxPayloadBytes,
        handshakeTimeoutMs: this.options.handshakeTimeoutMs ?? HANDSHAKE_TIMEOUT_MS_DEFAULT,
        stallTimeoutMs: this.limits.stallTimeoutMs,
        idleTimeoutMs: this.limits.idleTimeoutMs,
        budget: this.budget,
        tlsMode: this.options.tlsMode ?? "off",
        tls: this.options.tls,
        reserveExport: (name, log) => {
          const r = this.counts.reserveExport(name);
          if (r.ok) return undefined;
          if (r.logIt) log.warn({ reason: r.reason }, "nbd: export connection limit reached; refusing");
          return r.reason;
        },
        releaseExport: (name) => this.counts.releaseExport(name),
        now: this.now,
      },
      id,
    );
    this.log.debug({ nbdConn: id, peer }, "nbd: connection accepted");
    const done = conn.run().finally(() => {
      this.connections.delete(conn);
      this.counts.releasePeer(peer);
    });
    this.connections.set(conn, done);
  }
}

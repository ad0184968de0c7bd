// The NBD server: listens (TCP, or an inherited socket under systemd socket
// activation) and runs one NbdConnection per client. It knows nothing of
// replication; the subsystem hands it exports. A failing connection never
// affects another, and socket errors are logged, never thrown.
import net from "node:net";
import type { Logger } from "pino";
import { assert } from "../invariant.ts";
import { HANDSHAKE_TIMEOUT_MS_DEFAULT, NbdConnection } from "./connection.ts";
import type { NbdServerOptions } from "./export.ts";
import { PAYLOAD_HARD_CAP_BYTES, PREFERRED_BLOCK_BYTES } from "./transmission.ts";

export type { NbdExport, NbdExportProvider, NbdServerOptions } from "./export.ts";

export class NbdServer {
  private readonly log: Logger;
  private server: net.Server | undefined;
  private readonly connections = new Map<NbdConnection, Promise<void>>();
  private nextId = 1;
  private closing = false;

  constructor(private readonly options: NbdServerOptions) {
    const max = options.maxPayloadBytes;
    // proto.md: the maximum payload is at least the preferred block size; past
    // 32 MiB a payload may be taken for a denial of service.
    assert(Number.isInteger(max) && max >= PREFERRED_BLOCK_BYTES && max <= PAYLOAD_HARD_CAP_BYTES, `nbd: maxPayloadBytes ${max} outside ${PREFERRED_BLOCK_BYTES}..${PAYLOAD_HARD_CAP_BYTES}`);
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
    const server = net.createServer((socket) => this.accept(socket));
    server.on("error", (err) => this.log.error({ err }, "nbd: listener error"));
    this.server = server;
    return server;
  }

  private accept(socket: net.Socket): void {
    if (this.closing) {
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
      },
      id,
    );
    this.log.debug({ nbdConn: id, peer: socket.remoteAddress }, "nbd: connection accepted");
    const done = conn.run().finally(() => this.connections.delete(conn));
    this.connections.set(conn, done);
  }
}

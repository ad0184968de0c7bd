// A TCP proxy the drill puts between primaries and one secondary (the secondary's
// `linkEndpoint`), so it can fail the replication links the way networks fail:
// `cut` resets every connection and refuses new ones (a peer gone, a firewall),
// `hang` stops moving bytes while every socket stays open (a cable pulled somewhere:
// only the link timeout notices), `restore` goes back to forwarding. Bytes held by a
// hang are delayed, never dropped: TCP does not lose bytes of a live connection.
import net from "node:net";

export type LinkMode = "up" | "cut" | "hang";

export class LinkProxy {
  private server: net.Server | null = null;
  private readonly pairs = new Set<[net.Socket, net.Socket]>();
  private mode: LinkMode = "up";
  port = 0;

  constructor(
    private readonly targetHost: string,
    private readonly targetPort: number,
  ) {}

  get state(): LinkMode {
    return this.mode;
  }

  async listen(host: string, port: number): Promise<void> {
    const server = net.createServer((client) => this.accept(client));
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen({ host, port }, () => {
        server.off("error", reject);
        resolve();
      });
    });
    // A listener error after start (none expected on loopback) must not crash the drill.
    server.on("error", () => undefined);
    this.server = server;
    this.port = (server.address() as net.AddressInfo).port;
  }

  private accept(client: net.Socket): void {
    client.on("error", () => undefined);
    if (this.mode === "cut") {
      client.resetAndDestroy();
      return;
    }
    const upstream = net.connect(this.targetPort, this.targetHost);
    upstream.on("error", () => undefined);
    const pair: [net.Socket, net.Socket] = [client, upstream];
    this.pairs.add(pair);
    const end = () => {
      client.destroy();
      upstream.destroy();
      this.pairs.delete(pair);
    };
    client.on("close", end);
    upstream.on("close", end);
    // pipe() applies backpressure both ways; pausing the readable side holds the bytes in the kernel.
    client.pipe(upstream);
    upstream.pipe(client);
    if (this.mode === "hang") {
      client.pause();
      upstream.pause();
    }
  }

  /** Resets every connection and refuses new ones until restore(). */
  cut(): void {
    this.mode = "cut";
    for (const [a, b] of this.pairs) {
      a.resetAndDestroy();
      b.resetAndDestroy();
    }
    this.pairs.clear();
  }

  /** Stops forwarding in both directions; sockets stay open, so only silence shows it. */
  hang(): void {
    this.mode = "hang";
    for (const [a, b] of this.pairs) {
      a.pause();
      b.pause();
    }
  }

  restore(): void {
    const was = this.mode;
    this.mode = "up";
    if (was === "hang") {
      for (const [a, b] of this.pairs) {
        a.resume();
        b.resume();
      }
    }
  }

  async close(): Promise<void> {
    this.cut();
    const s = this.server;
    this.server = null;
    if (s) await new Promise<void>((r) => s.close(() => r()));
  }
}

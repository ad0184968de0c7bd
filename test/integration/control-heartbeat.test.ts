// Heartbeats on control connections (docs/wire.md; appliance/control/heartbeat.ts),
// on real processes: a subsystem and the RCM heartbeat on an open control
// connection, and a caller gives up a subsystem that went silent (SIGSTOP:
// its sockets stay open, it sends nothing) once linkTimeoutMs has passed,
// not at the request's own timeout.
import pino from "pino";
import { afterEach, describe, expect, it } from "vitest";
import { connectLink } from "../../appliance/replication/link.ts";
import type { Frame } from "../../appliance/replication/frames.ts";
import { ControlClient, ControlError } from "../../appliance/cli/control-client.ts";
import { askRcm } from "../../appliance/cli/rcm-client.ts";
import { heartbeatIntervalMs } from "../../appliance/control/heartbeat.ts";
import { linkSecretsOf } from "../../config/keys.ts";
import { TestCluster, fig1Config, freePort } from "../support/cluster.ts";

const LINK_TIMEOUT_MS = 800;
const silent = pino({ level: "silent" });

let cluster: TestCluster | null = null;
afterEach(async () => {
  if (cluster) for (const id of [0, ...cluster.ids]) await cluster.kill(id, "SIGCONT");
  await cluster?.destroy();
  cluster = null;
});

/** Heartbeat frames received on an idle control connection to host:port in `ms`. */
async function heartbeatsIn(c: TestCluster, host: string, port: number, ms: number): Promise<number> {
  const secrets = linkSecretsOf(c.topo, "cli");
  const link = await connectLink({ host, port, key: secrets.key, tls: secrets.tls, role: "control", nodeId: 0, timeoutMs: 3000, logger: silent });
  let n = 0;
  link.on("frame", (f: Frame) => {
    if (f.type === "heartbeat") n++;
  });
  await new Promise((r) => setTimeout(r, ms));
  link.close();
  return n;
}

describe("control heartbeats", () => {
  it("a subsystem and the RCM heartbeat on an open control connection; a stopped subsystem is given up after linkTimeoutMs (TM_CONTROL_SILENT), not at the request's timeout", async () => {
    const cfg = await fig1Config({ volumeMiB: 4, extra: { linkTimeoutMs: LINK_TIMEOUT_MS, rcm: { port: await freePort() } } });
    cluster = TestCluster.create(cfg, "tidemark-heartbeat-");
    const c = cluster;
    await c.start(1);
    await c.startRcm();
    const ss1 = c.topo.config.subsystems.find((s) => s.id === 1)!;
    const rcm = c.topo.config.rcm!;

    // One every linkTimeoutMs / 4 while the connection is open, from both kinds of server.
    const every = heartbeatIntervalMs(LINK_TIMEOUT_MS);
    const [fromSubsystem, fromRcm] = await Promise.all([heartbeatsIn(c, ss1.host, ss1.replicationPort, 2000), heartbeatsIn(c, rcm.host, rcm.port, 2000)]);
    console.log(`control heartbeats in 2 s, every ${every} ms: subsystem ${fromSubsystem}, RCM ${fromRcm}`);
    expect(fromSubsystem).toBeGreaterThanOrEqual(2000 / every - 3);
    expect(fromRcm).toBeGreaterThanOrEqual(2000 / every - 3);
    expect(((await askRcm<{ pid: number }>(c.topo, { op: "status" }, 10_000)) as { pid: number }).pid).toBeGreaterThan(0);

    // A connected client; the subsystem then stops (SIGSTOP): its sockets stay
    // open and the kernel still takes bytes for it, but it sends nothing.
    const cc = await ControlClient.connect(c.topo, 1);
    expect(await cc.request<{ subsystem: number }>({ op: "status" }, 10_000)).toMatchObject({ subsystem: 1 });
    await c.kill(1, "SIGSTOP");
    const t0 = Date.now();
    const err = await cc.request({ op: "status" }, 60_000).then(
      () => null,
      (e: unknown) => e,
    );
    const waited = Date.now() - t0;
    cc.close();
    console.log(`control heartbeats: a stopped subsystem given up after ${waited} ms (linkTimeoutMs ${LINK_TIMEOUT_MS}, request timeout 60000)`);
    expect(err).toBeInstanceOf(ControlError);
    expect((err as ControlError).code).toBe("TM_CONTROL_SILENT");
    expect((err as ControlError).message).toMatch(/subsystem #1: silent for 800 ms/);
    expect(waited).toBeGreaterThanOrEqual(LINK_TIMEOUT_MS - 50);
    expect(waited).toBeLessThan(LINK_TIMEOUT_MS + 5000);

    // Going on, it answers again, on a new connection.
    await c.kill(1, "SIGCONT");
    const again = await ControlClient.connect(c.topo, 1);
    try {
      expect(await again.request<{ subsystem: number }>({ op: "status" }, 10_000)).toMatchObject({ subsystem: 1 });
      // A long-lived client (the bench's status poll) watches for silence once per
      // request; every watch must take its listeners back, or they pile up on the link.
      const link = (again as unknown as { link: import("node:events").EventEmitter }).link;
      const before = [link.listenerCount("close"), link.listenerCount("frame")];
      for (let i = 0; i < 30; i++) await again.request({ op: "status" }, 10_000);
      expect([link.listenerCount("close"), link.listenerCount("frame")]).toEqual(before);
    } finally {
      again.close();
    }
    expect(c.unexpectedDeaths()).toEqual([]);
  });
});

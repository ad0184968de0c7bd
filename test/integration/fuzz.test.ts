// Issue 13: the seeded fuzzer of the NBD, replication and control ports
// (test/fuzz/, docs/fuzzing.md) on a real 1x1 cluster: a bounded sweep of
// 10,000 inputs, each batch followed by the liveness and bound checks, then a
// replicated write and cmp of every pair. `npm run fuzz -- --inputs 1000000`
// runs the long sweep; a failure here prints the seeds, bytes and replay command.
import net from "node:net";
import { afterAll, describe, expect, it } from "vitest";
import { FuzzCluster, finalCheck, formatFailure, runSweep } from "../fuzz/sweep.ts";
import { runInput } from "../fuzz/send.ts";
import { STALL_EVERY } from "../fuzz/generate.ts";
import { slowDrip } from "../fuzz/slow-drip.ts";
import type { FuzzInput } from "../fuzz/input.ts";

const INPUTS = Number(process.env.TIDEMARK_FUZZ_INPUTS ?? 10_000);
const FROM = Number(process.env.TIDEMARK_FUZZ_FROM ?? 1);

let fc: FuzzCluster | null = null;
afterAll(async () => {
  await fc?.destroy();
});

describe("fuzz: hostile inputs on every port of a real 1x1 cluster", () => {
  it(`fuzz: ${INPUTS} seeded inputs leave every process up, answering, bounded, and the pair identical`, { timeout: 600_000 }, async () => {
    fc = await FuzzCluster.start();
    const report = await runSweep(fc, { from: FROM, inputs: INPUTS, concurrency: 8, batch: 1000, deadlineMs: 15_000, maxFailures: 10, log: (l) => console.log(l) });
    const failures = report.failures.map((f) => formatFailure(f, fc!.topology));
    for (const f of failures) console.log(f);
    console.log(
      `fuzz: ${report.inputs} inputs in ${report.seconds.toFixed(1)} s (${report.perSecond.toFixed(0)}/s); closed by server ${report.outcomes.server} (${report.stalls} stalled in the handshake), dropped by client ${report.outcomes.client}; ` +
        report.processes.map((p) => `#${p.id} RSS ${p.rssStartMiB} → ${p.rssEndMiB} MiB, peak ${p.hwmMiB} MiB`).join("; "),
    );
    expect(failures).toEqual([]);
    expect(report.inputs).toBe(INPUTS);
    // Both ports of both subsystems were reached, and the server refused (closed) a good share by itself.
    expect(report.byPort.nbd).toBeGreaterThan(INPUTS / 4);
    expect(report.byPort.replication).toBeGreaterThan(INPUTS / 4);
    expect(report.outcomes.server).toBeGreaterThan(INPUTS / 4);
    // Every stalled handshake was closed by the server's own deadline (a hang would be a failure above).
    let stalled = 0;
    for (let seed = FROM; seed < FROM + INPUTS; seed++) if (seed % STALL_EVERY === STALL_EVERY - 1) stalled++;
    expect(report.stalls).toBe(stalled);
    expect(await finalCheck(fc, FROM)).toEqual([]);
  });
});

describe("fuzz: a slow-drip client", () => {
  it("fuzz: a handshake fed a byte every second on the replication port is closed by its 5 s deadline", { timeout: 120_000 }, async () => {
    fc ??= await FuzzCluster.start();
    const ss = fc.cluster.topo.config.subsystems[1];
    const r = await slowDrip("replication", { host: ss.host, port: ss.replicationPort }, 1000, 30_000);
    console.log(`fuzz: slow drip on the replication port: ${r.bytesSent} bytes sent, closed after ${r.closedAfterMs} ms`);
    expect(r.closedAfterMs).not.toBeNull();
    // 5 s is the link server's handshake bound (appliance/subsystem/subsystem.ts); the margin is for a loaded machine.
    expect(r.closedAfterMs!).toBeGreaterThanOrEqual(4900);
    expect(r.closedAfterMs!).toBeLessThan(15_000);
  });
});

describe("fuzz: the runner's own verdicts (negative controls)", () => {
  const input = (ending: FuzzInput["ending"]): FuzzInput => ({ seed: 0, subsystem: 1, port: "nbd", label: "control", steps: [{ kind: "send", bytes: Buffer.from("hello") }], cutAt: null, ending });
  // allowHalfOpen: else node ends the server's side by itself on the client's FIN, whatever the server's code does.
  const serve = async (onSocket: (s: net.Socket) => void): Promise<{ port: number; close: () => void }> => {
    const sockets: net.Socket[] = [];
    const server = net.createServer({ allowHalfOpen: true }, (s) => {
      sockets.push(s);
      s.on("error", () => {});
      onSocket(s);
    });
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
    return {
      port: (server.address() as net.AddressInfo).port,
      close: () => {
        for (const s of sockets) s.destroy();
        server.close();
      },
    };
  };

  it("fuzz: a server that never closes a half-closed connection is reported as a hang at the deadline", async () => {
    const srv = await serve((s) => s.resume());
    try {
      const t = Date.now();
      const out = await runInput(input("end"), { host: "127.0.0.1", port: srv.port }, "k", 500);
      expect(out.closedBy).toBe("hang");
      expect(Date.now() - t).toBeGreaterThanOrEqual(450);
    } finally {
      srv.close();
    }
  });

  it("fuzz: a server that closes after the client's FIN is no hang; a reset ending does not wait", async () => {
    const srv = await serve((s) => {
      s.resume();
      s.on("end", () => s.end());
    });
    try {
      expect((await runInput(input("end"), { host: "127.0.0.1", port: srv.port }, "k", 5000)).closedBy).toBe("server");
      expect((await runInput(input("reset"), { host: "127.0.0.1", port: srv.port }, "k", 5000)).closedBy).toBe("client");
    } finally {
      srv.close();
    }
  });
});

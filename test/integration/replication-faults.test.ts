// What a subsystem does with hostile or broken peers, and the stamping rule
// for dependent writes across primaries, on real processes.
import { afterEach, describe, expect, it } from "vitest";
import net from "node:net";
import path from "node:path";
import Database from "better-sqlite3";
import pino from "pino";
import { TestCluster, cmp, fig1Config, prng } from "../support/cluster.ts";
import { connectLink } from "../../appliance/replication/link.ts";
import { encodeFrame, FRAME_HEADER_BYTES } from "../../appliance/replication/frames.ts";
import { subsystemDir } from "../../config/load.ts";
import { linkSecretsOf } from "../../config/keys.ts";

let cluster: TestCluster | null = null;
afterEach(async () => {
  await cluster?.destroy();
  cluster = null;
});

function sendAndClose(port: number, bytes: Buffer): Promise<void> {
  return new Promise((resolve) => {
    const s = net.connect(port, "127.0.0.1");
    s.on("error", () => resolve());
    s.on("close", () => resolve());
    s.on("connect", () => {
      s.write(bytes);
      // Half the connections just go away, half wait for the server to close them.
      setTimeout(() => s.destroy(), 200);
    });
  });
}

describe("replication: faults", () => {
  it("replication: thousands of random and truncated frames to secondary #3's replication port: no crash, each bad connection dropped, replication goes on", async () => {
    cluster = TestCluster.create(await fig1Config({ volumeMiB: 8 }));
    const c = cluster;
    await c.startAll();
    const ss3 = c.topo.config.subsystems.find((s) => s.id === 3)!;
    const rand = prng(42);
    const bytes = (n: number) => Buffer.from(Array.from({ length: n }, () => Math.floor(rand() * 256)));
    const valid = encodeFrame({ type: "hello", role: "link", nodeId: 9, nonce: bytes(32) });
    const rcr = encodeFrame({
      type: "rcr",
      generation: 1,
      group: "C1",
      records: [{ primaryId: 1, seq: 1, ts: 5n, volume: "s3a", op: "write", offset: 0, length: 4096, data: bytes(4096) }],
    });
    let sent = 0;
    // Unauthenticated garbage: random bytes, truncated frames, corrupted frames.
    for (let batch = 0; batch < Number(process.env.FUZZ_BATCHES ?? 50); batch++) {
      const conns: Promise<void>[] = [];
      for (let i = 0; i < 50; i++) {
        const kind = Math.floor(rand() * 4);
        let b: Buffer;
        if (kind === 0) b = bytes(1 + Math.floor(rand() * 200));
        else if (kind === 1) b = valid.subarray(0, Math.floor(rand() * valid.length));
        else if (kind === 2) {
          b = Buffer.from(rcr);
          b[Math.floor(rand() * b.length)] ^= 1 + Math.floor(rand() * 255);
        } else b = Buffer.concat([rcr.subarray(0, FRAME_HEADER_BYTES), bytes(64)]);
        conns.push(sendAndClose(ss3.replicationPort, b));
        sent++;
      }
      await Promise.all(conns);
    }
    // Authenticated peers (they hold the key) sending frames that are wrong: a node that is no
    // primary of the group, out-of-range RCRs, garbage after the handshake.
    const logger = pino({ level: "silent" });
    const secrets = linkSecretsOf(c.topo, "cli");
    for (let i = 0; i < 400; i++) {
      // The TLS identity names the node the hello claims (docs/security.md).
      const tls = { ...secrets.tls, identity: `ss${90 + (i % 5)}` };
      const link = await connectLink({ host: "127.0.0.1", port: ss3.replicationPort, key: secrets.key, tls, role: "link", nodeId: 90 + (i % 5), timeoutMs: 3000, logger });
      link.on("frame", () => {});
      const closed = new Promise<void>((r) => link.once("close", () => r()));
      const k = i % 4;
      if (k === 0) link.send({ type: "rcr", generation: 1, group: "C1", records: [{ primaryId: 90, seq: 1, ts: 1n, volume: "s3a", op: "write", offset: 0, length: 4096, data: bytes(4096) }] });
      else if (k === 1) link.send({ type: "sync", generation: 1, group: "C1", primaryId: 90 + (i % 5), t: 10n ** 18n });
      else if (k === 2) link.sendRaw(bytes(100 + Math.floor(rand() * 100)));
      else link.send({ type: "rcr", generation: 1, group: "NOPE", records: [] });
      await closed;
      sent++;
    }
    for (const id of c.ids) expect(c.alive(id), `subsystem #${id} alive`).toBe(true);
    // The real links still replicate.
    const n = await c.nbd("p1a");
    const data = bytes(1 << 20);
    await n.write(0, data);
    await n.close();
    await c.quiesce("C1", 30_000);
    expect(await cmp(c.volumeFile("p1a"), c.volumeFile("s3a"))).toBeNull();
    const log = await c.waitForLog(3, /frame refused/);
    expect(log).toMatch(/frame|handshake/i);
    expect(log).toContain("frame refused");
    console.log(`replication faults: ${sent} bad connections and frames sent to #3; still replicating`);
    expect(c.unexpectedDeaths()).toEqual([]);
  });

  it("timestamps: dependent writes alternating between primaries #1 and #2 in a tight loop get strictly increasing stamps", async () => {
    cluster = TestCluster.create(await fig1Config({ volumeMiB: 8 }));
    const c = cluster;
    await c.startAll();
    // Secondary #3 is stopped, so nothing is acknowledged and every RCR stays in its primary's journal.
    await c.kill(3, "SIGSTOP");
    const a = await c.nbd("p1a");
    const b = await c.nbd("p2a");
    const N = 300;
    for (let i = 0; i < N; i++) {
      const buf = Buffer.alloc(4096);
      buf.writeUInt32BE(i, 0);
      // Each write is issued only after the previous one (on the other primary) was acknowledged.
      await (i % 2 === 0 ? a : b).write(Math.floor(i / 2) * 4096, buf);
    }
    const stamps: bigint[] = new Array(N);
    for (const [id, vol] of [
      [1, "p1a"],
      [2, "p2a"],
    ] as const) {
      const db = new Database(path.join(subsystemDir(c.topo, id), "state.db"), { readonly: true });
      // Host writes only (the initial copy's zero runs may not be trimmed yet); write i went to offset floor(i / 2) * 4096.
      const rows = db.prepare("SELECT ts, off FROM journal WHERE volume = ? AND op = 1").safeIntegers(true).all(vol) as { ts: bigint; off: bigint }[];
      db.close();
      for (const r of rows) stamps[Number(r.off / 4096n) * 2 + (id === 2 ? 1 : 0)] = r.ts;
    }
    for (let i = 0; i < N; i++) expect(stamps[i], `write ${i} is in its primary's journal`).toBeDefined();
    for (let i = 1; i < N; i++) expect(stamps[i] > stamps[i - 1], `write ${i} stamped after write ${i - 1}`).toBe(true);
    process.kill(c.procs.get(3)!.pid!, "SIGCONT");
    await a.close();
    await b.close();
    await c.quiesce("C1", 30_000);
    expect(await cmp(c.volumeFile("p1a"), c.volumeFile("s3a"))).toBeNull();
    expect(await cmp(c.volumeFile("p2a"), c.volumeFile("s3b"))).toBeNull();
  });
});

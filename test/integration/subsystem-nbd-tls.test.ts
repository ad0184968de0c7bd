// A real subsystem process serving NBD over TLS from its config (nbdTls,
// nbdLimits): nbdinfo reaches a volume with PSK over nbds://, a cleartext
// client gets nothing, and a PSK file readable by others stops the start
// with an error naming the file.
import { execFile } from "node:child_process";
import { chmod } from "node:fs/promises";
import path from "node:path";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { TestCluster, freePort } from "../support/cluster.ts";
import { makePsk } from "../support/tls-material.ts";
import { nbdTools } from "../support/tools.ts";

const run = promisify(execFile);
const TOOLS = nbdTools("subsystem nbd tls");

describe("subsystem nbd tls: nbdTls require with a PSK file", () => {
  let c: TestCluster;
  let nbdPort: number;
  let pskFile: string;

  beforeAll(async () => {
    nbdPort = await freePort();
    c = TestCluster.create(
      {
        clusterKey: "test-cluster-key-0123456789",
        dataDir: "data",
        subsystems: [
          {
            id: 1,
            host: "127.0.0.1",
            replicationPort: await freePort(),
            nbdPort,
            volumes: [{ name: "v1", sizeMiB: 8 }],
            nbdTls: { mode: "require", pskFile: "tls/keys.psk" },
            nbdLimits: { connectionsPerPeerMax: 8, stallTimeoutMs: 10_000 },
          },
        ],
      },
      "tidemark-nbd-tls-",
    );
    pskFile = (await makePsk(path.join(c.dir, "tls"), "alice")).file;
  });
  afterAll(async () => {
    await c?.destroy();
  });

  it.skipIf(!TOOLS.nbdinfo)("subsystem: nbdinfo over nbds:// with the PSK reads the volume; cleartext is refused", async () => {
    await c.start(1);
    const { stdout } = await run("nbdinfo", ["--json", `nbds://alice@127.0.0.1:${nbdPort}/v1?tls-psk-file=${pskFile}`]);
    expect((JSON.parse(stdout) as { exports: { "export-size": number }[] }).exports[0]["export-size"]).toBe(8 * 1024 * 1024);
    const plain = await run("nbdinfo", [`nbd://127.0.0.1:${nbdPort}/v1`]).catch((e: unknown) => e);
    expect(plain).toBeInstanceOf(Error);
    expect(await c.waitForLog(1, /TLS is required/)).toMatch(/TLS is required/);
    await c.stopAll();
  });

  it("subsystem: a PSK file readable by group or others stops the start, naming the file", async () => {
    await chmod(pskFile, 0o644);
    const err = await c.start(1).then(
      () => null,
      (e: unknown) => e as Error,
    );
    expect(err?.message).toMatch(new RegExp(`nbdTls\\.pskFile ${pskFile.replace(/[.]/g, "\\.")} is readable by group or others \\(mode 644\\)`));
    await chmod(pskFile, 0o600);
  });
});

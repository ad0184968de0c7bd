// A running NbdServer on 127.0.0.1 over file exports in a temp dir, for the
// interop tests; log lines are collected so a test can check what was logged.
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import pino from "pino";
import { NbdServer, type NbdServerOptions } from "../../appliance/nbd/server.ts";
import { FileExport, fileExportProvider } from "./file-export.ts";

export interface NbdFixture {
  server: NbdServer;
  host: string;
  port: number;
  dir: string;
  exports: Map<string, FileExport>;
  logs: { level: number; msg: string; [k: string]: unknown }[];
  uri(name: string): string;
  stop(): Promise<void>;
}

export interface FixtureExport {
  name: string;
  sizeBytes: number;
  readOnly?: boolean;
  description?: string;
  /** Initial content; default zeroes. */
  content?: Buffer;
}

export interface FixtureOptions {
  defaultExport?: string;
  maxPayloadBytes?: number;
  /** Passed to the server as is: limits, TLS, handshake deadline. */
  server?: Pick<NbdServerOptions, "limits" | "tlsMode" | "tls" | "handshakeTimeoutMs">;
}

export async function startNbdFixture(exports: FixtureExport[], o: FixtureOptions = {}): Promise<NbdFixture> {
  const dir = await mkdtemp(path.join(tmpdir(), "tm-nbd-"));
  const logs: NbdFixture["logs"] = [];
  const logger = pino({ level: "debug" }, { write: (line: string) => void logs.push(JSON.parse(line)) });
  const opened = new Map<string, FileExport>();
  for (const e of exports) {
    const file = path.join(dir, `${e.name || "default"}.img`);
    await writeFile(file, e.content ?? Buffer.alloc(0));
    opened.set(e.name, await FileExport.open(file, { name: e.name, sizeBytes: e.sizeBytes, readOnly: e.readOnly, description: e.description }));
  }
  const server = new NbdServer({
    exports: fileExportProvider([...opened.values()], o.defaultExport),
    logger,
    maxPayloadBytes: o.maxPayloadBytes ?? 32 * 1024 * 1024,
    ...o.server,
  });
  const { host, port } = await server.listen("127.0.0.1", 0);
  return {
    server,
    host,
    port,
    dir,
    exports: opened,
    logs,
    uri: (name) => `nbd://${host}:${port}/${name}`,
    async stop() {
      await server.close();
      for (const e of opened.values()) await e.close();
      await rm(dir, { recursive: true, force: true });
    },
  };
}

// The one pair the small benchmarks (bench:resync, bench:verify) measure: a
// 1-primary/1-secondary group C1 with an RCM, in a fresh work folder, on free
// loopback ports, with N MiB of random bytes ready in a plain file beside it.
import { closeSync, mkdirSync, mkdtempSync, openSync, writeFileSync, writeSync } from "node:fs";
import { randomFillSync } from "node:crypto";
import path from "node:path";
import { loadConfig, type LoadedTopology } from "../config/load.ts";
import { freePort } from "../test/support/ports.ts";
import { removeAtExit, startReady, tidemarkTimed } from "./processes.ts";

export interface BenchPair {
  dir: string;
  /** The config file every tidemark command is given. */
  file: string;
  topo: LoadedTopology;
  /** N MiB of random bytes in a plain file. */
  source: string;
  /** The primary volume's NBD URI. */
  uri: string;
}

/** Builds and starts the pair; resolves once its initial copy is over (quiesced). */
export async function startPair(o: { dir: string; mib: number; keep: boolean }, name: string): Promise<BenchPair> {
  mkdirSync(o.dir, { recursive: true });
  const dir = mkdtempSync(path.join(o.dir, `tidemark-bench-${name}-`));
  removeAtExit(dir, o.keep);
  const cfg = {
    clusterKey: "tidemark-bench-cluster-key-0123456789",
    dataDir: "data",
    clock: "monotonic",
    syncIntervalMs: 50,
    rcm: { port: await freePort(), autoSuspend: false },
    subsystems: [
      { id: 1, host: "127.0.0.1", replicationPort: await freePort(), nbdPort: await freePort(), volumes: [{ name: "p1a", sizeMiB: o.mib }] },
      { id: 2, host: "127.0.0.1", replicationPort: await freePort(), nbdPort: await freePort(), volumes: [{ name: "s2a", sizeMiB: o.mib }] },
    ],
    groups: [{ name: "C1", pairs: [{ primary: "p1a", secondary: "s2a" }] }],
  };
  const file = path.join(dir, "config.json");
  writeFileSync(file, JSON.stringify(cfg, null, 2));
  const topo = loadConfig(file);
  const source = path.join(dir, "source.img");
  const fd = openSync(source, "w");
  const chunk = Buffer.alloc(1 << 20);
  for (let i = 0; i < o.mib; i++) writeSync(fd, randomFillSync(chunk));
  closeSync(fd);
  await Promise.all([1, 2].map((id) => startReady(["subsystem", "--config", file, "--id", String(id)], path.join(dir, `ss${id}.log`))));
  await startReady(["rcm", "--config", file], path.join(dir, "rcm.log"));
  // The new group's initial copy (zeroes over holes) ends before anything is measured.
  tidemarkTimed(["quiesce", "--config", file, "--group", "C1"], "quiesce after the initial copy");
  return { dir, file, topo, source, uri: `nbd://127.0.0.1:${topo.config.subsystems[0].nbdPort}/p1a` };
}

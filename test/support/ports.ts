// Free loopback ports for test clusters and the benchmark.
import { createServer } from "node:net";

function canListen(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = createServer();
    s.once("error", () => resolve(false));
    s.listen(port, "127.0.0.1", () => s.close(() => resolve(true)));
  });
}

// Ports for test clusters come from below the kernel's ephemeral range
// (32768-60999), so no outgoing connection can take one between the check and
// the subsystem's listen, and each process has a range of its own: it claims
// the range by listening on the range's first port for as long as it lives.
// A worker's pool id alone was not enough: two vitest runs at once (a
// developer's, or a test run beside the suite) have the same pool ids, and one
// took a port the other had just found free (EADDRINUSE at a subsystem's start).
const PORT_RANGE_BASE = 20000;
const PORTS_PER_WORKER = 1000;
const RANGES = 12;
const worker = Number(process.env.VITEST_POOL_ID ?? process.env.VITEST_WORKER_ID ?? 0) % RANGES;
let nextPort = Math.floor(Math.random() * (PORTS_PER_WORKER - 1));
// Kept on the process, not the module: vitest may evaluate this module again for each test file
// in one worker process, and each evaluation would otherwise claim (and keep) another range.
const CLAIM = Symbol.for("tidemark.test.portRange");
const processWide = globalThis as { [CLAIM]?: Promise<number> };

/** This process's range: the first from its worker's on whose first port it could listen. */
function claimRange(): Promise<number> {
  processWide[CLAIM] ??= (async () => {
    for (let i = 0; i < RANGES; i++) {
      const r = (worker + i) % RANGES;
      const sentinel = createServer();
      const ok = await new Promise<boolean>((resolve) => {
        sentinel.once("error", () => resolve(false));
        sentinel.listen(PORT_RANGE_BASE + r * PORTS_PER_WORKER, "127.0.0.1", () => resolve(true));
      });
      if (ok) {
        sentinel.unref();
        return r;
      }
    }
    // Every range is claimed: share the worker's own, as before ranges were claimed.
    return worker;
  })();
  return processWide[CLAIM];
}

export async function freePort(): Promise<number> {
  const base = PORT_RANGE_BASE + (await claimRange()) * PORTS_PER_WORKER + 1;
  for (let i = 0; i < PORTS_PER_WORKER - 1; i++) {
    const port = base + (nextPort++ % (PORTS_PER_WORKER - 1));
    if (await canListen(port)) return port;
  }
  throw new Error(`no free port in ${base}..${base + PORTS_PER_WORKER - 2}`);
}

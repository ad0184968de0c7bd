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
// the subsystem's listen, and each vitest worker has a range of its own.
const PORT_RANGE_BASE = 20000;
const PORTS_PER_WORKER = 1000;
const worker = Number(process.env.VITEST_POOL_ID ?? process.env.VITEST_WORKER_ID ?? 0) % 12;
let nextPort = Math.floor(Math.random() * PORTS_PER_WORKER);

export async function freePort(): Promise<number> {
  for (let i = 0; i < PORTS_PER_WORKER; i++) {
    const port = PORT_RANGE_BASE + worker * PORTS_PER_WORKER + (nextPort++ % PORTS_PER_WORKER);
    if (await canListen(port)) return port;
  }
  throw new Error(`no free port in ${PORT_RANGE_BASE + worker * PORTS_PER_WORKER}..+${PORTS_PER_WORKER}`);
}

// `node --import tsx bench/link-tls.ts [--seconds N]`: the cost of link TLS.
// One primary and one secondary subsystem (real processes, loopback), run
// twice: linkTls "psk" and "off". Per run, 4 KiB and 1 MiB writes (16 in
// flight, random aligned offsets) for N seconds each through NBD, then a
// quiesce; prints the host-acknowledged rate and the replicated rate (bytes
// over the time until the secondary applied them). Not part of `npm test`.
import { TestCluster, freePort } from "../test/support/cluster.ts";

const MiB = 1024 * 1024;
const VOLUME_MIB = 256;
const IN_FLIGHT = 16;

function argSeconds(): number {
  const i = process.argv.indexOf("--seconds");
  const n = i >= 0 ? Number(process.argv[i + 1]) : 3;
  if (!Number.isFinite(n) || n <= 0) throw new Error(`--seconds must be a positive number, not '${process.argv[i + 1]}'`);
  return n;
}

async function configOf(mode: "psk" | "off") {
  const ss = async (id: number, vol: string) => ({ id, host: "127.0.0.1", replicationPort: await freePort(), nbdPort: await freePort(), volumes: [{ name: vol, sizeMiB: VOLUME_MIB }] });
  return {
    clusterKeyFile: "cluster.key",
    linkTls: { mode },
    dataDir: "data",
    logLevel: "warn",
    subsystems: [await ss(1, "p1"), await ss(2, "s2")],
    groups: [{ name: "C1", pairs: [{ primary: "p1", secondary: "s2" }] }],
  };
}

interface Figure {
  mode: string;
  size: string;
  writes: number;
  ackMiBs: number;
  replicatedMiBs: number;
}

async function writeFor(c: TestCluster, bytes: number, seconds: number): Promise<{ writes: number; ackS: number; replicatedS: number }> {
  const nbd = await c.nbd("p1");
  const buf = Buffer.alloc(bytes, 0xa5);
  const slots = (VOLUME_MIB * MiB) / bytes;
  let writes = 0;
  let seed = 12345;
  const next = () => (seed = (seed * 1103515245 + 12345) % 2147483648);
  const t0 = performance.now();
  const end = t0 + seconds * 1000;
  await Promise.all(
    Array.from({ length: IN_FLIGHT }, async () => {
      while (performance.now() < end) {
        await nbd.write((next() % slots) * bytes, buf);
        writes++;
      }
    }),
  );
  const ackS = (performance.now() - t0) / 1000;
  await nbd.close();
  await c.quiesce("C1", 300_000);
  return { writes, ackS, replicatedS: (performance.now() - t0) / 1000 };
}

async function main(): Promise<void> {
  const seconds = argSeconds();
  const figures: Figure[] = [];
  for (const mode of ["psk", "off"] as const) {
    const c = TestCluster.create(await configOf(mode), "tidemark-bench-tls-");
    try {
      await c.startAll();
      for (const bytes of [4096, MiB]) {
        const r = await writeFor(c, bytes, seconds);
        const mib = (r.writes * bytes) / MiB;
        figures.push({ mode, size: bytes === MiB ? "1 MiB" : "4 KiB", writes: r.writes, ackMiBs: mib / r.ackS, replicatedMiBs: mib / r.replicatedS });
      }
      const st = await c.status();
      if (st.links[0]?.tls !== mode) throw new Error(`link ran ${st.links[0]?.tls}, not ${mode}`);
    } finally {
      await c.destroy();
    }
  }
  const rows = [["linkTls", "write size", "writes", "acknowledged MiB/s", "replicated MiB/s"], ...figures.map((f) => [f.mode, f.size, String(f.writes), f.ackMiBs.toFixed(1), f.replicatedMiBs.toFixed(1)])];
  const widths = rows[0].map((_, i) => Math.max(...rows.map((r) => r[i].length)));
  process.stdout.write(rows.map((r) => r.map((c, i) => c.padEnd(widths[i])).join("  ")).join("\n") + "\n");
}

await main();

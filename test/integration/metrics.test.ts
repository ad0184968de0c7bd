// Prometheus metrics from real subsystem processes.
import { afterEach, describe, expect, it } from "vitest";
import { TestCluster, fig1Config, freePort } from "../support/cluster.ts";

let cluster: TestCluster | null = null;
afterEach(async () => {
  await cluster?.destroy();
  cluster = null;
});

async function scrape(port: number): Promise<string> {
  const res = await fetch(`http://127.0.0.1:${port}/metrics`);
  expect(res.status).toBe(200);
  return res.text();
}

function value(text: string, series: string): number {
  const line = text.split("\n").find((l) => l.startsWith(series + " "));
  if (!line) throw new Error(`no series ${series} in:\n${text.slice(0, 2000)}`);
  return Number(line.slice(series.length + 1));
}

describe("metrics: /metrics on a subsystem's metricsPort", () => {
  it("metrics: writes, links, queues, applied count and lag, as the primary and a secondary see them", async () => {
    const cfg = await fig1Config({ volumeMiB: 8 });
    const m1 = await freePort();
    const m3 = await freePort();
    (cfg.subsystems[0] as Record<string, unknown>).metricsPort = m1;
    (cfg.subsystems[2] as Record<string, unknown>).metricsPort = m3;
    cluster = TestCluster.create(cfg);
    await cluster.startAll();
    // The initial copy of the group's volumes is applied before the host writes.
    const before = value(await scrape(m3), 'tidemark_applied_total{group="C1"}');
    const w = await cluster.nbd("p1a");
    for (let i = 0; i < 10; i++) await w.write(i * 4096, Buffer.alloc(4096, i + 1));
    await w.close();
    await cluster.quiesce();
    const p = await scrape(m1);
    expect(value(p, "tidemark_host_writes_total")).toBe(10);
    expect(value(p, 'tidemark_link_up{secondary="3"}')).toBe(1);
    expect(value(p, 'tidemark_group_replicating{group="C1",role="primary"}')).toBe(1);
    const s = await scrape(m3);
    expect(value(s, 'tidemark_applied_total{group="C1"}') - before).toBe(10);
    expect(value(s, 'tidemark_disk_queue{group="C1"}')).toBe(0);
    expect(value(s, 'tidemark_generation{group="C1"}')).toBe(1);
    const lag = value(s, 'tidemark_lag_seconds{group="C1"}');
    expect(lag).toBeGreaterThan(0);
    expect(lag).toBeLessThan(5);
    expect(s).toContain("tidemark_process_");
    expect((await fetch(`http://127.0.0.1:${m3}/nope`)).status).toBe(404);
  });
});

// docs/metrics.md lists every series a subsystem's /metrics registers, with
// its type, and every counter follows Prometheus' `_total` convention. The
// registry is the real one (prom-client), fed a status document.
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { describe, expect, it } from "vitest";
import { metricsRegistry, SERIES } from "../../appliance/subsystem/metrics.ts";
import type { SubsystemStatus } from "../../appliance/cli/status-view.ts";

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");

/** name -> type, from the rows `| \`name\` | type | labels | meaning |` of docs/metrics.md. */
function documented(): Map<string, string> {
  const doc = fs.readFileSync(path.join(ROOT, "docs/metrics.md"), "utf8");
  return new Map([...doc.matchAll(/^\| `([a-z0-9_:]+)` \| (counter|gauge|histogram|summary) \| [^|]+ \| [^|]+.*\|$/gm)].map((m) => [m[1], m[2]]));
}

const status = {
  subsystem: 1,
  volumes: [{ name: "p1a", role: "primary", path: "/x", kind: "file", sizeBytes: 1, nbdUrl: null, readOnly: false, bitmapBlocks: 3 }],
  primary: {
    lastStamp: "1",
    writes: 7,
    writeBytes: 7 * 4096,
    pending: 0,
    journal: { entries: 2, bytes: 10, hotRegions: 0 },
    groups: [{ name: "C1", state: "active", reason: null, suspendedBy: null, bitmapBlocks: 3, pending: 0, lastSyncT: "1", generation: 1 }],
    links: [{ secondary: 3, state: "up", sentSeq: 1, ackedSeq: 1, bytesInFlight: 0, lastError: null }],
    volumes: [],
  },
  secondary: null,
  disk: { state: "ok", reason: null, file: null, fileSystem: null, episodes: 0, refusedWrites: 0 },
  log: { droppedLines: 0, droppedBytes: 0, lastError: null },
} as unknown as SubsystemStatus;

describe("metrics docs", () => {
  it("metrics docs: every registered series is listed in docs/metrics.md with its type", async () => {
    const registry = metricsRegistry(() => status, () => 0n);
    const registered = await registry.getMetricsAsJSON();
    const docs = documented();
    expect(registered.length).toBeGreaterThan(Object.keys(SERIES).length);
    for (const m of registered) expect(docs.get(m.name), `${m.name} (${m.type}) in docs/metrics.md`).toBe(String(m.type));
    // And nothing listed that is not registered (a renamed series leaves no stale row).
    const names = new Set(registered.map((m) => m.name));
    for (const name of docs.keys()) expect(names.has(name), `docs/metrics.md lists ${name}, which is not registered`).toBe(true);
  });

  it("metrics docs: every counter ends in _total, and none of tidemark's own gauges does", async () => {
    const registered = await metricsRegistry(() => status, () => 0n).getMetricsAsJSON();
    for (const m of registered) if (String(m.type) === "counter") expect(m.name, `counter ${m.name}`).toMatch(/_total$/);
    for (const [name, s] of Object.entries(SERIES)) if (s.type === "gauge") expect(name, `gauge ${name}`).not.toMatch(/_total$/);
  });

  it("metrics docs: a counter reports the status figure at each scrape", async () => {
    const text = await metricsRegistry(() => status, () => 0n).metrics();
    expect(text).toMatch(/^# TYPE tidemark_host_writes_total counter$/m);
    expect(text).toMatch(/^tidemark_host_writes_total 7$/m);
    expect(text).toMatch(/^tidemark_host_write_bytes_total 28672$/m);
    expect(text).toMatch(/^tidemark_link_up\{secondary="3"\} 1$/m);
  });
});

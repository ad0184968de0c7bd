// docs/metrics.md lists every series a subsystem's /metrics registers, with
// its type, and every counter follows Prometheus' `_total` convention. The
// registry is the real one (prom-client), fed a status document.
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { describe, expect, it } from "vitest";
import { metricsRegistry, SERIES } from "../../appliance/subsystem/metrics.ts";
import { RCM_SERIES, rcmMetricsRegistry } from "../../appliance/rcm/metrics.ts";
import type { ClockOffsetReport } from "../../appliance/rcm/clock-offsets.ts";
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

const clocks: ClockOffsetReport = {
  subsystems: [
    { subsystem: 1, offsetMs: 2.5, uncertaintyMs: 1.25, roundTripMs: 0.5, ageMs: 10 },
    { subsystem: 2, offsetMs: -1, uncertaintyMs: 1.5, roundTripMs: 1, ageMs: 10 },
  ],
  widest: { ahead: 1, behind: 2, offsetMs: 3.5, uncertaintyMs: 2.75 },
  boundMs: 10,
};

describe("metrics docs", () => {
  it("metrics docs: every registered series of a subsystem and of the RCM is listed in docs/metrics.md with its type", async () => {
    const registered = [...(await metricsRegistry(() => status, () => 0n).getMetricsAsJSON()), ...(await rcmMetricsRegistry(() => clocks).getMetricsAsJSON())];
    const docs = documented();
    expect(registered.length).toBeGreaterThan(Object.keys(SERIES).length + Object.keys(RCM_SERIES).length);
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

  it("metrics docs: the RCM reports the clocks it measured, in seconds, and nothing of them with clock monotonic", async () => {
    const text = await rcmMetricsRegistry(() => clocks).metrics();
    expect(text).toMatch(/^tidemark_rcm_clock_offset_seconds\{subsystem="1"\} 0\.0025$/m);
    expect(text).toMatch(/^tidemark_rcm_clock_offset_seconds\{subsystem="2"\} -0\.001$/m);
    expect(text).toMatch(/^tidemark_rcm_clock_offset_uncertainty_seconds\{subsystem="2"\} 0\.0015$/m);
    expect(text).toMatch(/^tidemark_rcm_clock_widest_offset_seconds\{ahead="1",behind="2"\} 0\.0035$/m);
    expect(text).toMatch(/^tidemark_rcm_clock_offset_bound_seconds 0\.01$/m);
    const none = await rcmMetricsRegistry(() => null).metrics();
    expect(none).not.toMatch(/^tidemark_rcm_clock_\w+\{.*\} /m);
    expect(none).toMatch(/^tidemark_rcm_clock_offset_bound_seconds 0$/m);
  });
});

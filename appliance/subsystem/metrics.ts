// Prometheus metrics of one subsystem (prom-client), served over HTTP on the
// optional metricsPort. Every figure is read from the same status the control
// RPC gives, at scrape time, so nothing is counted twice on the write path.
import http from "node:http";
import { Counter, Gauge, Registry, collectDefaultMetrics } from "prom-client";
import type { SubsystemStatus } from "../cli/status-view.ts";
import { tmError } from "../errors/codes.ts";

/**
 * Every series this module registers besides prom-client's default process
 * metrics: name, type, labels and meaning. docs/metrics.md lists each one and
 * test/unit/metrics-docs.test.ts keeps the two equal. Prometheus naming:
 * counters end in `_total`, a unit is in the name (`_bytes`, `_seconds`).
 */
export const SERIES = {
  tidemark_host_writes_total: { type: "counter", labels: [], help: "host writes accepted by this primary since it started" },
  tidemark_host_write_bytes_total: { type: "counter", labels: [], help: "bytes of host writes accepted by this primary since it started" },
  tidemark_journal_entries: { type: "gauge", labels: [], help: "journal entries held by this primary" },
  tidemark_link_up: { type: "gauge", labels: ["secondary"], help: "1 while the replication link to a secondary is up" },
  tidemark_group_replicating: { type: "gauge", labels: ["group", "role"], help: "1 while this subsystem replicates the group (0: suspended, fenced, taken over)" },
  tidemark_generation: { type: "gauge", labels: ["group"], help: "the group's fencing generation on this subsystem" },
  tidemark_rcr_queue: { type: "gauge", labels: ["group"], help: "RCRs received and not yet due (ts > 112)" },
  tidemark_disk_queue: { type: "gauge", labels: ["group"], help: "RCRs due and not yet applied (ts <= 112)" },
  tidemark_applied_total: { type: "counter", labels: ["group"], help: "RCRs applied to this secondary's volumes since it started" },
  tidemark_lag_seconds: { type: "gauge", labels: ["group"], help: "now minus this secondary's 112: how far its volumes are behind" },
  tidemark_bitmap_blocks: { type: "gauge", labels: ["volume"], help: "4 KiB blocks marked for resync" },
  tidemark_state_disk_full: { type: "gauge", labels: [], help: "1 while the state disk is full (state-disk-full: host writes get ENOSPC, no RCRs are taken)" },
  tidemark_host_writes_refused_disk_full_total: { type: "counter", labels: [], help: "host writes refused with ENOSPC because the state disk was full, since start" },
  tidemark_log_dropped_lines_total: { type: "counter", labels: [], help: "log lines dropped since start because the log file could not be written" },
  // The online verify (docs/verify.md). The secondary's totals live in its state file (verify_seen), so they survive a restart.
  tidemark_verify_hashed_bytes_total: { type: "counter", labels: [], help: "bytes this primary hashed for online verifies since it started" },
  tidemark_verify_records_total: { type: "counter", labels: [], help: "VERIFY records this primary journaled since it started" },
  tidemark_verify_compared_blocks_total: { type: "counter", labels: ["volume"], help: "4 KiB blocks this secondary compared with its primary's hashes, over all verifies" },
  tidemark_verify_mismatched_blocks_total: { type: "counter", labels: ["volume"], help: "4 KiB blocks of this secondary found different from the primary's at the same stamp, over all verifies" },
} as const satisfies Record<string, { type: "counter" | "gauge"; labels: readonly string[]; help: string }>;

export type SeriesName = keyof typeof SERIES;

/** prom-client's default process metrics (`process_*`, `nodejs_*`) get this prefix; docs/metrics.md lists them too. */
export const PROCESS_METRICS_PREFIX = "tidemark_";

/** Sets a value on a gauge, or on a counter (reset at each scrape, then raised to the figure status holds). */
type Fill = (set: (labels: Record<string, string>, value: number) => void, s: SubsystemStatus) => void;

export function metricsRegistry(status: () => SubsystemStatus, nowNs: () => bigint): Registry {
  const registry = new Registry();
  collectDefaultMetrics({ register: registry, prefix: PROCESS_METRICS_PREFIX });
  const series = (name: SeriesName, fill: Fill) => {
    const { type, labels, help } = SERIES[name];
    const common = { name, help, labelNames: [...labels], registers: [registry] };
    // A counter read from status: the engines count since start, so a scrape
    // reports that figure; a restart starts it at 0, which Prometheus reads as a counter reset.
    if (type === "gauge") {
      new Gauge({ ...common, collect() { this.reset(); fill((l, v) => this.set(l, v), status()); } });
    } else {
      new Counter({ ...common, collect() { this.reset(); fill((l, v) => this.inc(l, v), status()); } });
    }
  };
  series("tidemark_host_writes_total", (set, s) => set({}, s.primary?.writes ?? 0));
  series("tidemark_host_write_bytes_total", (set, s) => set({}, s.primary?.writeBytes ?? 0));
  series("tidemark_journal_entries", (set, s) => set({}, s.primary?.journal.entries ?? 0));
  series("tidemark_link_up", (set, s) => {
    for (const l of s.primary?.links ?? []) set({ secondary: String(l.secondary) }, l.state === "up" ? 1 : 0);
  });
  series("tidemark_group_replicating", (set, s) => {
    for (const pg of s.primary?.groups ?? []) set({ group: pg.name, role: "primary" }, pg.state === "active" ? 1 : 0);
    for (const sg of s.secondary ?? []) set({ group: sg.name, role: "secondary" }, sg.state === "active" ? 1 : 0);
  });
  series("tidemark_generation", (set, s) => {
    for (const sg of s.secondary ?? []) set({ group: sg.name }, sg.generation);
    for (const pg of s.primary?.groups ?? []) if (!(s.secondary ?? []).some((x) => x.name === pg.name)) set({ group: pg.name }, pg.generation);
  });
  series("tidemark_rcr_queue", (set, s) => {
    for (const sg of s.secondary ?? []) set({ group: sg.name }, sg.rcrQueue);
  });
  series("tidemark_disk_queue", (set, s) => {
    for (const sg of s.secondary ?? []) set({ group: sg.name }, sg.diskQueue);
  });
  series("tidemark_applied_total", (set, s) => {
    for (const sg of s.secondary ?? []) set({ group: sg.name }, sg.applied);
  });
  series("tidemark_lag_seconds", (set, s) => {
    const now = nowNs();
    for (const sg of s.secondary ?? []) if (BigInt(sg.second) > 0n) set({ group: sg.name }, Number(now - BigInt(sg.second)) / 1e9);
  });
  series("tidemark_bitmap_blocks", (set, s) => {
    for (const v of s.volumes) set({ volume: v.name }, v.bitmapBlocks);
  });
  series("tidemark_state_disk_full", (set, s) => set({}, s.disk?.state === "state-disk-full" ? 1 : 0));
  series("tidemark_host_writes_refused_disk_full_total", (set, s) => set({}, s.disk?.refusedWrites ?? 0));
  series("tidemark_log_dropped_lines_total", (set, s) => set({}, s.log?.droppedLines ?? 0));
  series("tidemark_verify_hashed_bytes_total", (set, s) => set({}, s.verify?.counters.hashedBytes ?? 0));
  series("tidemark_verify_records_total", (set, s) => set({}, s.verify?.counters.records ?? 0));
  series("tidemark_verify_compared_blocks_total", (set, s) => {
    for (const v of s.verify?.secondary ?? []) set({ volume: v.volume }, v.verifiedTotal);
  });
  series("tidemark_verify_mismatched_blocks_total", (set, s) => {
    for (const v of s.verify?.secondary ?? []) set({ volume: v.volume }, v.mismatchedTotal);
  });
  return registry;
}

export function serveMetrics(registry: Registry, host: string, port: number): Promise<http.Server> {
  const server = http.createServer((req, res) => {
    if (req.url !== "/metrics") {
      res.writeHead(404).end("tidemark serves /metrics\n");
      return;
    }
    registry.metrics().then(
      (text) => res.writeHead(200, { "content-type": registry.contentType }).end(text),
      (err: Error) => res.writeHead(500).end(`${err.message}\n`),
    );
  });
  return new Promise((resolve, reject) => {
    server.once("error", (err: NodeJS.ErrnoException) =>
      reject(tmError("TM_LISTEN", `metrics: cannot listen on ${host}:${port}: ${err.code ?? err.message}`, { listener: "metrics", host, port, sysCode: err.code }, { cause: err })),
    );
    server.listen(port, host, () => resolve(server));
  });
}

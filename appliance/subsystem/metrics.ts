// Prometheus metrics of one subsystem (prom-client), served over HTTP on the
// optional metricsPort. Every figure is read from the same status the control
// RPC gives, at scrape time, so nothing is counted twice on the write path.
import http from "node:http";
import { Gauge, Registry, collectDefaultMetrics } from "prom-client";
import type { SubsystemStatus } from "../cli/status-view.ts";
import { tmError } from "../errors/codes.ts";
import { registerVerifyMetrics } from "./verify-metrics.ts";

export function metricsRegistry(status: () => SubsystemStatus, nowNs: () => bigint): Registry {
  const registry = new Registry();
  collectDefaultMetrics({ register: registry, prefix: "tidemark_process_" });
  const gauge = (name: string, help: string, labelNames: string[], fill: (g: Gauge, s: SubsystemStatus) => void) =>
    new Gauge({
      name,
      help,
      labelNames,
      registers: [registry],
      collect() {
        this.reset();
        fill(this, status());
      },
    });
  gauge("tidemark_host_writes", "host writes accepted by this primary since it started", [], (g, s) => g.set(s.primary?.writes ?? 0));
  gauge("tidemark_host_write_bytes", "bytes of host writes accepted by this primary since it started", [], (g, s) => g.set(s.primary?.writeBytes ?? 0));
  gauge("tidemark_journal_entries", "journal entries held by this primary", [], (g, s) => g.set(s.primary?.journal.entries ?? 0));
  gauge("tidemark_link_up", "1 while the replication link to a secondary is up", ["secondary"], (g, s) => {
    for (const l of s.primary?.links ?? []) g.set({ secondary: String(l.secondary) }, l.state === "up" ? 1 : 0);
  });
  gauge("tidemark_group_replicating", "1 while this subsystem replicates the group (0: suspended, fenced, taken over)", ["group", "role"], (g, s) => {
    for (const pg of s.primary?.groups ?? []) g.set({ group: pg.name, role: "primary" }, pg.state === "active" ? 1 : 0);
    for (const sg of s.secondary ?? []) g.set({ group: sg.name, role: "secondary" }, sg.state === "active" ? 1 : 0);
  });
  gauge("tidemark_generation", "the group's fencing generation on this subsystem", ["group"], (g, s) => {
    for (const sg of s.secondary ?? []) g.set({ group: sg.name }, sg.generation);
    for (const pg of s.primary?.groups ?? []) if (!(s.secondary ?? []).some((x) => x.name === pg.name)) g.set({ group: pg.name }, pg.generation);
  });
  gauge("tidemark_rcr_queue", "RCRs received and not yet due (ts > 112)", ["group"], (g, s) => {
    for (const sg of s.secondary ?? []) g.set({ group: sg.name }, sg.rcrQueue);
  });
  gauge("tidemark_disk_queue", "RCRs due and not yet applied (ts <= 112)", ["group"], (g, s) => {
    for (const sg of s.secondary ?? []) g.set({ group: sg.name }, sg.diskQueue);
  });
  gauge("tidemark_applied", "RCRs applied to this secondary's volumes", ["group"], (g, s) => {
    for (const sg of s.secondary ?? []) g.set({ group: sg.name }, sg.applied);
  });
  gauge("tidemark_lag_seconds", "now minus this secondary's 112: how far its volumes are behind", ["group"], (g, s) => {
    const now = nowNs();
    for (const sg of s.secondary ?? []) if (BigInt(sg.second) > 0n) g.set({ group: sg.name }, Number(now - BigInt(sg.second)) / 1e9);
  });
  gauge("tidemark_bitmap_blocks", "4 KiB blocks marked for resync", ["volume"], (g, s) => {
    for (const v of s.volumes) g.set({ volume: v.name }, v.bitmapBlocks);
  });
  gauge("tidemark_state_disk_full", "1 while the state disk is full (state-disk-full: host writes get ENOSPC, no RCRs are taken)", [], (g, s) =>
    g.set(s.disk?.state === "state-disk-full" ? 1 : 0),
  );
  gauge("tidemark_host_writes_refused_disk_full", "host writes refused with ENOSPC because the state disk was full, since start", [], (g, s) => g.set(s.disk?.refusedWrites ?? 0));
  gauge("tidemark_log_dropped_lines", "log lines dropped since start because the log file could not be written", [], (g, s) => g.set(s.log?.droppedLines ?? 0));
  registerVerifyMetrics(registry, status);
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

// The online verify's Prometheus counters (docs/verify.md, Metrics), read from
// the subsystem's status at scrape time like the rest of metrics.ts. The
// secondary's totals live in its state file (verify_seen), so they survive a
// restart; the primary's count since the process started.
import { Counter, type Registry } from "prom-client";
import type { SubsystemStatus } from "../cli/status-view.ts";

export function registerVerifyMetrics(registry: Registry, status: () => SubsystemStatus): void {
  const counter = (name: string, help: string, labelNames: string[], fill: (add: (labels: Record<string, string>, v: number) => void, s: SubsystemStatus) => void) =>
    new Counter({
      name,
      help,
      labelNames,
      registers: [registry],
      collect() {
        this.reset();
        fill((labels, v) => this.inc(labels, v), status());
      },
    });
  counter("tidemark_verify_hashed_bytes_total", "bytes this primary hashed for online verifies since it started", [], (add, s) => add({}, s.verify?.counters.hashedBytes ?? 0));
  counter("tidemark_verify_records_total", "VERIFY records this primary journaled since it started", [], (add, s) => add({}, s.verify?.counters.records ?? 0));
  counter("tidemark_verify_compared_blocks_total", "4 KiB blocks this secondary compared with its primary's hashes, over all verifies", ["volume"], (add, s) => {
    for (const v of s.verify?.secondary ?? []) add({ volume: v.volume }, v.verifiedTotal);
  });
  counter("tidemark_verify_mismatched_blocks_total", "4 KiB blocks of this secondary found different from the primary's at the same stamp, over all verifies", ["volume"], (add, s) => {
    for (const v of s.verify?.secondary ?? []) add({ volume: v.volume }, v.mismatchedTotal);
  });
}

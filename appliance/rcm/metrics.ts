// Prometheus metrics of the RCM (prom-client), served over HTTP on the
// optional `rcm.metricsPort`: the clocks it measures (clock-offsets.ts), read
// from the same report its status gives, at scrape time. A subsystem's own
// series are in subsystem/metrics.ts; docs/metrics.md lists both.
import { Gauge, Registry, collectDefaultMetrics } from "prom-client";
import type { ClockOffsetReport } from "./clock-offsets.ts";
import { PROCESS_METRICS_PREFIX } from "../subsystem/metrics.ts";

/** Every series this module registers besides prom-client's process metrics (docs/metrics.md, "The RCM's series"). */
export const RCM_SERIES = {
  tidemark_rcm_clock_offset_seconds: { type: "gauge", labels: ["subsystem"], help: "the subsystem's clock minus the RCM's, from the quickest of its recent probes (clock realtime only)" },
  tidemark_rcm_clock_offset_uncertainty_seconds: { type: "gauge", labels: ["subsystem"], help: "the error bar of that offset: half the probe's round trip plus the clock's 1 ms resolution" },
  tidemark_rcm_clock_widest_offset_seconds: { type: "gauge", labels: ["ahead", "behind"], help: "the pair of subsystems whose clocks are furthest apart, and how far" },
  tidemark_rcm_clock_offset_bound_seconds: { type: "gauge", labels: [], help: "maxClockOffsetMs: a pair certainly further apart than this suspends its group" },
} as const satisfies Record<string, { type: "gauge"; labels: readonly string[]; help: string }>;

type Fill = (set: (labels: Record<string, string>, value: number) => void, r: ClockOffsetReport) => void;

/** `report` returns null with clock "monotonic" (nothing to measure): the labelled series are then empty, the bound 0. */
export function rcmMetricsRegistry(report: () => ClockOffsetReport | null): Registry {
  const registry = new Registry();
  collectDefaultMetrics({ register: registry, prefix: PROCESS_METRICS_PREFIX });
  const series = (name: keyof typeof RCM_SERIES, fill: Fill) => {
    const { labels, help } = RCM_SERIES[name];
    new Gauge({
      name,
      help,
      labelNames: [...labels],
      registers: [registry],
      collect() {
        this.reset();
        const r = report();
        if (r) fill((l, v) => this.set(l, v), r);
      },
    });
  };
  series("tidemark_rcm_clock_offset_seconds", (set, r) => {
    for (const s of r.subsystems) set({ subsystem: String(s.subsystem) }, s.offsetMs / 1000);
  });
  series("tidemark_rcm_clock_offset_uncertainty_seconds", (set, r) => {
    for (const s of r.subsystems) set({ subsystem: String(s.subsystem) }, s.uncertaintyMs / 1000);
  });
  series("tidemark_rcm_clock_widest_offset_seconds", (set, r) => {
    if (r.widest) set({ ahead: String(r.widest.ahead), behind: String(r.widest.behind) }, r.widest.offsetMs / 1000);
  });
  series("tidemark_rcm_clock_offset_bound_seconds", (set, r) => set({}, r.boundMs / 1000));
  return registry;
}

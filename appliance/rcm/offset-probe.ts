// The RCM's clock-offset probe (clock-offsets.ts has the arithmetic): one
// control connection to a subsystem, then a few `stamp` requests on it, each
// timed on the RCM's stamp clock. Only the request's round trip is timed, not
// the connection's set-up (TLS), so the error bar is the network's round trip.
import type { LoadedTopology } from "../../config/load.ts";
import { ControlClient } from "../cli/control-client.ts";
import { offsetSample, type OffsetSample } from "./clock-offsets.ts";

/** Requests per probe: the shortest round trip of them is kept. */
const PROBE_REQUESTS = 3;
const PROBE_TIMEOUT_MS = 2000;

/** Samples of subsystem `id`'s clock against `clockNs`; none when it cannot be reached. */
export async function probeOffset(topo: LoadedTopology, id: number, clockNs: () => bigint): Promise<OffsetSample[]> {
  let cc: ControlClient;
  try {
    cc = await ControlClient.connect(topo, id, PROBE_TIMEOUT_MS);
  } catch {
    return [];
  }
  const out: OffsetSample[] = [];
  try {
    for (let i = 0; i < PROBE_REQUESTS; i++) {
      const t0 = clockNs();
      const r = await cc.request<{ nowNs: string }>({ op: "stamp" }, PROBE_TIMEOUT_MS);
      const t1 = clockNs();
      out.push(offsetSample(t0, BigInt(r.nowNs), t1, Date.now()));
    }
  } catch {
    // What was measured before the failure still counts.
  } finally {
    cc.close();
  }
  return out;
}

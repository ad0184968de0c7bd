// `tidemark quiesce`: waits, without blocking writes, until every write
// acknowledged to a host before the call is applied on every secondary of the
// group. Target = the greatest stamp any primary of the group had handed out
// when asked; done once each secondary has applied everything up to it.
import type { LoadedTopology } from "../../config/load.ts";
import { askAll, controlPlaneOf } from "./control-client.ts";
import type { SubsystemStatus } from "./status-view.ts";
import { TidemarkError, type ErrorCode, type ErrorContext } from "../errors/codes.ts";

export class QuiesceError extends TidemarkError {
  constructor(code: ErrorCode, message: string, context?: ErrorContext) {
    super(code, message, context);
    this.name = "QuiesceError";
  }
}

export interface QuiesceResult {
  group: string;
  target: string;
  elapsedMs: number;
  polls: number;
}

export async function quiesce(topo: LoadedTopology, group: string, timeoutMs: number, pollMs = 20): Promise<QuiesceResult> {
  const g = topo.groups.get(group);
  if (!g) throw new QuiesceError("TM_NO_GROUP", `group '${group}' is not defined in ${topo.file} (groups: ${[...topo.groups.keys()].join(", ") || "none"})`);
  const { runtime } = controlPlaneOf(topo);
  const started = runtime.nowMs();
  const stamps = await askAll<{ lastStamp: string }>(topo, g.primaries, { op: "stamp" });
  let target = 0n;
  for (const [id, a] of stamps) {
    if (!a.ok) throw new QuiesceError("TM_UNREACHABLE", `quiesce ${group}: primary subsystem #${id}: ${a.error}`);
    const s = BigInt(a.value.lastStamp);
    if (s > target) target = s;
  }
  let polls = 0;
  for (;;) {
    polls++;
    const answers = await askAll<SubsystemStatus>(topo, g.secondaries, { op: "status" });
    let done = true;
    for (const [id, a] of answers) {
      if (!a.ok) throw new QuiesceError("TM_UNREACHABLE", `quiesce ${group}: secondary subsystem #${id}: ${a.error}`);
      const sg = a.value.secondary?.find((x) => x.name === group);
      if (!sg) throw new QuiesceError("TM_NO_GROUP", `quiesce ${group}: subsystem #${id} does not know the group`);
      // A resync's hold ends by itself; a suspension does not.
      if (sg.state !== "active" && sg.state !== "resyncing") {
        throw new QuiesceError("TM_SUSPENDED", `quiesce ${group}: the group is ${sg.state} on subsystem #${id}${sg.reason ? ` (${sg.reason})` : ""}; resync it first`);
      }
      if (BigInt(sg.appliedThrough) < target) done = false;
    }
    if (done) return { group, target: target.toString(), elapsedMs: runtime.nowMs() - started, polls };
    if (runtime.nowMs() - started > timeoutMs) {
      throw new QuiesceError("TM_TIMEOUT", `quiesce ${group}: secondaries did not apply every acknowledged write within ${timeoutMs} ms; see 'tidemark status'`);
    }
    await runtime.sleep(pollMs);
  }
}

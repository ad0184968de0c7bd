// The CLI's side of the RCM's control port: suspend and takeover requests.
import { silentLogger } from "./silent-logger.ts";
import { connectLink } from "../replication/link.ts";
import type { LoadedTopology } from "../../config/load.ts";
import type { Frame } from "../replication/frames.ts";
import { ControlError, controlIdentity } from "./control-client.ts";
import { linkSecretsOf } from "../../config/keys.ts";
import { watchSilence } from "../control/heartbeat.ts";

export async function askRcm<T>(topo: LoadedTopology, body: unknown, timeoutMs: number): Promise<T> {
  const rcm = topo.config.rcm;
  if (!rcm) throw new ControlError("TM_NO_RCM", `${topo.file} has no "rcm" section: add {"rcm": {"port": N}} and start it with 'tidemark rcm'`);
  const secrets = linkSecretsOf(topo, controlIdentity(topo));
  let link;
  try {
    link = await connectLink({ host: rcm.host, port: rcm.port, key: secrets.key, tls: secrets.tls, role: "control", nodeId: 0, timeoutMs: 3000, logger: silentLogger });
  } catch (err) {
    throw new ControlError("TM_UNREACHABLE", `the RCM at ${rcm.host}:${rcm.port} is unreachable (${(err as Error).message}); start it with 'tidemark rcm --config ${topo.file}'`);
  }
  let unwatch = (): void => {};
  try {
    return await new Promise<T>((resolve, reject) => {
      // The RCM heartbeats while it works on the request (control/heartbeat.ts).
      unwatch = watchSilence(link, topo.config.linkTimeoutMs, () =>
        reject(new ControlError("TM_CONTROL_SILENT", `the RCM at ${rcm.host}:${rcm.port} was silent for ${topo.config.linkTimeoutMs} ms (no answer and no heartbeat): its host, its process or the network to it is down or hung`)),
      );
      const timer = setTimeout(() => reject(new ControlError("TM_CONTROL_TIMEOUT", `the RCM gave no answer within ${timeoutMs} ms`)), timeoutMs);
      link.on("frame", (f: Frame) => {
        if (f.type !== "response") return;
        clearTimeout(timer);
        if (f.ok) resolve(f.body as T);
        else reject(ControlError.fromAnswer(f.body, "TM_RCM", "", "the RCM refused"));
      });
      link.on("close", () => {
        // A caller in-process (the drill) must not be held alive by the timer.
        clearTimeout(timer);
        reject(new ControlError("TM_CONTROL_CLOSED", "the RCM closed the connection"));
      });
      link.send({ type: "request", id: 1, body });
    });
  } finally {
    unwatch();
    link.close();
  }
}

// How the RCM and the CLI reach the subsystems and read the time: control
// requests over authenticated TCP and the real clock (control-client.ts), or
// the seeded simulation's in-memory control channel and simulated clock. The
// plane travels with the topology object (a symbol key survives the copies
// `directed` and `liveTopology` make), so every step of a procedure keeps the
// plane it was started with.
import type { Runtime } from "../runtime/runtime.ts";

export interface ControlPlane {
  /** One control request to subsystem `id`; rejects with a ControlError naming the subsystem. */
  call<T>(id: number, body: unknown, timeoutMs: number): Promise<T>;
  runtime: Runtime;
  /** The stamp clock's reading (loss windows, lag). */
  clockNs(): bigint;
}

const PLANE = Symbol("tidemark control plane");

type WithPlane = { [PLANE]?: ControlPlane };

export function withControlPlane<T extends object>(topo: T, plane: ControlPlane): T {
  return { ...topo, [PLANE]: plane };
}

export function attachedControlPlane(topo: object): ControlPlane | undefined {
  return (topo as WithPlane)[PLANE];
}

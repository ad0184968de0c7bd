// The fuzzer's one entry to its generators: input `seed` against a topology.
// A sweep runs seeds from..from+N-1; any one of them regenerates alone
// (`npm run fuzz -- --replay SEED`). Pure.
import { Draw } from "./draw.ts";
import type { FuzzInput } from "./input.ts";
import { nbdInput, type NbdTarget } from "./nbd-inputs.ts";
import { wireInput, type WireTarget } from "./wire-inputs.ts";

export interface FuzzTopology {
  nbd: NbdTarget[];
  wire: WireTarget[];
}

/** About half the inputs go to NBD ports, half to replication/control ports, over every subsystem. */
export function generateInput(seed: number, topo: FuzzTopology): FuzzInput {
  const d = new Draw(seed);
  if (d.chance(0.55)) return nbdInput(seed, d, d.pick(topo.nbd));
  return wireInput(seed, d, d.pick(topo.wire));
}

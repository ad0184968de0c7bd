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

/** One seed in STALL_EVERY stops mid-handshake and keeps the connection open: the server's handshake deadline must close it. */
export const STALL_EVERY = 400;
/** The subsystem's handshake bounds: NBD `handshakeTimeoutMs` default (appliance/nbd/export.ts), the link server's (appliance/subsystem/subsystem.ts). */
const HANDSHAKE_MS = { nbd: 30_000, replication: 5000 };
/** Time over the server's own bound before a stalled connection counts as a hang (a loaded machine). */
const STALL_MARGIN_MS = 10_000;

/** About half the inputs go to NBD ports, half to replication/control ports, over every subsystem. */
export function generateInput(seed: number, topo: FuzzTopology): FuzzInput {
  const d = new Draw(seed);
  const input = d.chance(0.55) ? nbdInput(seed, d, d.pick(topo.nbd)) : wireInput(seed, d, d.pick(topo.wire));
  return seed % STALL_EVERY === STALL_EVERY - 1 ? stalled(input, d) : input;
}

/**
 * The same input cut inside its handshake (the first bytes: client flags and
 * options, or the hello frame) and then left open, neither FIN nor RST.
 */
function stalled(input: FuzzInput, d: Draw): FuzzInput {
  const first = input.steps[0];
  const bytes = first.kind === "send" ? first.bytes : Buffer.alloc(0);
  // NBD: before the last byte of the first option header (a whole EXPORT_NAME
  // enters transmission, where an idle connection is legitimate: seed 17199
  // before this rule); replication: within the hello frame, after which the
  // server still waits for the auth frame.
  const handshakeBytes = Math.min(bytes.length, input.port === "nbd" ? 4 + 16 - 1 : 20 + 35);
  return {
    ...input,
    label: `${input.label}; stalled in the handshake`,
    steps: [{ kind: "send", bytes: bytes.subarray(0, handshakeBytes) }],
    cutAt: d.int(handshakeBytes),
    ending: "stall",
    nbdReplies: undefined,
    stallMs: HANDSHAKE_MS[input.port] + STALL_MARGIN_MS,
  };
}

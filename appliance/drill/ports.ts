// Free TCP ports for the drill's temporary topology. They come from outside the kernel's
// ephemeral range (ip_local_port_range), so no outgoing connection can take one between
// the check and the subsystem's listen, nor while a killed subsystem is being restarted
// on the same port. Random within the range, so two drills on one host rarely collide,
// and checked by listening.
import { readFileSync } from "node:fs";
import net from "node:net";
import type { ErrorCode } from "../errors/codes.ts";

const EPHEMERAL_DEFAULT: [number, number] = [32768, 60999];
/** Ports below this are privileged or well known; the drill stays above. */
const PORT_FLOOR = 10_000;
const PORT_CEILING = 65_535;
/** Random probes before giving up: a full range is a real problem, worth an error. */
export const PORT_PROBES_MAX = 2000;

function ephemeralRange(): [number, number] {
  try {
    const [lo, hi] = readFileSync("/proc/sys/net/ipv4/ip_local_port_range", "utf8").trim().split(/\s+/).map(Number);
    if (Number.isInteger(lo) && Number.isInteger(hi) && lo <= hi) return [lo, hi];
  } catch {
    // Not Linux, or no /proc: assume the Linux default.
  }
  return EPHEMERAL_DEFAULT;
}

/** Enough ports above the ephemeral range for a few drills at once. */
const ABOVE_PORTS_MIN = 1000;

/**
 * The stretch above the ephemeral range when it is large enough (61000-65535 by default: the test
 * suite's clusters take theirs below it, from 20000), else the one below it, down to PORT_FLOOR.
 */
export function drillPortRange(ephemeral: [number, number] = ephemeralRange()): [number, number] {
  const above: [number, number] = [ephemeral[1] + 1, PORT_CEILING];
  return above[1] - above[0] + 1 >= ABOVE_PORTS_MIN ? above : [PORT_FLOOR, ephemeral[0] - 1];
}

function canListen(host: string, port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.createServer();
    s.once("error", () => resolve(false));
    s.listen({ host, port, exclusive: true }, () => s.close(() => resolve(true)));
  });
}

export class PortError extends Error {
  readonly code = "TM_DRILL_PORTS" satisfies ErrorCode;
  constructor(message: string) {
    super(message);
    this.name = "PortError";
  }
}

/** `count` distinct ports that were free on `host` a moment ago. */
export async function freePorts(host: string, count: number): Promise<number[]> {
  const [lo, hi] = drillPortRange();
  const out = new Set<number>();
  for (let probe = 0; out.size < count; probe++) {
    if (probe >= PORT_PROBES_MAX) throw new PortError(`found only ${out.size} of ${count} free ports in ${lo}-${hi} on ${host} after ${PORT_PROBES_MAX} tries`);
    const port = lo + Math.floor(Math.random() * (hi - lo + 1));
    if (!out.has(port) && (await canListen(host, port))) out.add(port);
  }
  return [...out];
}

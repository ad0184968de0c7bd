// The drill's temporary topology: the shape of a real one (subsystem ids, volume names,
// groups and pairs; by default the seed's Fig. 1) made into a config that runs on this
// host with its own ports, small volumes (files, or loop devices), an RCM, fast timers,
// and every secondary's replication links routed through a drill-owned proxy
// (`linkEndpoint`) so the drill can cut them. Pure: ports, paths and the key come in as values.
// Invariant: every consistency group's primary volumes live on at least two primaries,
// because causal chains must cross primaries to test what a group promises.
import type { Topology } from "../../config/schema.ts";
import type { ErrorCode } from "../errors/codes.ts";

export interface DrillShape {
  subsystems: { id: number; volumes: string[] }[];
  groups: { name: string; pairs: { primary: string; secondary: string }[] }[];
  /**
   * A turn of one group while another is written (round.ts's turn phase): `group` is taken over,
   * failed back and swapped back alone while hosts keep writing `whileWriting` at full rate.
   */
  turn?: { group: string; whileWriting: string };
}

/** The seed's Fig. 1, as config/default.json ships it: primaries #1 and #2, secondaries #3, #4, #5, group C1. */
export const DEFAULT_SHAPE: DrillShape = {
  subsystems: [
    { id: 1, volumes: ["p1a", "p1b"] },
    { id: 2, volumes: ["p2a", "p2b"] },
    { id: 3, volumes: ["s3a", "s3b"] },
    { id: 4, volumes: ["s4a"] },
    { id: 5, volumes: ["s5a"] },
  ],
  groups: [
    {
      name: "C1",
      pairs: [
        { primary: "p1a", secondary: "s3a" },
        { primary: "p2a", secondary: "s3b" },
        { primary: "p1b", secondary: "s4a" },
        { primary: "p2b", secondary: "s5a" },
      ],
    },
  ],
};

/**
 * Two groups on shared subsystems (issue 17, race 1): A and B both have primary volumes on #1
 * and #2, and both have a secondary volume on #3, so turning A makes #3 a primary of A and #1
 * and #2 secondaries of A while all three keep serving B in their old roles. #4 holds only A's
 * other secondary, #5 only B's.
 */
export const TWO_GROUPS_SHAPE: DrillShape = {
  subsystems: [
    { id: 1, volumes: ["p1a", "p1b"] },
    { id: 2, volumes: ["p2a", "p2b"] },
    { id: 3, volumes: ["s3a", "s3b"] },
    { id: 4, volumes: ["s4a"] },
    { id: 5, volumes: ["s5b"] },
  ],
  groups: [
    {
      name: "A",
      pairs: [
        { primary: "p1a", secondary: "s3a" },
        { primary: "p2a", secondary: "s4a" },
      ],
    },
    {
      name: "B",
      pairs: [
        { primary: "p1b", secondary: "s3b" },
        { primary: "p2b", secondary: "s5b" },
      ],
    },
  ],
  turn: { group: "A", whileWriting: "B" },
};

/** The built-in shapes `tidemark drill --shape NAME` takes. */
export const SHAPES: Readonly<Record<string, DrillShape>> = { default: DEFAULT_SHAPE, "two-groups": TWO_GROUPS_SHAPE };

/** Timers of the drill's topology: fast enough that failures are noticed within a round. */
export const DRILL_SYNC_INTERVAL_MS = 20;
export const DRILL_RECONNECT_MS = 100;
export const DRILL_LINK_TIMEOUT_MS = 1000;
/** Outages shorter than this are ridden out; longer ones (a link left cut, a primary left down) suspend the group on their own. */
export const DRILL_FAILURE_TIMEOUT_MS = 2500;
export const DRILL_RCM_CHECK_INTERVAL_MS = 100;

export class DrillConfigError extends Error {
  readonly code = "TM_DRILL_CONFIG" satisfies ErrorCode;
  constructor(message: string) {
    super(message);
    this.name = "DrillConfigError";
  }
}

/** The shape of a loaded topology; its ports, paths, sizes and timers are left behind. */
export function shapeOf(topo: Topology): DrillShape {
  return {
    subsystems: topo.config.subsystems.map((s) => ({ id: s.id, volumes: s.volumes.map((v) => v.name) })),
    groups: topo.config.groups.map((g) => ({ name: g.name, pairs: g.pairs.map((p) => ({ ...p })) })),
  };
}

/** Refuses a shape the drill cannot test, saying why; `from` names where the shape came from. */
export function checkShape(shape: DrillShape, from: string): void {
  if (shape.groups.length === 0) throw new DrillConfigError(`${from} has no consistency group: the drill takes over and resyncs groups`);
  const subsystemOf = new Map(shape.subsystems.flatMap((s) => s.volumes.map((v) => [v, s.id] as const)));
  for (const g of shape.groups) {
    const primaries = [...new Set(g.pairs.map((p) => subsystemOf.get(p.primary)))].filter((x) => x !== undefined);
    if (primaries.length < 2) {
      throw new DrillConfigError(
        `${from}: group ${g.name} has its primary volumes on ${primaries.length === 1 ? `one primary (#${primaries[0]})` : "no primary"}; causal chains must cross at least two primaries`,
      );
    }
  }
  if (shape.turn) {
    const { group, whileWriting } = shape.turn;
    const names = new Set(shape.groups.map((g) => g.name));
    if (!names.has(group) || !names.has(whileWriting) || group === whileWriting) {
      throw new DrillConfigError(`${from}: the turn needs two different groups of the shape, not ${group} and ${whileWriting}`);
    }
  }
}

/** Subsystems that hold a secondary volume of some group: each gets a link proxy. */
export function secondaryIds(shape: DrillShape): number[] {
  const subsystemOf = new Map(shape.subsystems.flatMap((s) => s.volumes.map((v) => [v, s.id] as const)));
  return [...new Set(shape.groups.flatMap((g) => g.pairs.map((p) => subsystemOf.get(p.secondary)!)))].sort((a, b) => a - b);
}

/** Ports drillConfig consumes: replication and NBD per subsystem, one proxy per secondary, the RCM. */
export function portsNeeded(shape: DrillShape): number {
  return 2 * shape.subsystems.length + secondaryIds(shape).length + 1;
}

export interface DrillConfigInput {
  shape: DrillShape;
  host: string;
  /**
   * --hosts: each subsystem's own address (the RCM's is `host`), no proxies (the
   * network's own faults fail the links), and the real-time clock with commit wait
   * under this bound, as hosts with clocks of their own need.
   */
  hosts?: { addressOf: (id: number) => string; maxClockOffsetMs: number };
  /** At least portsNeeded(shape) distinct free ports. */
  ports: number[];
  /** The cluster key file (written mode 0600 by the caller, config/keys.ts writeKeyFile). */
  clusterKeyFile: string;
  /** Absolute folder for images, state files and logs. */
  dataDir: string;
  volumeMiB: number;
  /** Volume name -> block device (--loop); volumes without one are files under dataDir. */
  devices?: ReadonlyMap<string, string>;
}

export interface LinkProxySpec {
  secondary: number;
  /** Where primaries dial (the proxy listens here). */
  listenPort: number;
  /** The secondary's real replication port. */
  targetPort: number;
}

export interface DrillConfig {
  /** The config file's content (JSON). */
  config: Record<string, unknown>;
  proxies: LinkProxySpec[];
}

export function drillConfig(o: DrillConfigInput): DrillConfig {
  if (o.ports.length < portsNeeded(o.shape) || new Set(o.ports).size !== o.ports.length) {
    throw new DrillConfigError(`drill topology needs ${portsNeeded(o.shape)} distinct ports, got ${o.ports.length}`);
  }
  let next = 0;
  const port = () => o.ports[next++];
  const proxied = new Set(o.hosts ? [] : secondaryIds(o.shape));
  const proxies: LinkProxySpec[] = [];
  const subsystems = o.shape.subsystems.map((s) => {
    const replicationPort = port();
    const nbdPort = port();
    const out: Record<string, unknown> = {
      id: s.id,
      host: o.hosts ? o.hosts.addressOf(s.id) : o.host,
      replicationPort,
      nbdPort,
      volumes: s.volumes.map((name) => {
        const dev = o.devices?.get(name);
        return dev ? { name, path: dev } : { name, sizeMiB: o.volumeMiB };
      }),
    };
    if (proxied.has(s.id)) {
      const listenPort = port();
      proxies.push({ secondary: s.id, listenPort, targetPort: replicationPort });
      out.linkEndpoint = { host: o.host, port: listenPort };
    }
    return out;
  });
  const config: Record<string, unknown> = {
    clusterKeyFile: o.clusterKeyFile,
    dataDir: o.dataDir,
    ...(o.hosts ? { clock: "realtime", maxClockOffsetMs: o.hosts.maxClockOffsetMs } : { clock: "monotonic" }),
    syncIntervalMs: DRILL_SYNC_INTERVAL_MS,
    reconnectMs: DRILL_RECONNECT_MS,
    linkTimeoutMs: DRILL_LINK_TIMEOUT_MS,
    logLevel: "info",
    rcm: { host: o.host, port: port(), failureTimeoutMs: DRILL_FAILURE_TIMEOUT_MS, checkIntervalMs: DRILL_RCM_CHECK_INTERVAL_MS, autoSuspend: true },
    subsystems,
    groups: o.shape.groups.map((g) => ({ name: g.name, pairs: g.pairs.map((p) => ({ ...p })) })),
  };
  return { config, proxies };
}

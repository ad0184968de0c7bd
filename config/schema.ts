// The topology file's schema: subsystems with their volumes and ports, and
// consistency groups made of pairs. zod checks the shape; checkTopology()
// checks what a shape cannot (names resolve, nothing is used twice).
// Pure: no I/O here (config/load.ts reads the file).
import * as z from "zod/mini";
import "./zod-messages.ts";
import { createRequire } from "node:module";
import type * as NodeCron from "node-cron";
import type { ErrorCode } from "../appliance/errors/codes.ts";
import { nbdLimitsSchema, nbdTlsSchema } from "./nbd-schema.ts";

// node-cron is loaded only by a config that has a verify schedule to check.
const requireCjs = createRequire(import.meta.url);
const validCron = (c: string): boolean => (requireCjs("node-cron") as typeof NodeCron).validate(c);

export const BLOCK_SIZE = 4096;

const volumeName = z
  .string()
  .check(z.regex(/^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/, "a volume name is 1-64 characters of letters, digits, '.', '_' or '-'"));

const nonEmpty = () => z.string().check(z.minLength(1));
/** classic zod's z.number().int().min(min).max(max), its checks in the same order. */
const intIn = (min: number, max?: number) => z.number().check(z.int(), z.minimum(min), ...(max === undefined ? [] : [z.maximum(max)]));

const port = intIn(1, 65535);

export const volumeSchema = z.strictObject({
  name: volumeName,
  /** Size of a volume file created on first start. Block devices have their own size. */
  sizeMiB: z.optional(z.number().check(z.int(), z.positive(), z.maximum(16 * 1024 * 1024))),
  /** A file or block device; relative paths are resolved against dataDir/ss<id>/. */
  path: z.optional(nonEmpty()),
});

export const subsystemSchema = z.strictObject({
  id: intIn(1, 65535),
  host: z._default(nonEmpty(), "127.0.0.1"),
  replicationPort: port,
  nbdPort: port,
  /**
   * Where primaries open their replication links to this subsystem, when it
   * differs from host:replicationPort (a separate replication network, a
   * tunnel or a test proxy). Control connections always use host:replicationPort.
   */
  linkEndpoint: z.optional(z.strictObject({ host: nonEmpty(), port })),
  /** Prometheus metrics over HTTP at /metrics, when set. */
  metricsPort: z.optional(port),
  /** The export a client gets when it asks for the empty name. */
  defaultExport: z.optional(volumeName),
  volumes: z._default(z.array(volumeSchema), []),
  /** NBD over TLS for hosts (config/nbd-schema.ts, docs/hosts.md). */
  nbdTls: z.optional(nbdTlsSchema),
  /** The NBD server's bounds and timeouts (config/nbd-schema.ts, docs/nbd.md Limits). */
  nbdLimits: z.optional(nbdLimitsSchema),
});

export const pairSchema = z.strictObject({
  primary: volumeName,
  secondary: volumeName,
});

/** Default online-verify rate (MiB/s) when neither the group's config nor the command line sets one. */
export const VERIFY_RATE_MIBPS_DEFAULT = 64;

/**
 * A group's online verify (docs/verify.md): its rate limit, and optionally a
 * schedule on which the RCM runs it (node-cron syntax; a sixth, leading
 * field is seconds).
 */
export const verifyScheduleSchema = z.strictObject({
  cron: z.optional(z.string().check(z.refine(validCron, "not a cron expression (minute hour day month weekday, optionally a leading seconds field)"))),
  rateMiBps: z._default(z.number().check(z.positive(), z.maximum(100_000)), VERIFY_RATE_MIBPS_DEFAULT),
});

export const groupSchema = z.strictObject({
  name: z.string().check(z.regex(/^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/, "a group name is 1-64 letters, digits, '.', '_' or '-'")),
  pairs: z.array(pairSchema),
  verify: z.optional(verifyScheduleSchema),
});

/**
 * The least maxClockOffsetMs the realtime clock can honour. Its readings are
 * the wall clock read at each call, which Node gives in whole milliseconds
 * (appliance/primary/clock-source.ts): a reading is within (-1 ms, 0] of the
 * host's clock, so two subsystems on one perfectly synchronized host can
 * already differ by just under 1 ms. The commit wait must cover that, so 0 is
 * refused; between hosts the NTP offset comes on top and is the admin's to add.
 */
export const REALTIME_MIN_OFFSET_MS = 1;

export const rcmSchema = z.strictObject({
  host: z._default(nonEmpty(), "127.0.0.1"),
  /** Control port of the remote copy manager (suspend, takeover, status). */
  port,
  /** A failure (link down, process gone) lasting longer than this suspends the group. */
  failureTimeoutMs: z._default(intIn(100, 3_600_000), 3000),
  checkIntervalMs: z._default(intIn(50, 60_000), 500),
  /** Suspend automatically on failure; off leaves it to an admin's `tidemark suspend`. */
  autoSuspend: z._default(z.boolean(), true),
  /**
   * Life of a procedure's lease on a group (docs/takeover.md, "One procedure
   * at a time"), renewed at a third of it while the procedure runs: how long
   * an RCM that died on another address keeps the group from a second RCM.
   */
  leaseMs: z._default(intIn(1000, 600_000), 30_000),
  /** Serve Prometheus metrics (the measured clocks, docs/metrics.md) on this port of `host`. */
  metricsPort: z.optional(port),
});

/**
 * TLS of every link and control connection (docs/security.md). psk: a key
 * derived from the cluster key, no files to set up; x509: certificates of a
 * cluster CA, CN `ss<id>` for a subsystem (`{node}` in certFile/keyFile is
 * replaced by ss<id>, rcm or cli); off: plain TCP, refused unless every
 * listener is on loopback. Paths are relative to the config file.
 */
export const linkTlsSchema = z
  .strictObject({
    mode: z._default(z.enum(["psk", "x509", "off"]), "psk"),
    caFile: z.optional(nonEmpty()),
    certFile: z.optional(nonEmpty()),
    keyFile: z.optional(nonEmpty()),
  })
  .check(
    z.superRefine((t, ctx) => {
      if (t.mode !== "x509") return;
      for (const f of ["caFile", "certFile", "keyFile"] as const) {
        if (t[f] === undefined) ctx.addIssue({ code: "custom", path: [f], message: `is required with mode "x509"` });
      }
    }),
  );

export const configSchema = z
  .strictObject({
    /**
     * The cluster key inline: kept for configs made before clusterKeyFile and
     * for in-process simulations; refused when a listener is outside loopback
     * (config/keys.ts). One of clusterKey and clusterKeyFile.
     */
    clusterKey: z.optional(z.string().check(z.minLength(16, "clusterKey must be at least 16 characters"))),
    /** File holding the shared secret of every link (HMAC handshake, TLS PSK); mode 0600; relative to the config file. */
    clusterKeyFile: z.optional(nonEmpty()),
    linkTls: z._default(linkTlsSchema, { mode: "psk" }),
    /** Runtime folder for images, state files and logs; relative to the config file. */
    dataDir: z._default(nonEmpty(), "../var/default"),
    /**
     * monotonic: every subsystem on one host reads CLOCK_MONOTONIC, which is one
     * clock for all processes. realtime: subsystems on several hosts; each
     * acknowledgement waits out maxClockOffsetMs (commit wait), at least
     * REALTIME_MIN_OFFSET_MS. docs/clock.md.
     */
    clock: z._default(z.enum(["monotonic", "realtime"]), "monotonic"),
    maxClockOffsetMs: z._default(z.number().check(z.minimum(0), z.maximum(10_000)), 0),
    syncIntervalMs: z._default(intIn(1, 60_000), 50),
    /** Link reconnect back-off; a link retries at this period while its peer is away. */
    reconnectMs: z._default(intIn(10, 60_000), 200),
    /**
     * A link that delivers nothing for this long is dropped and reconnected: a
     * hung network keeps sockets open, so silence is the only sign. Each side
     * sends a heartbeat at a quarter of it.
     */
    linkTimeoutMs: z._default(intIn(100, 600_000), 3000),
    /** Bound on RCR bytes a primary has sent on one link and not yet had acknowledged. */
    inflightBytesMax: z._default(intIn(64 * 1024), 16 * 1024 * 1024),
    /** Largest NBD request payload advertised to clients. */
    nbdMaxPayloadBytes: z._default(intIn(4096, 32 * 1024 * 1024), 4 * 1024 * 1024),
    /** Cap on a primary's journal; past it the group is suspended and its payloads go to the bitmap. */
    journalBytesMax: z._default(intIn(1024 * 1024), 4 * 1024 * 1024 * 1024),
    /**
     * A file of this size beside each state file, deleted the moment the state
     * disk fills so the procedures that record a suspension find room, and
     * written again once there is space (appliance/state/disk-guard.ts). 0: none.
     */
    stateReserveMiB: z._default(intIn(0, 4096), 16),
    rcm: z.optional(rcmSchema),
    logLevel: z._default(z.enum(["fatal", "error", "warn", "info", "debug", "trace"]), "info"),
    /**
     * Log lines held in memory while the log file is slow or cannot be
     * written; past it lines are dropped and counted (appliance/logging/log-file.ts).
     */
    logBufferKiB: z._default(intIn(4, 1024 * 1024), 4096),
    subsystems: z.array(subsystemSchema).check(z.minLength(1)),
    groups: z._default(z.array(groupSchema), []),
  })
  .check(
    z.superRefine((c, ctx) => {
      if ((c.clusterKey === undefined) === (c.clusterKeyFile === undefined)) {
        ctx.addIssue({
          code: "custom",
          path: ["clusterKeyFile"],
          message: c.clusterKey === undefined ? "is missing: name the cluster key file (create one with `tidemark keygen FILE`)" : "and clusterKey are both set: keep only clusterKeyFile",
        });
      }
      if (c.clock === "realtime" && c.maxClockOffsetMs < REALTIME_MIN_OFFSET_MS) {
        ctx.addIssue({
          code: "custom",
          path: ["maxClockOffsetMs"],
          message:
            `is ${c.maxClockOffsetMs}${c.maxClockOffsetMs === 0 ? " (the default)" : ""}, but clock "realtime" needs at least ${REALTIME_MIN_OFFSET_MS} ms: ` +
            `its readings have millisecond resolution, so the commit wait must cover 1 ms plus the clock offset between hosts`,
        });
      }
    }),
  );

export type VolumeConfig = z.infer<typeof volumeSchema>;
export type SubsystemConfig = z.infer<typeof subsystemSchema>;
export type PairConfig = z.infer<typeof pairSchema>;
export type GroupConfig = z.infer<typeof groupSchema>;
export type Config = z.infer<typeof configSchema>;
export type RcmConfig = z.infer<typeof rcmSchema>;
export type LinkTlsConfig = z.infer<typeof linkTlsSchema>;

/** A volume with where it lives, after the topology is resolved. */
export interface ResolvedVolume {
  name: string;
  subsystemId: number;
  sizeMiB?: number;
  path?: string;
}

export interface ResolvedPair {
  group: string;
  index: number;
  primary: ResolvedVolume;
  secondary: ResolvedVolume;
}

export interface Topology {
  config: Config;
  volumes: Map<string, ResolvedVolume>;
  pairs: ResolvedPair[];
  /** Per group: the primary and secondary subsystem ids, sorted. */
  groups: Map<string, { name: string; primaries: number[]; secondaries: number[]; pairs: ResolvedPair[] }>;
}

export class ConfigError extends Error {
  readonly code = "TM_CONFIG" satisfies ErrorCode;
  constructor(
    readonly file: string,
    readonly problems: string[],
  ) {
    super(`${file}: ${problems.length === 1 ? problems[0] : "\n  " + problems.join("\n  ")}`);
    this.name = "ConfigError";
  }
}

function issuePath(raw: unknown, path: PropertyKey[]): string {
  // Name groups and subsystems the way an admin reads them: C1.pairs[2].secondary.
  const parts: string[] = [];
  let node: unknown = raw;
  for (const key of path) {
    node = node && typeof node === "object" ? (node as Record<PropertyKey, unknown>)[key as never] : undefined;
    const named = node && typeof node === "object" ? (node as Record<string, unknown>) : undefined;
    const prev = parts[parts.length - 1];
    if (typeof key === "number" && prev === "groups" && typeof named?.name === "string") parts[parts.length - 1] = named.name;
    else if (typeof key === "number" && prev === "subsystems" && typeof named?.id === "number") parts[parts.length - 1] = `subsystem#${named.id}`;
    else if (typeof key === "number") parts[parts.length - 1] = `${prev ?? ""}[${key}]`;
    else parts.push(String(key));
  }
  return parts.length === 0 ? "(top level)" : parts.join(".");
}

/** Validates shape and topology; throws ConfigError listing every problem found. */
export function parseConfig(raw: unknown, file: string): Topology {
  const parsed = configSchema.safeParse(raw);
  if (!parsed.success) {
    throw new ConfigError(
      file,
      parsed.error.issues.map((i) => `${issuePath(raw, i.path)}: ${i.message}`),
    );
  }
  return checkTopology(parsed.data, file);
}

export function checkTopology(config: Config, file: string): Topology {
  const problems: string[] = [];
  const volumes = new Map<string, ResolvedVolume>();
  const ids = new Set<number>();
  const endpoints = new Map<string, string>();
  for (const ss of config.subsystems) {
    const where = `subsystem#${ss.id}`;
    if (ids.has(ss.id)) problems.push(`${where}: subsystem id ${ss.id} is used twice`);
    ids.add(ss.id);
    for (const [what, p] of [
      ["replicationPort", ss.replicationPort],
      ["nbdPort", ss.nbdPort],
      ...(ss.metricsPort !== undefined ? ([["metricsPort", ss.metricsPort]] as const) : []),
    ] as const) {
      const key = `${ss.host}:${p}`;
      const other = endpoints.get(key);
      if (other) problems.push(`${where}.${what}: ${key} is already taken by ${other}`);
      else endpoints.set(key, `${where}.${what}`);
    }
    ss.volumes.forEach((v, i) => {
      if (volumes.has(v.name)) {
        problems.push(`${where}.volumes[${i}]: volume '${v.name}' is defined twice (names are unique across the config)`);
        return;
      }
      if (v.sizeMiB === undefined && (v.path === undefined || !v.path.startsWith("/dev/"))) {
        problems.push(`${where}.volumes[${i}] (${v.name}): sizeMiB is required for a volume file`);
      }
      volumes.set(v.name, { name: v.name, subsystemId: ss.id, sizeMiB: v.sizeMiB, path: v.path });
    });
    if (ss.defaultExport !== undefined && !ss.volumes.some((v) => v.name === ss.defaultExport)) {
      problems.push(`${where}.defaultExport: volume '${ss.defaultExport}' is not on this subsystem`);
    }
  }

  if (config.rcm) {
    const key = `${config.rcm.host}:${config.rcm.port}`;
    const other = endpoints.get(key);
    if (other) problems.push(`rcm.port: ${key} is already taken by ${other}`);
  }

  const pairs: ResolvedPair[] = [];
  const used = new Map<string, string>();
  const groupNames = new Set<string>();
  const groups: Topology["groups"] = new Map();
  for (const g of config.groups) {
    if (groupNames.has(g.name)) problems.push(`${g.name}: group name is used twice`);
    groupNames.add(g.name);
    if (g.pairs.length === 0) problems.push(`${g.name}.pairs: a consistency group needs at least one pair (it has no primary)`);
    const prim = new Set<number>();
    const sec = new Set<number>();
    const gp: ResolvedPair[] = [];
    g.pairs.forEach((p, i) => {
      const at = `${g.name}.pairs[${i}]`;
      const pv = volumes.get(p.primary);
      const sv = volumes.get(p.secondary);
      if (!pv) problems.push(`${at}.primary: volume '${p.primary}' is not defined`);
      if (!sv) problems.push(`${at}.secondary: volume '${p.secondary}' is not defined`);
      for (const [role, name] of [
        ["primary", p.primary],
        ["secondary", p.secondary],
      ] as const) {
        const before = used.get(name);
        if (before) problems.push(`${at}.${role}: volume '${name}' is already used by ${before}`);
        else used.set(name, `${at}.${role}`);
      }
      if (!pv || !sv) return;
      if (pv.subsystemId === sv.subsystemId) {
        problems.push(`${at}: primary '${pv.name}' and secondary '${sv.name}' are on the same subsystem #${pv.subsystemId}`);
        return;
      }
      if (pv.sizeMiB !== undefined && sv.sizeMiB !== undefined && pv.sizeMiB !== sv.sizeMiB) {
        problems.push(`${at}: primary '${pv.name}' is ${pv.sizeMiB} MiB but secondary '${sv.name}' is ${sv.sizeMiB} MiB; a pair's volumes have one size`);
        return;
      }
      prim.add(pv.subsystemId);
      sec.add(sv.subsystemId);
      const rp = { group: g.name, index: i, primary: pv, secondary: sv };
      gp.push(rp);
      pairs.push(rp);
    });
    const both = [...prim].filter((x) => sec.has(x));
    if (both.length > 0) {
      problems.push(`${g.name}: subsystem #${both[0]} is both a primary and a secondary of the group`);
    }
    groups.set(g.name, {
      name: g.name,
      primaries: [...prim].sort((a, b) => a - b),
      secondaries: [...sec].sort((a, b) => a - b),
      pairs: gp,
    });
  }
  if (problems.length > 0) throw new ConfigError(file, problems);
  return { config, volumes, pairs, groups };
}

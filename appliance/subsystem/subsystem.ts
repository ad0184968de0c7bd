// One storage subsystem process: opens its volumes and state file, serves
// NBD, accepts replication links and control connections on its replication
// port, and runs its primary and secondary roles for every group it is in.
// It prints one JSON "ready" line on stdout (stderr when socket-activated:
// stdout is then the client's) when it serves, and stops cleanly
// on SIGTERM/SIGINT (a clean stop is recorded, so a later start knows whether
// the previous run ended in a crash).
import { readFileSync, mkdirSync, openSync, closeSync } from "node:fs";
import path from "node:path";
import type net from "node:net";
import fsExt from "fs-ext";
import pino, { type Logger } from "pino";
import { openVolume, type Volume } from "../../disks/volume.ts";
import { loadConfig, subsystemConfig, subsystemDir, volumePath, type LoadedTopology } from "../../config/load.ts";
import { openState, type Db } from "../state/database.ts";
import { PrimaryEngine, type PrimaryBinding } from "../primary/primary.ts";
import { SecondaryEngine, type SecondaryBinding } from "../secondary/secondary.ts";
import { createLinkServer, type Link } from "../replication/link.ts";
import { NbdServer } from "../nbd/server.ts";
import { ExportTable, volumeExport } from "./exports.ts";
import { directed, isDirection, type Direction } from "../../config/direction.ts";
import { durableBarrier } from "../state/database.ts";
import { installInvariantExit } from "../invariant.ts";
import { clockReader } from "../primary/clock-source.ts";
import { metricsRegistry, serveMetrics } from "./metrics.ts";
import type { SubsystemStatus } from "../cli/status-view.ts";

export interface SubsystemHandle {
  stop(): Promise<void>;
}

export function nbdUrl(host: string, port: number, volume: string): string {
  const h = host.includes(":") ? `[${host}]` : host;
  return `nbd://${h}:${port}/${volume}`;
}

function bootId(): string {
  try {
    return readFileSync("/proc/sys/kernel/random/boot_id", "utf8").trim();
  } catch {
    return "unknown";
  }
}

function meta(db: Db, key: string): string | undefined {
  return (db.prepare("SELECT value FROM meta WHERE key = ?").get(key) as { value: string } | undefined)?.value;
}

function setMeta(db: Db, key: string, value: string): void {
  db.prepare("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value").run(key, value);
}

/** Where NBD is served: the config's nbdPort, or a listening socket inherited under socket activation. */
export interface SubsystemOptions {
  nbdFd?: number;
}

// systemd's convention (sd_listen_fds(3)), which libnbd's `[ CMD ]` follows:
// LISTEN_PID names the process the sockets are for, LISTEN_FDS counts them,
// and the first is fd 3. The variables are removed once read, so a process we
// start never takes our socket for its own.
const SD_LISTEN_FDS_START = 3;

/** fd 3 when this process was socket-activated, else undefined. */
export function takeActivationFd(env: NodeJS.ProcessEnv = process.env, pid = process.pid): number | undefined {
  const activated = env.LISTEN_PID === String(pid) && Number(env.LISTEN_FDS) >= 1;
  delete env.LISTEN_PID;
  delete env.LISTEN_FDS;
  delete env.LISTEN_FDNAMES;
  return activated ? SD_LISTEN_FDS_START : undefined;
}

export async function runSubsystem(topo: LoadedTopology, id: number, logger: Logger, opts: SubsystemOptions = {}): Promise<SubsystemHandle> {
  const cfg = topo.config;
  const me = subsystemConfig(topo, id);
  const dir = subsystemDir(topo, id);
  mkdirSync(dir, { recursive: true });

  // One process per subsystem id: a second one gets a clear error, not a shared state file.
  const lockFd = openSync(path.join(dir, "subsystem.lock"), "a");
  try {
    fsExt.flockSync(lockFd, "exnb");
  } catch {
    closeSync(lockFd);
    throw Object.assign(new Error(`subsystem #${id} is already running (lock ${path.join(dir, "subsystem.lock")} is held)`), {
      code: "TM_SUBSYSTEM_RUNNING",
    });
  }

  const db = openState(path.join(dir, "state.db"));
  const boot = bootId();
  const wasClean = meta(db, "clean") !== "0";
  const lastBoot = meta(db, "boot_id");
  const powerLossSuspected = !wasClean && lastBoot !== undefined && lastBoot !== boot;
  setMeta(db, "clean", "0");
  setMeta(db, "boot_id", boot);
  if (!wasClean) logger.warn({ sameBoot: !powerLossSuspected }, "previous run did not stop cleanly; recovering");

  const volumes = new Map<string, Volume>();
  try {
    for (const v of me.volumes) {
      const resolved = topo.volumes.get(v.name)!;
      volumes.set(
        v.name,
        await openVolume({
          name: v.name,
          path: volumePath(topo, resolved),
          createSizeBytes: v.sizeMiB !== undefined ? v.sizeMiB * 1024 * 1024 : undefined,
        }),
      );
    }
  } catch (err) {
    for (const v of volumes.values()) await v.close();
    db.close();
    closeSync(lockFd);
    throw err;
  }

  const ensureGroup = db.prepare("INSERT OR IGNORE INTO grp (name) VALUES (?)");
  for (const g of topo.groups.keys()) ensureGroup.run(g);
  const getGroup = db.prepare("SELECT generation, direction FROM grp WHERE name = ?");
  const generationOf = (g: string) => (getGroup.get(g) as { generation: number } | undefined)?.generation ?? 1;
  const directions = () =>
    new Map([...topo.groups.keys()].map((g) => [g, (getGroup.get(g) as { direction: string }).direction === "reverse" ? ("reverse" as const) : ("forward" as const)]));

  const peers = new Map(
    cfg.subsystems.map((s) => [s.id, { id: s.id, host: s.linkEndpoint?.host ?? s.host, port: s.linkEndpoint?.port ?? s.replicationPort }]),
  );

  // The roles of the moment: the config's pairs turned as each group's direction says.
  const buildRoles = (powerLossSuspected: boolean) => {
    const now = directed(topo, directions());
    const primaryBindings: PrimaryBinding[] = [];
    const secondaryBindings: SecondaryBinding[] = [];
    const groupSecondaries = new Map<string, number[]>();
    const secondaryGroups = new Map<string, number[]>();
    for (const p of now.pairs) {
      const g = now.groups.get(p.group)!;
      if (p.primary.subsystemId === id) {
        primaryBindings.push({ volume: volumes.get(p.primary.name)!, group: p.group, link: p.secondary.subsystemId, target: p.secondary.name });
        groupSecondaries.set(p.group, g.secondaries);
      }
      if (p.secondary.subsystemId === id) {
        secondaryBindings.push({ volume: volumes.get(p.secondary.name)!, group: p.group, primaryId: p.primary.subsystemId });
        secondaryGroups.set(p.group, g.primaries);
      }
    }
    // A secondary subsystem of a group holds its time parameters even with no volume of a given primary.
    for (const g of now.groups.values()) if (g.secondaries.includes(id)) secondaryGroups.set(g.name, g.primaries);
    const primary =
      groupSecondaries.size > 0
        ? new PrimaryEngine({
            id,
            db,
            logger,
            clusterKey: cfg.clusterKey,
            clock: cfg.clock,
            maxClockOffsetMs: cfg.maxClockOffsetMs,
            syncIntervalMs: cfg.syncIntervalMs,
            reconnectMs: cfg.reconnectMs,
            linkTimeoutMs: cfg.linkTimeoutMs,
            inflightBytesMax: cfg.inflightBytesMax,
            journalBytesMax: cfg.journalBytesMax,
            bindings: primaryBindings,
            groupSecondaries,
            peers,
            generationOf,
            powerLossSuspected,
          })
        : null;
    const secondary = secondaryGroups.size > 0 ? new SecondaryEngine({ id, db, logger, bindings: secondaryBindings, groups: secondaryGroups }) : null;
    return { primary, secondary };
  };
  let roles = buildRoles(powerLossSuspected);

  const exports = new ExportTable(me.defaultExport);
  // Exports ask for the roles at every request: a failback turns them while hosts stay connected.
  for (const v of volumes.values()) exports.add(volumeExport(v, () => roles));

  // The journal is replayed before the volumes are served again.
  await roles.primary?.start();
  roles.secondary?.start();

  /** Failback (docs/resync.md): the group's direction turns; this subsystem's engines are rebuilt. */
  const turnDirection = async (group: string, direction: Direction, generation: number, floor: bigint) => {
    const g = topo.groups.get(group);
    if (!g) throw Object.assign(new Error(`group '${group}' is not defined in ${topo.file}`), { code: "TM_NO_GROUP" });
    const row = db.prepare("SELECT direction, generation, state FROM grp WHERE name = ?").get(group) as { direction: string; generation: number; state: string };
    if (row.direction === direction && row.generation >= generation) return { subsystem: id, group, direction, generation: row.generation, turned: false };
    if (generation <= row.generation) {
      throw Object.assign(new Error(`group '${group}' on subsystem #${id} is at generation ${row.generation}; turning it needs a newer one than ${generation}`), { code: "TM_GENERATION" });
    }
    // Only a group that was taken over turns: both sides stand still for hosts' data.
    if (row.state !== "takeover" && row.state !== "taken-over") {
      throw Object.assign(new Error(`group '${group}' on subsystem #${id} is ${row.state}; only a group that was taken over turns its direction`), { code: "TM_NOT_TAKEN_OVER" });
    }
    const next = directed(topo, new Map([...directions(), [group, direction]]));
    const willBeSecondary = next.groups.get(group)!.secondaries.includes(id);
    const myNewPrimaryVolumes = next.pairs.filter((p) => p.group === group && p.primary.subsystemId === id);
    await roles.primary?.stop();
    roles.secondary?.stop();
    db.transaction(() => {
      db.prepare(
        `UPDATE grp SET direction = ?, generation = ?, state = 'suspended', reason = ?, suspended_by = 'failback',
           synchronized_ts = ?, second_time = ?, resync_floor = NULL, copied_ts = NULL, changed_at_ms = ? WHERE name = ?`,
      ).run(direction, generation, `direction turned to ${direction}`, willBeSecondary ? floor : null, willBeSecondary ? floor : 0n, Date.now(), group);
      db.prepare("DELETE FROM first_time WHERE grp = ?").run(group);
      db.prepare("DELETE FROM copied WHERE grp = ?").run(group);
      // A volume that becomes primary is a known pair: its differences are in the bitmaps, no initial copy.
      for (const p of myNewPrimaryVolumes) db.prepare("INSERT OR IGNORE INTO pair (volume, target) VALUES (?, ?)").run(p.primary.name, p.secondary.name);
      // New stamps stay above the time the other side rests at.
      db.prepare("UPDATE stamp SET ts_floor = max(ts_floor, ?)").run(floor);
    })();
    durableBarrier(db);
    roles = buildRoles(false);
    await roles.primary?.start();
    roles.secondary?.start();
    logger.warn({ group, direction, generation, role: willBeSecondary ? "secondary" : "primary" }, "group direction turned; roles rebuilt");
    return { subsystem: id, group, direction, generation, turned: true };
  };

  const bitmapCounts = db.prepare("SELECT volume, count(*) AS n FROM bitmap GROUP BY volume");
  const status = () => {
    const bitmap = new Map((bitmapCounts.all() as { volume: string; n: number }[]).map((r) => [r.volume, r.n]));
    return {
    subsystem: id,
    pid: process.pid,
    host: me.host,
    replicationPort: me.replicationPort,
    nbdPort: me.nbdPort,
    clock: cfg.clock,
    nowNs: (roles.primary?.nowNs() ?? clockReader(cfg.clock)()).toString(),
    uptimeMs: Math.round(process.uptime() * 1000),
    volumes: [...volumes.values()].map((v) => ({
      name: v.name,
      role: roles.primary?.hasVolume(v.name) ? "primary" : roles.secondary?.hasVolume(v.name) ? "secondary" : "unpaired",
      path: v.path,
      kind: v.kind,
      sizeBytes: v.sizeBytes,
      // Socket-activated, the NBD listener belongs to whoever started us: no URL of ours.
      nbdUrl: opts.nbdFd === undefined ? nbdUrl(me.host, me.nbdPort, v.name) : null,
      readOnly: exports.get(v.name)!.isReadOnly(),
      bitmapBlocks: bitmap.get(v.name) ?? 0,
    })),
    directions: Object.fromEntries(directions()),
    primary: roles.primary?.status() ?? null,
    secondary: roles.secondary?.status() ?? null,
    };
  };

  const need = <T>(engine: T | null, what: string): T => {
    if (!engine) throw Object.assign(new Error(`subsystem #${id} has no ${what} role`), { code: "TM_NO_ROLE" });
    return engine;
  };
  /** A generation from a control request: a positive integer, or a clear refusal. */
  const requestGeneration = (v: unknown): number => {
    if (typeof v !== "number" || !Number.isSafeInteger(v) || v < 1) {
      throw Object.assign(new Error(`generation must be a positive integer, not ${JSON.stringify(v)}`), { code: "TM_BAD_REQUEST" });
    }
    return v;
  };
  const handleRequest = async (body: unknown): Promise<unknown> => {
    const b = (body ?? {}) as { op?: unknown; group?: string; generation?: number; ts?: string; reason?: string; by?: string };
    switch (b.op) {
      case "status":
        return status();
      case "stamp":
        // Every write acknowledged to a host so far has ts <= lastStamp.
        return { lastStamp: (roles.primary?.lastStamp ?? 0n).toString(), nowNs: (roles.primary?.nowNs() ?? clockReader(cfg.clock)()).toString() };
      // The after-failure procedure's steps, driven by the RCM (docs/takeover.md).
      case "fence":
        return need(roles.secondary, "secondary").fence(String(b.group), Number(b.generation), String(b.by ?? "rcm"), String(b.reason ?? ""));
      case "preview":
        return need(roles.secondary, "secondary").preview(String(b.group), BigInt(String(b.ts)));
      case "apply-ts":
        return need(roles.secondary, "secondary").applySynchronizedTime(String(b.group), Number(b.generation), BigInt(String(b.ts)));
      case "takeover":
        return need(roles.secondary, "secondary").takeover(String(b.group), Number(b.generation));
      case "primary-suspend":
        await need(roles.primary, "primary").suspend(String(b.group), "suspended", String(b.reason ?? ""), String(b.by ?? "rcm"), Number(b.generation));
        return need(roles.primary, "primary").preview(String(b.group));
      case "primary-takeover":
        await need(roles.primary, "primary").suspend(String(b.group), "taken-over", String(b.reason ?? "takeover"), String(b.by ?? "rcm"), Number(b.generation));
        return need(roles.primary, "primary").preview(String(b.group));
      case "primary-preview":
        return need(roles.primary, "primary").preview(String(b.group));
      // Resync (docs/resync.md), driven by the RCM.
      case "resync-begin":
        return need(roles.secondary, "secondary").resyncBegin(String(b.group), requestGeneration(b.generation));
      case "primary-resync": {
        const blocks = (b as { blocks?: unknown }).blocks ?? {};
        if (typeof blocks !== "object" || blocks === null || Object.values(blocks).some((r) => !Array.isArray(r) || r.some((x) => !Array.isArray(x) || x.length !== 2))) {
          throw Object.assign(new Error("primary-resync: blocks must map volume names to [first, count] runs"), { code: "TM_BAD_REQUEST" });
        }
        return need(roles.primary, "primary").resync(String(b.group), requestGeneration(b.generation), blocks as Record<string, [number, number][]>);
      }
      case "turn": {
        const dir = (b as { direction?: unknown }).direction;
        if (!isDirection(dir)) throw Object.assign(new Error(`turn: direction must be "forward" or "reverse", not ${JSON.stringify(dir)}`), { code: "TM_BAD_REQUEST" });
        const ts = String(b.ts);
        if (!/^\d{1,20}$/.test(ts)) throw Object.assign(new Error(`turn: ts must be a decimal timestamp, not ${JSON.stringify(b.ts)}`), { code: "TM_BAD_REQUEST" });
        return turnDirection(String(b.group), dir, requestGeneration(b.generation), BigInt(ts));
      }
      case "primary-freeze":
        return need(roles.primary, "primary").freeze(String(b.group));
      case "copy-status":
        return need(roles.primary, "primary").copyStatus(String(b.group));
      default:
        throw Object.assign(new Error(`unknown control operation ${JSON.stringify(b.op)}`), { code: "TM_CONTROL_OP" });
    }
  };

  const onLink = (link: Link) => {
    if (link.peer.role === "link") {
      const secondary = roles.secondary;
      if (!secondary) {
        logger.warn({ peer: link.peer.nodeId }, "replication link from a primary, but this subsystem is no secondary");
        link.send({ type: "error", code: 404, message: `subsystem #${id} holds no secondary volume` });
        link.close();
        return;
      }
      secondary.attach(link, link.peer.nodeId);
      return;
    }
    link.on("frame", (f) => {
      if (f.type !== "request") return;
      handleRequest(f.body).then(
        (body) => link.send({ type: "response", id: f.id, ok: true, body }),
        (err: Error & { code?: string }) => {
          if (err.name === "InvariantError") throw err;
          link.send({ type: "response", id: f.id, ok: false, body: { code: err.code ?? "TM_CONTROL", message: err.message } });
        },
      );
    });
  };

  const linkServer = createLinkServer({ key: cfg.clusterKey, nodeId: id, logger, handshakeTimeoutMs: 5000, onLink });
  await listen(linkServer, me.host, me.replicationPort, `subsystem #${id} replication port`);
  const nbd = new NbdServer({ exports, logger, maxPayloadBytes: cfg.nbdMaxPayloadBytes });
  if (opts.nbdFd !== undefined) await nbd.listenFd(opts.nbdFd);
  else await nbd.listen(me.host, me.nbdPort);
  const nbdWhere = opts.nbdFd !== undefined ? `fd ${opts.nbdFd}` : `${me.host}:${me.nbdPort}`;
  logger.info({ replication: `${me.host}:${me.replicationPort}`, nbd: nbdWhere, volumes: volumes.size }, "subsystem serving");

  const metrics =
    me.metricsPort !== undefined ? await serveMetrics(metricsRegistry(status as () => SubsystemStatus, clockReader(cfg.clock)), me.host, me.metricsPort) : null;

  let stopping: Promise<void> | null = null;
  const stop = () =>
    (stopping ??= (async () => {
      metrics?.close();
      await nbd.close();
      linkServer.close();
      await roles.primary?.stop();
      roles.secondary?.stop();
      for (const v of volumes.values()) await v.close();
      setMeta(db, "clean", "1");
      db.close();
      closeSync(lockFd);
      logger.info("subsystem stopped cleanly");
    })());
  return { stop };
}

function listen(server: net.Server, host: string, port: number, what: string): Promise<void> {
  return new Promise((resolve, reject) => {
    server.once("error", (err: NodeJS.ErrnoException) =>
      reject(Object.assign(new Error(`${what}: cannot listen on ${host}:${port}: ${err.code ?? err.message}`), { code: "TM_LISTEN" })),
    );
    server.listen(port, host, () => resolve());
  });
}

/** Entry for `tidemark subsystem`: run until SIGTERM/SIGINT. */
export async function subsystemMain(configFile: string, id: number, logFile?: string): Promise<void> {
  const topo = loadConfig(configFile);
  // Under socket activation stdout belongs to the client that started us
  // (`nbdinfo --json -- [ tidemark subsystem ... ]` prints its JSON there), so
  // logs and the ready line go to stderr.
  const nbdFd = takeActivationFd();
  const out = nbdFd !== undefined ? process.stderr : process.stdout;
  const dest = logFile ? pino.destination({ dest: logFile, mkdir: true, sync: false }) : pino.destination(nbdFd !== undefined ? 2 : 1);
  const logger = pino({ level: topo.config.logLevel, base: { ss: id } }, dest);
  installInvariantExit((err) => {
    logger.fatal({ err: err.message, stack: err.stack }, "stopping: %s", err.message);
    dest.flushSync?.();
    process.stderr.write(`tidemark subsystem #${id}: ${err.message}\n`);
  });
  const handle = await runSubsystem(topo, id, logger, { nbdFd });
  const me = subsystemConfig(topo, id);
  out.write(
    JSON.stringify({ ready: true, subsystem: id, pid: process.pid, replication: `${me.host}:${me.replicationPort}`, nbd: nbdFd !== undefined ? `fd ${nbdFd}` : `${me.host}:${me.nbdPort}` }) + "\n",
  );
  const onSignal = () => {
    void handle.stop().then(
      () => {
        dest.flushSync?.();
        process.exit(0);
      },
      (err) => {
        logger.error({ err: (err as Error).message }, "stop failed");
        process.exit(1);
      },
    );
  };
  process.once("SIGTERM", onSignal);
  process.once("SIGINT", onSignal);
}

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
import { DiskGuard, diskFullCause, fileSystemOf } from "../state/disk-guard.ts";
import { connectLink, createLinkServer, type Link } from "../replication/link.ts";
import { loadLinkSecrets } from "../../config/keys.ts";
import { subsystemIdentity } from "../replication/link-tls.ts";
import { NbdServer } from "../nbd/server.ts";
import { loadSubsystemNbdTls, nbdServerSettings } from "./nbd-settings.ts";
import { fileStateStore } from "../state/store.ts";
import { realRuntime } from "../runtime/runtime.ts";
import { SubsystemCore } from "./core.ts";
import { installInvariantExit } from "../invariant.ts";
import { tmError } from "../errors/codes.ts";
import { clockReader } from "../primary/clock-source.ts";
import { metricsRegistry, serveMetrics } from "./metrics.ts";
import { LogFile, type LogFileStats } from "../logging/log-file.ts";
import type { SubsystemStatus } from "../cli/status-view.ts";
import { processIncarnation } from "../events/hub.ts";
import { sendHeartbeats } from "../control/heartbeat.ts";

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
  /** The log file's dropped-line count, for status and metrics (none when logging to stdout). */
  logStats?: () => LogFileStats;
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
  // Before any state is touched: a key file others can read stops the start here.
  const nbdTls = loadSubsystemNbdTls(topo.file, me.nbdTls);
  // First: a key file open to others or a weak key on a public address stops the start here.
  const secrets = loadLinkSecrets(topo, subsystemIdentity(id));
  const dir = subsystemDir(topo, id);
  mkdirSync(dir, { recursive: true });

  // One process per subsystem id: a second one gets a clear error, not a shared state file.
  const lockFd = openSync(path.join(dir, "subsystem.lock"), "a");
  try {
    fsExt.flockSync(lockFd, "exnb");
  } catch {
    closeSync(lockFd);
    const lock = path.join(dir, "subsystem.lock");
    throw tmError("TM_SUBSYSTEM_RUNNING", `subsystem #${id} is already running (lock ${lock} is held)`, { subsystem: id, file: lock });
  }

  // Before the state file opens: on a full disk the last run's reserve is
  // released, so WAL recovery, migrations and the writes below fit.
  const disk = new DiskGuard({ dir, reserveBytes: cfg.stateReserveMiB * 1024 * 1024, runtime: realRuntime, logger });
  disk.start();
  let db: Db;
  let powerLossSuspected: boolean;
  let wasClean: boolean;
  let opened: Db | null = null;
  try {
    db = opened = openState(path.join(dir, "state.db"));
    const boot = bootId();
    wasClean = meta(db, "clean") !== "0";
    const lastBoot = meta(db, "boot_id");
    powerLossSuspected = !wasClean && lastBoot !== undefined && lastBoot !== boot;
    setMeta(db, "clean", "0");
    setMeta(db, "boot_id", boot);
  } catch (err) {
    opened?.close();
    disk.stop();
    closeSync(lockFd);
    const cause = diskFullCause(err);
    if (!cause) throw err;
    const fs = fileSystemOf(dir);
    throw tmError(
      "TM_STATE_DISK_FULL",
      `subsystem #${id} cannot start: ${cause} writing its state file ${path.join(dir, "state.db")} on ${fs}, and no reserve file was left to release; free space on ${fs} and start it again`,
      { subsystem: id, file: path.join(dir, "state.db"), fileSystem: fs, sysCode: cause },
      { cause: err },
    );
  }
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
    disk.stop();
    db.close();
    closeSync(lockFd);
    throw err;
  }

  const store = fileStateStore(db, (err) => logger.warn({ err: err.message }, "a payload segment could not be deleted; it stays"));
  const core = new SubsystemCore({
    id,
    topo,
    store,
    volumes,
    logger,
    runtime: realRuntime,
    clockNs: clockReader(cfg.clock),
    connect: (secondaryId) => {
      const peer = subsystemConfig(topo, secondaryId);
      return connectLink({
        host: peer.linkEndpoint?.host ?? peer.host,
        port: peer.linkEndpoint?.port ?? peer.replicationPort,
        key: secrets.key,
        tls: secrets.tls,
        role: "link",
        nodeId: id,
        peerNodeId: secondaryId,
        // A handshake that stays silent this long is the same fault as a link that does.
        timeoutMs: cfg.linkTimeoutMs,
        logger,
      });
    },
    powerLossSuspected,
    defaultExport: me.defaultExport,
    processStatus: () => ({
      pid: process.pid,
      host: me.host,
      replicationPort: me.replicationPort,
      nbdPort: me.nbdPort,
      uptimeMs: Math.round(process.uptime() * 1000),
      log: opts.logStats?.() ?? null,
    }),
    // Socket-activated, the NBD listener belongs to whoever started us: no URL of ours.
    nbdUrlOf: (volume) => (opts.nbdFd === undefined ? nbdUrl(me.host, me.nbdPort, volume) : null),
    disk,
    incarnation: processIncarnation(Math.round(performance.timeOrigin), process.pid),
  });
  await core.start();
  const status = () => core.status();

  const onLink = (link: Link) => {
    if (link.peer.role === "link") core.attachReplication(link, link.peer.nodeId);
    else {
      core.attachControl(link);
      sendHeartbeats(link, cfg.linkTimeoutMs);
    }
  };

  const linkServer = createLinkServer({ key: secrets.key, tls: secrets.tls, nodeId: id, logger, handshakeTimeoutMs: 5000, onLink });
  await listen(linkServer, me.host, me.replicationPort, `subsystem #${id} replication port`);
  const nbd = new NbdServer({ exports: core.exports, logger, maxPayloadBytes: cfg.nbdMaxPayloadBytes, ...nbdServerSettings(me.nbdLimits, nbdTls) });
  if (opts.nbdFd !== undefined) await nbd.listenFd(opts.nbdFd);
  else await nbd.listen(me.host, me.nbdPort);
  const nbdWhere = opts.nbdFd !== undefined ? `fd ${opts.nbdFd}` : `${me.host}:${me.nbdPort}`;
  logger.info({ replication: `${me.host}:${me.replicationPort}`, nbd: nbdWhere, volumes: volumes.size }, "subsystem serving");

  const metrics =
    me.metricsPort !== undefined ? await serveMetrics(metricsRegistry(status as unknown as () => SubsystemStatus, clockReader(cfg.clock)), me.host, me.metricsPort) : null;

  let stopping: Promise<void> | null = null;
  const stop = () =>
    (stopping ??= (async () => {
      metrics?.close();
      await nbd.close();
      linkServer.close();
      await core.stop();
      for (const v of volumes.values()) await v.close();
      disk.stop();
      try {
        setMeta(db, "clean", "1");
      } catch (err) {
        // Safe to leave: the next start recovers as after a crash (journal replay, redo).
        logger.warn({ err: (err as Error).message }, "the clean stop could not be recorded (state disk full?); the next start recovers as after a crash");
      }
      db.close();
      store.close();
      closeSync(lockFd);
      logger.info("subsystem stopped cleanly");
    })());
  return { stop };
}

function listen(server: net.Server, host: string, port: number, what: string): Promise<void> {
  return new Promise((resolve, reject) => {
    server.once("error", (err: NodeJS.ErrnoException) =>
      reject(tmError("TM_LISTEN", `${what}: cannot listen on ${host}:${port}: ${err.code ?? err.message}`, { listener: what, host, port, sysCode: err.code }, { cause: err })),
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
  // A log file never holds up the write path: full or slow, it costs log lines (log-file.ts, README).
  const logSink = logFile ? new LogFile(logFile, topo.config.logBufferKiB * 1024) : null;
  const dest = logSink ?? pino.destination(nbdFd !== undefined ? 2 : 1);
  const logger = pino({ level: topo.config.logLevel, base: { ss: id } }, dest);
  if (logSink) {
    logSink.onRecovered = (dropped, sinceMs, cause) =>
      logger.warn({ droppedLines: dropped, since: new Date(sinceMs).toISOString(), cause, file: logFile, droppedSinceStart: logSink.droppedLines }, "log lines were dropped: the log file could not be written");
  }
  installInvariantExit((err) => {
    logger.fatal({ err: err.message, stack: err.stack }, "stopping: %s", err.message);
    dest.flushSync?.();
    process.stderr.write(`tidemark subsystem #${id}: ${err.message}\n`);
  });
  const handle = await runSubsystem(topo, id, logger, { nbdFd, logStats: logSink ? () => logSink.stats() : undefined });
  const me = subsystemConfig(topo, id);
  out.write(
    JSON.stringify({ ready: true, subsystem: id, pid: process.pid, replication: `${me.host}:${me.replicationPort}`, nbd: nbdFd !== undefined ? `fd ${nbdFd}` : `${me.host}:${me.nbdPort}` }) + "\n",
  );
  const onSignal = () => {
    void handle.stop().then(
      async () => {
        // The last lines ("stopped cleanly") reach the file unless it cannot take them within a second.
        await logSink?.drain(1000);
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

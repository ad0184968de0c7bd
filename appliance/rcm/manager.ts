// The remote copy manager process (seed's RCM 105-2): a control port for
// `tidemark suspend` and `tidemark takeover`, and a monitor that suspends a
// group on its own when a failure outlasts rcm.failureTimeoutMs (a quick
// restart is not a failure). Procedures on one group run one at a time.
import type { Logger } from "pino";
import type net from "node:net";
import type http from "node:http";
import type { LoadedTopology } from "../../config/load.ts";
import { createLinkServer, RCM_NODE_ID, type Link } from "../replication/link.ts";
import { linkSecretsOf } from "../../config/keys.ts";
import { codeOf, tmError } from "../errors/codes.ts";
import { askAll } from "../cli/control-client.ts";
import type { SubsystemStatus } from "../cli/status-view.ts";
import { runProcedure, type ProcedureMode, type ProcedureReport } from "./procedure.ts";
import { startResync } from "./resync.ts";
import { reverseResync, swap } from "./failback.ts";
import { liveTopology, liveTopologyFrom } from "../cli/live-topology.ts";
import { withGroupLease, type LeaseHolder } from "./lease.ts";
import { EventPublisher } from "../events/publisher.ts";
import { processIncarnation } from "../events/hub.ts";
import { realRuntime } from "../runtime/runtime.ts";
import { VerifySchedules } from "./verify-schedule.ts";
import { RCM_OPS, type RcmTarget } from "./control-ops.ts";
import { parseRequest } from "../control/op-table.ts";
import { sendHeartbeats } from "../control/heartbeat.ts";
import { ClockOffsets, offsetCondition, type ClockOffsetReport } from "./clock-offsets.ts";
import { probeOffset } from "./offset-probe.ts";
import { rcmMetricsRegistry } from "./metrics.ts";
import { serveMetrics } from "../subsystem/metrics.ts";
import { clockReader } from "../primary/clock-source.ts";

/** How often the monitor probes the subsystems' clocks (clock "realtime"). */
const OFFSET_PROBE_MS = 1000;

export class RemoteCopyManager {
  private server: net.Server | null = null;
  private timer: NodeJS.Timeout | null = null;
  private readonly busy = new Map<string, Promise<unknown>>();
  /**
   * Per group, bumped when a procedure, resync or swap on it starts and when
   * it ends. A monitoring pass acts on a group only if this did not move
   * while it read the subsystems: a snapshot taken in the middle of a
   * procedure that has ended since (an admin's resync) is stale.
   */
  private readonly epochs = new Map<string, number>();
  /** Failure conditions by group, with when each was first seen. */
  private readonly since = new Map<string, Map<string, number>>();
  /** The group's generation when its conditions were first seen: a procedure since (a resync) starts them afresh. */
  private readonly sinceGeneration = new Map<string, number>();
  readonly history: { at: string; group: string; mode: ProcedureMode | "resync" | "swap"; by: string; reason: string; ok: boolean; ts?: string; error?: string }[] = [];
  private checking = false;
  /** Who this RCM is to the subsystems' leases: its control address, and this process's start. */
  private readonly leaseHolder: LeaseHolder;
  /** Groups whose lease another holder was last seen with: logged once per holder. */
  private readonly heldElsewhere = new Map<string, string>();
  /** `tidemark events`: each procedure's start and end (docs/events.md, kind procedure). */
  private readonly events: EventPublisher;
  /** The groups' verify schedules (config `verify.cron`), run here. */
  readonly schedules: VerifySchedules;
  /** Measured clock offsets of the subsystems (clock "realtime" only; clock-offsets.ts). */
  private readonly offsets = new ClockOffsets();
  /** The pid each subsystem answered with last: a new one may be another clock. */
  private readonly pids = new Map<number, number>();
  private lastProbeMs = 0;
  private metrics: http.Server | null = null;

  constructor(
    private readonly topo: LoadedTopology,
    private readonly logger: Logger,
  ) {
    const rcm = topo.config.rcm;
    const address = rcm ? `${rcm.host}:${rcm.port}` : "rcm";
    this.leaseHolder = { holder: `rcm ${address} pid ${process.pid}`, holderAddress: address, incarnation: Date.now(), ttlMs: rcm?.leaseMs ?? 30_000 };
    // A procedure is an occurrence: nothing of the RCM "exists" for a new subscriber.
    this.events = new EventPublisher({ source: "rcm", incarnation: processIncarnation(Math.round(performance.timeOrigin), process.pid), runtime: realRuntime, logger, exists: () => [] });
    this.schedules = new VerifySchedules(topo, logger);
  }

  async start(): Promise<void> {
    const rcm = this.topo.config.rcm;
    if (!rcm) throw tmError("TM_NO_RCM", `${this.topo.file} has no "rcm" section (host, port)`, { file: this.topo.file });
    const secrets = linkSecretsOf(this.topo, "rcm");
    this.server = createLinkServer({ key: secrets.key, tls: secrets.tls, nodeId: RCM_NODE_ID, logger: this.logger, handshakeTimeoutMs: 5000, onLink: (l) => this.onLink(l) });
    await new Promise<void>((resolve, reject) => {
      this.server!.once("error", (err: NodeJS.ErrnoException) =>
        reject(tmError("TM_LISTEN", `rcm: cannot listen on ${rcm.host}:${rcm.port}: ${err.code ?? err.message}`, { listener: "rcm", host: rcm.host, port: rcm.port, sysCode: err.code }, { cause: err })),
      );
      this.server!.listen(rcm.port, rcm.host, () => resolve());
    });
    if (rcm.metricsPort !== undefined) {
      this.metrics = await serveMetrics(
        rcmMetricsRegistry(() => (this.topo.config.clock === "realtime" ? this.offsetReport() : null)),
        rcm.host,
        rcm.metricsPort,
      ).catch((err: Error) => {
        this.server?.close();
        throw err;
      });
    }
    if (rcm.autoSuspend) this.timer = setInterval(() => void this.check(), rcm.checkIntervalMs);
    this.schedules.start();
    this.logger.info({ port: rcm.port, failureTimeoutMs: rcm.failureTimeoutMs, autoSuspend: rcm.autoSuspend }, "rcm serving");
  }

  async stop(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    this.events.stop();
    await this.schedules.stop();
    this.server?.close();
    this.metrics?.close();
    await Promise.allSettled([...this.busy.values()]);
  }

  private onLink(link: Link): void {
    if (link.peer.role !== "control") {
      link.close();
      return;
    }
    sendHeartbeats(link, this.topo.config.linkTimeoutMs);
    link.on("frame", (f) => {
      if (f.type !== "request") return;
      if ((f.body as { op?: unknown } | null)?.op === "subscribe") return this.events.subscribe(link, f.id);
      this.handle(f.body).then(
        (body) => link.send({ type: "response", id: f.id, ok: true, body }),
        (err: Error) => link.send({ type: "response", id: f.id, ok: false, body: { code: codeOf(err, "TM_RCM"), message: err.message } }),
      );
    });
  }

  /** One request of `tidemark suspend|takeover|resync|swap`, parsed against its row of control-ops.ts before anything runs. */
  private async handle(body: unknown): Promise<unknown> {
    const { row, req } = parseRequest(RCM_OPS, body, "rcm");
    return row.handle(this.target, req);
  }

  private readonly target: RcmTarget = {
    suspend: (group, by, reason) => this.procedure(group, "suspend", by, reason),
    takeover: (group, dryRun, by, reason) => this.procedure(group, dryRun ? "dry-run" : "takeover", by, reason),
    resync: (group, reverse, by) => {
      const o = { logger: this.logger, by };
      if (reverse) return this.serialized(group, "resync", by, "reverse resync (failback)", (t) => reverseResync(t, group, o));
      return this.serialized(group, "resync", by, "resync", async (t) => startResync(await liveTopology(t), group, o));
    },
    swap: (group, by, timeoutMs) => this.serialized(group, "swap", by, "swap", (t) => swap(t, group, { logger: this.logger, by, timeoutMs })),
    status: () => ({
      pid: process.pid,
      history: this.history.slice(-50),
      schedules: this.schedules.status(),
      clockOffsets: this.topo.config.clock === "realtime" ? this.offsetReport() : null,
    }),
  };

  /** Runs one procedure on a group, after any that is already running there. */
  procedure(group: string, mode: ProcedureMode, by: string, reason: string, partial = false): Promise<ProcedureReport> {
    // The roles of the moment: after a failback the config's secondaries are primary.
    return this.serialized(group, mode, by, reason, async (t) => runProcedure(await liveTopology(t), group, { mode, by, reason, logger: this.logger, partial }));
  }

  /**
   * Runs `f` after any procedure of this RCM already running on the group,
   * holding the group's lease on its subsystems (lease.ts), so a second RCM
   * is refused with this one's name. A dry run changes nothing and takes no lease.
   */
  private serialized<T extends object>(group: string, mode: ProcedureMode | "resync" | "swap", by: string, reason: string, f: (topo: LoadedTopology) => Promise<T>): Promise<T> {
    const prev = this.busy.get(group) ?? Promise.resolve();
    const bump = () => this.epochs.set(group, (this.epochs.get(group) ?? 0) + 1);
    bump();
    const leased = () => {
      this.events.emit({ kind: "procedure", action: "start", group, mode, by, reason });
      return mode === "dry-run" ? f(this.topo) : withGroupLease(this.topo, group, `${mode} (${reason}) by ${by}`, this.leaseHolder, f, this.logger);
    };
    const run = prev
      .catch(() => {})
      .then(leased)
      .finally(bump)
      .then(
        (r) => {
          const ts = (r as { ts?: string }).ts;
          this.history.push({ at: new Date().toISOString(), group, mode, by, reason, ok: true, ts });
          this.events.emit({ kind: "procedure", action: "end", group, mode, by, reason, ok: true, ts: ts ?? null });
          return r;
        },
        (err: Error) => {
          this.history.push({ at: new Date().toISOString(), group, mode, by, reason, ok: false, error: err.message });
          this.events.emit({ kind: "procedure", action: "end", group, mode, by, reason, ok: false, error: err.message });
          this.logger.error({ group, mode, err: err.message }, "after-failure procedure failed");
          throw err;
        },
      );
    this.busy.set(group, run);
    void run.finally(() => {
      if (this.busy.get(group) === run) this.busy.delete(group);
    }).catch(() => {});
    return run;
  }

  /**
   * A probe of every subsystem's clock, at most once per OFFSET_PROBE_MS: its
   * samples join the offsets. A subsystem that does not answer, or answers with
   * a new pid, loses its old samples (it may run on another clock now).
   */
  private async measureOffsets(ids: number[], answers: Map<number, { ok: true; value: SubsystemStatus } | { ok: false; error: string }>): Promise<void> {
    for (const id of ids) {
      const a = answers.get(id);
      const pid = a?.ok ? a.value.pid : undefined;
      if (pid === undefined || this.pids.get(id) !== pid) this.offsets.forget(id);
      if (pid !== undefined) this.pids.set(id, pid);
      else this.pids.delete(id);
    }
    if (Date.now() - this.lastProbeMs < OFFSET_PROBE_MS) return;
    this.lastProbeMs = Date.now();
    const clockNs = clockReader(this.topo.config.clock);
    await Promise.all(
      ids
        .filter((id) => this.pids.has(id))
        .map(async (id) => {
          for (const s of await probeOffset(this.topo, id, clockNs)) this.offsets.add(id, s);
        }),
    );
  }

  /** Per subsystem, its clock's measured offset from the RCM's (status). */
  offsetReport(): ClockOffsetReport {
    const now = Date.now();
    const subsystems = this.topo.config.subsystems.map((s) => s.id);
    return {
      subsystems: subsystems.flatMap((id) => {
        const e = this.offsets.estimate(id, now);
        return e === null ? [] : [{ subsystem: id, offsetMs: e.offsetMs, uncertaintyMs: e.uncertaintyMs, roundTripMs: e.roundTripMs, ageMs: now - e.atMs }];
      }),
      widest: this.offsets.pairs(subsystems, now)[0] ?? null,
      boundMs: this.topo.config.maxClockOffsetMs,
    };
  }

  /** The holder of a live lease on the group that is not this RCM, as the subsystems report it. */
  private leasedElsewhere(group: string, ids: number[], answers: Map<number, { ok: true; value: SubsystemStatus } | { ok: false; error: string }>): string | null {
    for (const id of ids) {
      const a = answers.get(id);
      const l = a?.ok ? a.value.leases?.[group] : undefined;
      if (l && l.holder !== this.leaseHolder.holder) return `${l.procedure} by ${l.holder}`;
    }
    return null;
  }

  /** One monitoring pass over every group. */
  private async check(): Promise<void> {
    if (this.checking) return;
    this.checking = true;
    try {
      const ids = this.topo.config.subsystems.map((s) => s.id);
      const epochs = new Map(this.epochs);
      const answers = await askAll<SubsystemStatus>(this.topo, ids, { op: "status" });
      if (this.topo.config.clock === "realtime") await this.measureOffsets(ids, answers);
      const now = Date.now();
      const timeout = this.topo.config.rcm!.failureTimeoutMs;
      // Roles as the subsystems run them. A group whose subsystems disagree on its
      // direction (a turn cut short) is checked as forward; a suspension it
      // triggers refuses with TM_DIRECTION_MIXED until the turn is finished.
      const live = liveTopologyFrom(this.topo, answers.values() as Iterable<{ ok: boolean; value?: SubsystemStatus }>, true);
      for (const g of live.groups.values()) {
        // Busy now, or busy at some moment while the answers came in: look again next pass.
        if (this.busy.has(g.name) || (this.epochs.get(g.name) ?? 0) !== (epochs.get(g.name) ?? 0)) continue;
        // Another RCM runs a procedure on it: its procedure decides, not this monitor (logged once per holder).
        const other = this.leasedElsewhere(g.name, [...g.primaries, ...g.secondaries], answers);
        if (other !== null) {
          if (this.heldElsewhere.get(g.name) !== other) this.logger.warn({ group: g.name, holder: other }, "another RCM holds the group's procedure lease: not monitoring it while it does");
          this.heldElsewhere.set(g.name, other);
          continue;
        }
        this.heldElsewhere.delete(g.name);
        // Condition name -> [immediate, detail]. Names stay stable while a fault lasts
        // (a link flapping between connecting and backoff is one fault).
        const conditions = new Map<string, boolean>();
        const details = new Map<string, string>();
        let suspendedSomewhere = false;
        let activeSomewhere = false;
        let unsynchronized = false;
        let secondariesReachable = true;
        let generation = 0;
        /** Primaries holding a new pair's initial copy that no resync has started. */
        const pendingCopy: number[] = [];
        // Commit wait orders dependent writes only while the clocks agree within the bound.
        if (this.topo.config.clock === "realtime") {
          const bound = this.topo.config.maxClockOffsetMs;
          const apart = this.offsets.beyond([...g.primaries, ...g.secondaries], bound, Date.now());
          if (apart !== null) conditions.set(offsetCondition(apart, bound), true);
        }
        for (const id of [...g.primaries, ...g.secondaries]) {
          const a = answers.get(id)!;
          if (!a.ok) {
            conditions.set(`subsystem #${id} unreachable`, false);
            if (g.secondaries.includes(id)) secondariesReachable = false;
            continue;
          }
          const s = a.value;
          // A full state disk takes no writes and no RCRs: no timeout (issue 18).
          if (s.disk?.state === "state-disk-full") conditions.set(`subsystem #${id} ${s.disk.reason}`, true);
          for (const v of s.primary?.volumes ?? []) if (v.group === g.name && v.failed) conditions.set(`primary #${id} ${v.failed}`, true);
          for (const pg of s.primary?.groups ?? []) {
            if (pg.name !== g.name) continue;
            const state = (pg as { state?: string }).state ?? "active";
            if (state === "active" && (pg.remainingBlocks ?? 0) > 0) pendingCopy.push(id);
            if (state === "frozen") {
              // This RCM runs every swap and skips a group while it does (busy,
              // above): a frozen primary seen here is a swap cut short (the RCM
              // died), whose hosts are refused until the group is suspended.
              conditions.set(`primary #${id} frozen by a swap that did not finish`, true);
            } else if (state !== "active" && state !== "copying") {
              // A primary that stopped replicating on its own (fenced, journal full) needs no timeout.
              conditions.set(`primary #${id} ${state}: ${(pg as { reason?: string }).reason ?? ""}`, true);
            }
          }
          for (const l of s.primary?.links ?? []) {
            if (g.secondaries.includes(l.secondary) && l.state !== "up" && s.primary?.groups.some((x) => x.name === g.name && (x.state === "active" || x.state === "copying" || x.state === "frozen"))) {
              const key = `link #${id} -> #${l.secondary} down`;
              conditions.set(key, false);
              if (l.lastError) details.set(key, l.lastError);
            }
          }
          for (const sg of s.secondary ?? []) {
            if (sg.name !== g.name) continue;
            generation = Math.max(generation, sg.generation);
            if (sg.state === "active" || sg.state === "resyncing") activeSomewhere = true;
            else {
              suspendedSomewhere = true;
              if ((sg as { synchronizedTs?: string | null }).synchronizedTs == null) unsynchronized = true;
            }
            const err = (sg as { applyError?: string | null }).applyError;
            if (err) conditions.set(`secondary #${id} cannot write its volumes: ${err}`, true);
          }
        }
        // The group's state is its secondaries' (they hold the generation).
        // A suspension cut short (a secondary was away, or the RCM died): finish it
        // once every secondary answers, so the group rests at one synchronized time.
        if (suspendedSomewhere && (activeSomewhere || unsynchronized)) {
          // What was seen before the suspension says nothing of the group after it.
          this.since.delete(g.name);
          if (secondariesReachable) {
            this.logger.warn({ group: g.name }, "finishing a suspension that was cut short");
            void this.procedure(g.name, "suspend", "rcm (automatic)", "finishing an interrupted suspension").catch(() => {});
          }
          continue;
        }
        if (!activeSomewhere) {
          this.since.delete(g.name);
          continue;
        }
        if (pendingCopy.length > 0 && conditions.size === 0 && !suspendedSomewhere) {
          this.logger.warn({ group: g.name, primaries: pendingCopy }, "a new pair waits for its initial copy: resyncing the group");
          void this.serialized(g.name, "resync", "rcm (automatic)", "initial copy of a new pair", async (t) =>
            startResync(await liveTopology(t), g.name, { logger: this.logger, by: "rcm (automatic)" }),
          ).catch(() => {});
          continue;
        }
        // A resync right after an outage reconnects its links at the new
        // generation: a link seen down before it is not down for as long.
        if (this.sinceGeneration.get(g.name) !== generation) this.since.delete(g.name);
        this.sinceGeneration.set(g.name, generation);
        const seen = this.since.get(g.name) ?? new Map<string, number>();
        for (const k of [...seen.keys()]) if (!conditions.has(k)) seen.delete(k);
        for (const k of conditions.keys()) if (!seen.has(k)) seen.set(k, now);
        this.since.set(g.name, seen);
        const due = [...conditions].filter(([k, immediate]) => immediate || now - seen.get(k)! >= timeout).map(([k]) => k);
        if (due.length === 0) continue;
        const reason = due.map((k) => (details.has(k) ? `${k} (${details.get(k)})` : k)).join("; ");
        this.logger.warn({ group: g.name, reason }, "failure outlasted the timeout: suspending the group");
        void this.procedure(g.name, "suspend", "rcm (automatic)", reason, true)
          .then((r) => {
            if (!r.complete) this.logger.warn({ group: g.name, waitingFor: r.waitingFor }, "suspension fenced what answers; will finish when the rest is back");
            else this.since.delete(g.name);
          })
          .catch(() => {});
      }
    } catch (err) {
      this.logger.error({ err: (err as Error).message }, "rcm monitor pass failed");
    } finally {
      this.checking = false;
    }
  }
}

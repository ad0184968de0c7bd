// Builds the documented status document (docs/status.md) from every
// subsystem's own status, and renders it as the table an admin reads. Pure:
// the subsystems' answers and the clock reading come in as values.
import type { Topology } from "../../config/schema.ts";
import { formatEta } from "./eta.ts";
import { returningPrimaries } from "../rcm/returning.ts";
import { pairVerify, pairVerifyLine, renderSchedules, type PairVerify, type SubsystemVerify } from "./verify-status.ts";
import type { ScheduleStatus } from "../rcm/verify-schedule.ts";
import type { ClockOffsetReport } from "../rcm/clock-offsets.ts";
import type { LinkSecurity } from "../replication/link-tls.ts";

/** What a subsystem answers to {op: "status"} (see appliance/subsystem). */
export interface SubsystemStatus {
  /** Online verify (docs/verify.md); absent from older subsystems. */
  verify?: SubsystemVerify;
  subsystem: number;
  pid: number;
  host: string;
  replicationPort: number;
  nbdPort: number;
  nowNs: string;
  /** Per group: "forward" (the config's primaries are primary) or "reverse" (after a failback). */
  directions?: Record<string, string>;
  /**
   * Per group, the synchronized time this subsystem holds for it: on a primary
   * a turn made, the Ts of that turn; on a secondary, its synchronizedTs.
   * failback.ts reads it for primaries only (a cut-short turn is finished from it).
   */
  turnedAtTs?: Record<string, string>;
  /** Live procedure leases by group (absent from subsystems older than migration 8). */
  leases?: Record<string, { holder: string; procedure: string; acquiredMs: number; expiresInMs: number }>;
  /** The state disk (appliance/state/disk-guard.ts): `state-disk-full` while it takes no writes. */
  disk?: { state: "ok" | "state-disk-full"; reason: string | null; file: string | null; fileSystem: string | null; episodes: number; refusedWrites: number } | null;
  /** The log file (appliance/logging/log-file.ts): lines dropped because it could not be written. */
  log?: { droppedLines: number; droppedBytes: number; lastError: string | null } | null;
  volumes: { name: string; role: string; path: string; kind: string; sizeBytes: number; nbdUrl: string | null; readOnly: boolean; bitmapBlocks: number }[];
  primary: {
    lastStamp: string;
    writes: number;
    writeBytes: number;
    pending: number;
    journal: { entries: number; bytes: number; hotRegions: number };
    groups: {
      name: string;
      state: string;
      reason: string | null;
      suspendedBy: string | null;
      bitmapBlocks: number;
      pending: number;
      lastSyncT: string;
      generation: number;
      copiedTs?: string | null;
      /** The stamp a swap froze the group at, while frozen or taken over after it (migration 9). */
      frozenTs?: string | null;
      /** The state is the one hosts see, but its record is not yet durable (a suspension being written, or one a full disk failed). */
      unrecorded?: boolean;
      remainingBlocks?: number;
      copy?: CopyStatus | null;
    }[];
    links: { secondary: number; state: string; sentSeq: number; ackedSeq: number; bytesInFlight: number; lastError: string | null; security?: LinkSecurity | null }[];
    /** Primary volumes whose initial copy has not run yet. */
    pendingCopies?: string[];
    volumes: { name: string; group: string; secondary: number; target: string; failed?: string | null }[];
  } | null;
  secondary:
    | {
        name: string;
        generation: number;
        state: string;
        reason: string | null;
        first: Record<string, string>;
        second: string;
        rcrQueue: number;
        rcrQueueBytes: number;
        diskQueue: number;
        diskQueueBytes: number;
        applied: number;
        appliedBytes: number;
        lastAppliedTs: string;
        appliedThrough: string;
        synchronizedTs: string | null;
        resync?: { floor: string | null; barrier: string | null; copiedFrom: number[] } | null;
        suspendedBy: string | null;
        applyError: string | null;
        dropped: number;
        droppedBytes: number;
        bitmapBlocks: number;
        /** Volumes whose initial copy never passed a barrier (absent from older subsystems). */
        uncopiedVolumes?: string[];
      }[]
    | null;
}

/** A primary's copy in progress (PrimaryEngine.copyStatus). */
export interface CopyStatus {
  phase: "copying" | "acknowledging";
  totalBlocks: number;
  doneBlocks: number;
  dataBytes: number;
  zeroBytes: number;
  elapsedMs: number;
  bytesPerSecond: number;
  etaMs: number | null;
}

export type Answer = { ok: true; value: SubsystemStatus } | { ok: false; error: string };

export interface VolumeRef {
  subsystem: number;
  volume: string;
  path: string | null;
  nbdUrl: string | null;
}

export interface StatusDoc {
  nowNs: string;
  /** Every replication link, as its primary reports it: state, TLS and the secondary's identity (docs/security.md). */
  links: {
    primary: number;
    secondary: number;
    state: string;
    /** "psk", "x509", "off", or null before the link was first up (or an older subsystem). */
    tls: string | null;
    protocol: string | null;
    peerIdentity: string | null;
  }[];
  subsystems: {
    id: number;
    reachable: boolean;
    error?: string;
    pid?: number;
    /** Only when reachable: `ok`, or `state-disk-full` with the reason naming the file and file system. */
    disk?: string;
    diskReason?: string | null;
    /** Only when reachable: log lines dropped since start because the log file could not be written. */
    logDroppedLines?: number;
    replication: string;
    nbd: string;
  }[];
  groups: {
    name: string;
    generation: number | null;
    state: string;
    reason: string | null;
    suspendedBy: string | null;
    synchronizedTs: string | null;
    lagMs: number | null;
    lowestSecond: string | null;
    heldBackBy: number | null;
    /** "forward", or "reverse" after a failback (the config's secondaries are primary). */
    direction: string;
    /**
     * Primaries the group's takeover could not reach that are back, in the state
     * they came back in (appliance/rcm/returning.ts); `resync --reverse`,
     * `resync` and `swap` take them over first. Empty otherwise.
     */
    returning: { subsystem: number; state: string; generation: number; unrecorded?: true }[];
    /**
     * Secondary volumes whose pair's initial copy has never finished: no image
     * of the primary at any Ts, so a takeover now would present them incomplete.
     */
    uncopiedVolumes: string[];
    /** The procedure whose lease the group's subsystems hold now (docs/takeover.md, "One procedure at a time"); null when none. */
    procedure: { holder: string; procedure: string; expiresInMs: number } | null;
    /** A copy in progress (initial copy or resync), summed over the primaries; null when none runs. */
    copy: {
      totalBlocks: number;
      doneBlocks: number;
      bytesPerSecond: number;
      etaMs: number | null;
      primaries: { subsystem: number; state: string; phase: string | null; remainingBlocks: number }[];
      /** T_old the secondaries hold until the barrier C, once known. */
      floor: string | null;
      barrier: string | null;
    } | null;
    secondaries: {
      subsystem: number;
      reachable: boolean;
      first: Record<string, string>;
      second: string | null;
      rcrQueue: number | null;
      diskQueue: number | null;
      applied: number | null;
      appliedBytes: number | null;
      lastAppliedTs: string | null;
      appliedThrough: string | null;
    }[];
  }[];
  pairs: {
    group: string;
    /** paired | copying | copy-pending | awaiting-barrier | link-down | primary-unreachable | secondary-unreachable | suspended | takeover | fenced | frozen | taken-over */
    state: string;
    reason: string | null;
    link: string | null;
    primary: VolumeRef & { bitmapBlocks: number | null; readOnly: boolean | null };
    secondary: VolumeRef & { bitmapBlocks: number | null; readOnly: boolean | null };
    /** The pair's last online verify (docs/verify.md); null when none ran. */
    verify: PairVerify | null;
  }[];
  /** The RCM's schedules (docs/verify.md, Schedules): absent when the config schedules nothing, null when the RCM did not answer. */
  schedules?: ScheduleStatus[] | null;
  /** The clocks as the RCM measures them (clock "realtime" with an RCM; docs/clock.md, Measured offsets): null when the RCM did not answer. */
  clockOffsets?: ClockOffsetReport | null;
}

/** A primary volume whose initial copy is still to run (a pair new to a group that replicates). */
function copyPending(a: Answer | undefined, volume: string): boolean {
  return !!a?.ok && (a.value.primary?.pendingCopies ?? []).includes(volume);
}

function volRef(answers: Map<number, Answer>, subsystem: number, volume: string): VolumeRef & { bitmapBlocks: number | null; readOnly: boolean | null } {
  const a = answers.get(subsystem);
  const v = a?.ok ? a.value.volumes.find((x) => x.name === volume) : undefined;
  return { subsystem, volume, path: v?.path ?? null, nbdUrl: v?.nbdUrl ?? null, bitmapBlocks: v?.bitmapBlocks ?? null, readOnly: v?.readOnly ?? null };
}

export function buildStatus(topo: Topology, answers: Map<number, Answer>, nowNs: bigint): StatusDoc {
  const subsystems = topo.config.subsystems.map((s) => {
    const a = answers.get(s.id);
    return {
      id: s.id,
      reachable: a?.ok === true,
      ...(a && !a.ok ? { error: a.error } : {}),
      ...(a?.ok
        ? { pid: a.value.pid, disk: a.value.disk?.state ?? "ok", diskReason: a.value.disk?.reason ?? null, logDroppedLines: a.value.log?.droppedLines ?? 0 }
        : {}),
      replication: `${s.host}:${s.replicationPort}`,
      nbd: `${s.host}:${s.nbdPort}`,
    };
  });
  const groups = [...topo.groups.values()].map((g) => {
    const secondaries = g.secondaries.map((id) => {
      const a = answers.get(id);
      const sg = a?.ok ? a.value.secondary?.find((x) => x.name === g.name) : undefined;
      return {
        subsystem: id,
        reachable: a?.ok === true,
        first: sg?.first ?? {},
        second: sg?.second ?? null,
        rcrQueue: sg?.rcrQueue ?? null,
        diskQueue: sg?.diskQueue ?? null,
        applied: sg?.applied ?? null,
        appliedBytes: sg?.appliedBytes ?? null,
        lastAppliedTs: sg?.lastAppliedTs ?? null,
        appliedThrough: sg?.appliedThrough ?? null,
        generation: sg?.generation ?? null,
        state: sg?.state ?? null,
        reason: sg?.reason ?? null,
        suspendedBy: sg?.suspendedBy ?? null,
        synchronizedTs: sg?.synchronizedTs ?? null,
        bitmapBlocks: sg?.bitmapBlocks ?? null,
        applyError: sg?.applyError ?? null,
      };
    });
    let lowest: (typeof secondaries)[number] | null = null;
    for (const s of secondaries) if (s.second !== null && (lowest === null || BigInt(s.second) < BigInt(lowest.second!))) lowest = s;
    let heldBackBy: number | null = null;
    if (lowest) {
      let min: bigint | null = null;
      for (const [p, t] of Object.entries(lowest.first)) {
        if (min === null || BigInt(t) < min) {
          min = BigInt(t);
          heldBackBy = Number(p);
        }
      }
    }
    const complete = secondaries.every((s) => s.second !== null);
    // Before the first SYNC there is no common time yet, so no lag either.
    const lagMs = lowest && complete && BigInt(lowest.second!) > 0n ? Number(nowNs - BigInt(lowest.second!)) / 1e6 : null;
    const gens = secondaries.map((s) => s.generation).filter((x): x is number => x !== null);
    const prim = g.primaries.map((id) => {
      const a = answers.get(id);
      return { id, pg: a?.ok ? a.value.primary?.groups.find((x) => x.name === g.name) : undefined, dir: a?.ok ? a.value.directions?.[g.name] : undefined };
    });
    const copying = prim.some((p) => p.pg?.state === "copying") || secondaries.some((s) => s.state === "resyncing");
    const holds = g.secondaries.map((id) => {
      const a = answers.get(id);
      return a?.ok ? a.value.secondary?.find((x) => x.name === g.name)?.resync : undefined;
    });
    const copy = copying
      ? {
          totalBlocks: prim.reduce((n, p) => n + (p.pg?.copy?.totalBlocks ?? 0), 0),
          doneBlocks: prim.reduce((n, p) => n + (p.pg?.copy?.doneBlocks ?? 0), 0),
          bytesPerSecond: prim.reduce((n, p) => n + (p.pg?.copy?.bytesPerSecond ?? 0), 0),
          etaMs: prim.reduce<number | null>((m, p) => (p.pg?.copy?.etaMs == null ? m : Math.max(m ?? 0, p.pg.copy.etaMs)), null),
          primaries: prim.map((p) => ({ subsystem: p.id, state: p.pg?.state ?? "unknown", phase: p.pg?.copy?.phase ?? null, remainingBlocks: p.pg?.remainingBlocks ?? 0 })),
          floor: holds.find((h) => h?.floor)?.floor ?? null,
          barrier: holds.find((h) => h?.barrier)?.barrier ?? null,
        }
      : null;
    const states = new Set(secondaries.map((s) => s.state).filter((x): x is string => x !== null));
    // Only when every secondary answered: the rule needs all of them taken over at one generation.
    const returning = complete
      ? returningPrimaries(
          secondaries.map((s) => ({ state: s.state ?? "", generation: s.generation ?? 0 })),
          new Map(prim.flatMap((p) => (p.pg ? [[p.id, p.pg] as const] : []))),
        ).primaries
      : [];
    return {
      name: g.name,
      generation: gens.length > 0 ? Math.max(...gens) : null,
      state: states.size === 0 ? "unknown" : [...states].join("/") + (complete ? "" : " (degraded)"),
      reason: secondaries.find((s) => s.reason)?.reason ?? null,
      suspendedBy: secondaries.find((s) => s.suspendedBy)?.suspendedBy ?? null,
      synchronizedTs: secondaries.find((s) => s.synchronizedTs)?.synchronizedTs ?? null,
      lagMs,
      lowestSecond: lowest?.second ?? null,
      heldBackBy,
      direction: prim.find((p) => p.dir)?.dir ?? "forward",
      returning,
      uncopiedVolumes: g.secondaries
        .flatMap((id) => {
          const a = answers.get(id);
          return (a?.ok ? a.value.secondary?.find((x) => x.name === g.name)?.uncopiedVolumes : undefined) ?? [];
        })
        .sort(),
      procedure:
        [...new Set([...g.primaries, ...g.secondaries])]
          .map((id) => {
            const a = answers.get(id);
            const l = a?.ok ? a.value.leases?.[g.name] : undefined;
            return l ? { holder: l.holder, procedure: l.procedure, expiresInMs: l.expiresInMs } : null;
          })
          .find((l) => l !== null) ?? null,
      copy,
      secondaries: secondaries.map(({ generation: _g, reason: _r, suspendedBy: _b, synchronizedTs: _t, ...rest }) => rest),
    };
  });
  const pairs = topo.pairs.map((p) => {
    const pa = answers.get(p.primary.subsystemId);
    const sa = answers.get(p.secondary.subsystemId);
    const link = pa?.ok ? (pa.value.primary?.links.find((l) => l.secondary === p.secondary.subsystemId)?.state ?? null) : null;
    const pg = pa?.ok ? pa.value.primary?.groups.find((g) => g.name === p.group) : undefined;
    const sg = sa?.ok ? sa.value.secondary?.find((g) => g.name === p.group) : undefined;
    // A suspension outranks a copy, a copy outranks link trouble: each says what the pair's data is doing.
    const state =
      sg && sg.state !== "active" && sg.state !== "resyncing"
        ? sg.state
        : pg && pg.state !== "active" && pg.state !== "copying"
          ? pg.state
          : pg?.state === "copying"
            ? "copying"
            : copyPending(pa, p.primary.name)
              ? "copy-pending"
            : sg?.state === "resyncing"
              ? "awaiting-barrier"
              : !pa?.ok
            ? "primary-unreachable"
            : !sa?.ok
              ? "secondary-unreachable"
              : link === "up"
                ? "paired"
                : "link-down";
    return {
      group: p.group,
      state,
      reason: (sg && sg.state !== "active" ? sg.reason : null) ?? (pg && pg.state !== "active" ? pg.reason : null) ?? null,
      link,
      primary: volRef(answers, p.primary.subsystemId, p.primary.name),
      secondary: volRef(answers, p.secondary.subsystemId, p.secondary.name),
      verify: pairVerify(pa?.ok ? pa.value.verify : undefined, sa?.ok ? sa.value.verify : undefined, p.group, p.primary.name, p.secondary.name),
    };
  });
  const links = topo.config.subsystems.flatMap((s) => {
    const a = answers.get(s.id);
    return (a?.ok ? (a.value.primary?.links ?? []) : []).map((l) => ({
      primary: s.id,
      secondary: l.secondary,
      state: l.state,
      tls: l.security?.tls ?? null,
      protocol: l.security?.protocol ?? null,
      peerIdentity: l.security?.peerIdentity ?? null,
    }));
  });
  return { nowNs: nowNs.toString(), links, subsystems, groups, pairs };
}

function table(rows: string[][]): string {
  const widths = rows[0].map((_, i) => Math.max(...rows.map((r) => (r[i] ?? "").length)));
  return rows.map((r) => r.map((c, i) => (c ?? "").padEnd(widths[i])).join("  ").trimEnd()).join("\n");
}

/** Timestamps relative to now, in ms, read better than raw nanoseconds. */
function age(nowNs: bigint, t: string | null): string {
  if (t === null) return "-";
  if (BigInt(t) === 0n) return "never";
  return `-${(Number(nowNs - BigInt(t)) / 1e6).toFixed(1)}ms`;
}

export function renderStatus(doc: StatusDoc): string {
  const now = BigInt(doc.nowNs);
  const out: string[] = [];
  out.push("SUBSYSTEMS");
  out.push(
    table([
      ["id", "state", "pid", "replication", "nbd"],
      ...doc.subsystems.map((s) => [`#${s.id}`, !s.reachable ? "DOWN" : s.disk === "state-disk-full" ? "state-disk-full" : "up", s.pid ? String(s.pid) : "-", s.replication, s.nbd]),
    ]),
  );
  // Why each one is down, under the table: a reason in a cell would widen its column for every row.
  for (const s of doc.subsystems) if (!s.reachable) out.push(`  #${s.id} DOWN: ${s.error ?? "no answer"}`);
  for (const s of doc.subsystems) if (s.disk === "state-disk-full") out.push(`  #${s.id} state-disk-full: ${s.diskReason}; host writes get ENOSPC, reads go on`);
  for (const s of doc.subsystems) if (s.logDroppedLines) out.push(`  #${s.id} log: ${s.logDroppedLines} lines dropped (the log file could not be written)`);
  for (const g of doc.groups) {
    out.push("");
    const lag = g.lagMs === null ? "unknown" : `${g.lagMs.toFixed(1)} ms`;
    const held = g.heldBackBy === null ? "" : `, held back by primary #${g.heldBackBy}`;
    out.push(`GROUP ${g.name}  state ${g.state}  generation ${g.generation ?? "?"}  lag ${lag}${held}`);
    if (g.direction !== "forward") out.push(`  direction ${g.direction}: the config's secondaries are primary (failback)`);
    if (g.copy) {
      const c = g.copy;
      const pct = c.totalBlocks > 0 ? ((100 * c.doneBlocks) / c.totalBlocks).toFixed(1) : "100.0";
      out.push(
        `  copy: ${c.doneBlocks}/${c.totalBlocks} blocks (${pct}%), ${(c.bytesPerSecond / 1048576).toFixed(1)} MiB/s, ETA ${formatEta(c.etaMs)}; ${c.primaries
          .map((p) => `#${p.subsystem} ${p.state === "copying" ? (p.phase ?? "copying") : p.state}`)
          .join(", ")}; secondaries hold T_old ${c.floor ?? "?"} until the barrier${c.barrier ? ` C ${c.barrier}` : " (not yet known)"}`,
      );
    }
    if (g.reason) out.push(`  suspended by ${g.suspendedBy ?? "?"}: ${g.reason}${g.synchronizedTs ? `; secondaries rest at Ts ${g.synchronizedTs}` : ""}`);
    if (g.uncopiedVolumes.length > 0) {
      out.push(`  initial copy not finished: ${g.uncopiedVolumes.join(", ")}; a takeover now would present ${g.uncopiedVolumes.length > 1 ? "them" : "it"} incomplete (not usable)`);
    }
    if (g.procedure) out.push(`  procedure running: ${g.procedure.procedure}, held by ${g.procedure.holder} (lease renewed while it runs; expires in ${Math.ceil(g.procedure.expiresInMs / 1000)} s if it stops)`);
    for (const p of g.returning) {
      out.push(
        p.unrecorded
          ? `  primary #${p.subsystem} shows ${p.state}, but its state file does not say so yet (the record is being written, or failed);` +
            ` next: tidemark resync --group ${g.name} --reverse (records its takeover and fails back)`
          : `  primary #${p.subsystem} is back (${p.state}, generation ${p.generation}) after the takeover at generation ${g.generation ?? "?"}, which could not reach it;` +
          ` next: tidemark resync --group ${g.name} --reverse (takes it over and fails back)`,
      );
    }
    const primaries = [...new Set(g.secondaries.flatMap((s) => Object.keys(s.first)))].sort((a, b) => Number(a) - Number(b));
    out.push(
      table([
        ["secondary", ...primaries.map((p) => `111[#${p}]`), "112", "rcr-queue", "disk-queue", "applied", "applied-MiB"],
        ...g.secondaries.map((s) =>
          s.reachable
            ? [
                `#${s.subsystem}`,
                ...primaries.map((p) => age(now, s.first[p] ?? null)),
                age(now, s.second),
                String(s.rcrQueue),
                String(s.diskQueue),
                String(s.applied),
                ((s.appliedBytes ?? 0) / 1048576).toFixed(1),
              ]
            : [`#${s.subsystem}`, ...primaries.map(() => "-"), "UNREACHABLE", "-", "-", "-", "-"],
        ),
      ]),
    );
  }
  if (doc.links.length > 0) {
    out.push("");
    out.push("LINKS");
    out.push(
      table([
        ["link", "state", "tls", "protocol", "peer identity"],
        ...doc.links.map((l) => [`#${l.primary} -> #${l.secondary}`, l.state, l.tls ?? "-", l.protocol ?? "-", l.peerIdentity ?? "-"]),
      ]),
    );
  }
  out.push("");
  out.push("PAIRS");
  out.push(
    table([
      ["group", "state", "primary", "secondary", "bitmap (primary/secondary)", "primary NBD", "secondary NBD"],
      ...doc.pairs.map((p) => [
        p.group,
        p.state,
        `#${p.primary.subsystem}/${p.primary.volume}`,
        `#${p.secondary.subsystem}/${p.secondary.volume}`,
        `${p.primary.bitmapBlocks ?? "-"}/${p.secondary.bitmapBlocks ?? "-"}`,
        p.primary.nbdUrl ?? "-",
        p.secondary.nbdUrl ?? "-",
      ]),
    ]),
  );
  for (const p of doc.pairs) if (p.verify) out.push(pairVerifyLine(p.group, `#${p.primary.subsystem}/${p.primary.volume}`, `#${p.secondary.subsystem}/${p.secondary.volume}`, p.verify));
  if (doc.schedules !== undefined) out.push("", ...renderSchedules(doc.schedules));
  if (doc.clockOffsets !== undefined) out.push("", ...renderClockOffsets(doc.clockOffsets));
  return out.join("\n");
}

/** CLOCKS: each subsystem's clock against the RCM's, and the pair furthest apart against the bound. */
function renderClockOffsets(r: ClockOffsetReport | null): string[] {
  if (r === null) return ["CLOCKS  the RCM did not answer"];
  const ms = (x: number) => `${x >= 0 ? "+" : ""}${x.toFixed(1)} ms`;
  const out = [`CLOCKS  measured by the RCM; maxClockOffsetMs ${r.boundMs}`];
  if (r.subsystems.length === 0) return [...out, "  no measurement yet"];
  out.push(
    table([
      ["subsystem", "offset (vs the RCM)", "uncertainty", "round trip", "age"],
      ...r.subsystems.map((s) => [`#${s.subsystem}`, ms(s.offsetMs), `±${s.uncertaintyMs.toFixed(1)} ms`, `${s.roundTripMs.toFixed(1)} ms`, `${(s.ageMs / 1000).toFixed(1)} s`]),
    ]),
  );
  const w = r.widest;
  if (w !== null) {
    const verdict = w.offsetMs - w.uncertaintyMs > r.boundMs ? "BEYOND the bound" : w.offsetMs + w.uncertaintyMs > r.boundMs ? "possibly beyond the bound" : "within the bound";
    out.push(`widest: #${w.ahead} is ${w.offsetMs.toFixed(1)} ms (±${w.uncertaintyMs.toFixed(1)}) ahead of #${w.behind}: ${verdict}`);
  }
  return out;
}

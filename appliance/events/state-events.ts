// A subsystem's events, derived from what its engines report: the objects it
// holds (its groups in each role, its primary volumes' pairs, its links) as
// flat records, and a diff of two such sets that gives the object changes
// and the occurrences they mean (a suspension, a takeover, a resync's start,
// progress and end). Pure: views and the clock reading come in as values.
// Invariant: an occurrence is derived from an object change of the same
// diff, and comes after it.
import type { SubsystemStatus, CopyStatus } from "../cli/status-view.ts";
import type { EventBody, EventKindName, EventValue } from "./kinds.ts";

/** The parts of a subsystem's status the events are made of (SubsystemCore.eventView). */
export type EventView = Pick<SubsystemStatus, "subsystem" | "primary" | "secondary" | "directions"> & {
  pid?: number;
  disk?: string;
};

/** A resync's progress from one primary: at most one `progress` per group this often. */
export const RESYNC_PROGRESS_INTERVAL_MS = 1000;

type Fields = Record<string, EventValue>;
interface ObjectState {
  kind: EventKindName;
  key: Fields;
  fields: Fields;
}

function keyOf(kind: EventKindName, key: Fields): string {
  return `${kind} ${Object.values(key).join(" ")}`;
}

function put(out: Map<string, ObjectState>, kind: EventKindName, key: Fields, fields: Fields): void {
  out.set(keyOf(kind, key), { kind, key, fields });
}

/** The pair's state as its primary sees it. */
function pairState(v: NonNullable<EventView["primary"]>["volumes"][number], group: { state: string } | undefined, linkUp: boolean, pendingCopy: boolean): string {
  if (v.failed) return "failed";
  if (pendingCopy) return "copy-pending";
  const state = group?.state ?? "unknown";
  if (state === "active") return linkUp ? "paired" : "link-down";
  return state;
}

/** Every object of the view, keyed `kind key...`. */
export function objectsOf(view: EventView): Map<string, ObjectState> {
  const out = new Map<string, ObjectState>();
  const id = view.subsystem;
  put(out, "subsystem", { subsystem: id }, { state: "up", pid: view.pid ?? null, disk: view.disk ?? "ok" });
  const direction = (g: string) => view.directions?.[g] ?? "forward";
  const p = view.primary;
  if (p) {
    for (const g of p.groups) {
      put(out, "group", { group: g.name, role: "primary", subsystem: id }, { state: g.state, generation: g.generation, reason: g.reason, by: g.suspendedBy, ts: null, direction: direction(g.name) });
    }
    const up = new Set(p.links.filter((l) => l.state === "up").map((l) => l.secondary));
    for (const l of p.links) put(out, "link", { primary: id, secondary: l.secondary }, { state: up.has(l.secondary) ? "up" : "down", error: up.has(l.secondary) ? null : l.lastError });
    const pending = new Set(p.pendingCopies ?? []);
    for (const v of p.volumes) {
      const g = p.groups.find((x) => x.name === v.group);
      put(out, "pair", { volume: v.name, subsystem: id }, { group: v.group, target: v.target, secondary: v.secondary, state: pairState(v, g, up.has(v.secondary), pending.has(v.name)) });
    }
  }
  for (const g of view.secondary ?? []) {
    put(out, "group", { group: g.name, role: "secondary", subsystem: id }, {
      state: g.state,
      generation: g.generation,
      reason: g.reason,
      by: g.suspendedBy,
      ts: g.synchronizedTs,
      direction: direction(g.name),
    });
  }
  return out;
}

function sameFields(a: Fields, b: Fields): boolean {
  const ka = Object.keys(a);
  return ka.length === Object.keys(b).length && ka.every((k) => a[k] === b[k]);
}

function body(kind: EventKindName, action: EventBody["action"], key: Fields, fields: Fields): EventBody {
  return { kind, action, ...key, ...fields };
}

/** The `exists` lines of a set of objects, subsystem first, then in key order. */
export function existsOf(objects: Map<string, ObjectState>): EventBody[] {
  return [...objects.values()].map((o) => body(o.kind, "exists", o.key, o.fields));
}

/** What a group's state change means, beyond the change itself. */
function occurrences(prev: ObjectState | undefined, next: ObjectState): EventBody[] {
  if (next.kind !== "group") return [];
  const was = prev?.fields.state ?? null;
  const now = next.fields.state;
  if (was === now) return [];
  const { group, subsystem, role } = next.key;
  const f = next.fields;
  const out: EventBody[] = [];
  if (now === "suspended") out.push({ kind: "suspension", action: "occur", group, subsystem, role, generation: f.generation, reason: f.reason, by: f.by });
  if (role !== "secondary") return out;
  if (now === "takeover") out.push({ kind: "takeover", action: "occur", group, subsystem, generation: f.generation, ts: f.ts });
  if (now === "resyncing") out.push({ kind: "resync", action: "start", group, subsystem, generation: f.generation, floor: f.ts });
  // A resync ends at its barrier (the group is active again) or is cut short (suspended, taken over).
  if (was === "resyncing") out.push({ kind: "resync", action: "end", group, subsystem, generation: f.generation, state: now });
  return out;
}

/**
 * Follows one subsystem's objects: `next(view, nowMs)` gives the events from
 * the last view to this one, `exists()` the current objects.
 */
export class StateTracker {
  private objects: Map<string, ObjectState>;
  /** Per primary group copying: when its last progress went out, and its last figures. */
  private readonly copies = new Map<string, { atMs: number; copy: CopyStatus; generation: number }>();

  constructor(view: EventView, nowMs: number) {
    this.objects = objectsOf(view);
    for (const g of view.primary?.groups ?? []) if (g.copy) this.copies.set(g.name, { atMs: nowMs - RESYNC_PROGRESS_INTERVAL_MS, copy: g.copy, generation: g.generation });
  }

  exists(): EventBody[] {
    return existsOf(this.objects);
  }

  next(view: EventView, nowMs: number): EventBody[] {
    const next = objectsOf(view);
    const out: EventBody[] = [];
    for (const [k, o] of next) {
      const prev = this.objects.get(k);
      if (!prev) out.push(body(o.kind, "create", o.key, o.fields));
      else if (!sameFields(prev.fields, o.fields)) out.push(body(o.kind, "change", o.key, o.fields));
      else continue;
      out.push(...occurrences(prev, o));
    }
    for (const [k, o] of this.objects) if (!next.has(k)) out.push(body(o.kind, "destroy", o.key, {}));
    this.objects = next;
    out.push(...this.progress(view, nowMs));
    return out;
  }

  /** A copying primary's progress, at most once per interval, and once more when its copy is done. */
  private progress(view: EventView, nowMs: number): EventBody[] {
    const out: EventBody[] = [];
    const id = view.subsystem;
    const groups = view.primary?.groups ?? [];
    for (const g of groups) {
      if (!g.copy) continue;
      const last = this.copies.get(g.name);
      if (last && nowMs - last.atMs < RESYNC_PROGRESS_INTERVAL_MS && last.generation === g.generation) {
        last.copy = g.copy;
        continue;
      }
      this.copies.set(g.name, { atMs: nowMs, copy: g.copy, generation: g.generation });
      out.push({ kind: "resync", action: "progress", group: g.name, subsystem: id, generation: g.generation, phase: g.copy.phase, doneBlocks: g.copy.doneBlocks, totalBlocks: g.copy.totalBlocks });
    }
    for (const [name, last] of this.copies) {
      const g = groups.find((x) => x.name === name);
      if (g?.copy) continue;
      this.copies.delete(name);
      // The copy is over (done, or cut short: the group's change line says which).
      out.push({ kind: "resync", action: "progress", group: name, subsystem: id, generation: last.generation, phase: g?.state === "active" ? "done" : "stopped", doneBlocks: g?.state === "active" ? last.copy.totalBlocks : last.copy.doneBlocks, totalBlocks: last.copy.totalBlocks });
    }
    return out;
  }
}

// How `tidemark events` prints an event: one line each, text in the manner
// of `drbdsetup events2 --timestamps` (time, action, kind, key:value...) or
// one JSON object (docs/events.md). Pure.
import { EVENT_KINDS, isEventKind, type TidemarkEvent } from "./kinds.ts";

/** The fields every event has; the rest are the kind's key and state. */
const FRAME_FIELDS = new Set(["source", "incarnation", "seq", "timeMs", "kind", "action"]);

function textValue(v: unknown): string {
  if (typeof v !== "string") return typeof v === "number" || typeof v === "boolean" ? String(v) : JSON.stringify(JSON.stringify(v));
  // Bare when it cannot be misread, else quoted as JSON.
  return /^[^\s"':]+$/.test(v) ? v : JSON.stringify(v);
}

/** `2026-12-03T23:40:00.123Z change group group:C1 role:secondary ... source:ss3 seq:17`; null fields are left out. */
export function eventText(e: TidemarkEvent): string {
  const key: readonly string[] = isEventKind(e.kind) ? EVENT_KINDS[e.kind].key : [];
  const fields = Object.keys(e).filter((k) => !FRAME_FIELDS.has(k) && !key.includes(k));
  const parts = [new Date(e.timeMs).toISOString(), e.action, e.kind];
  for (const k of [...key, ...fields]) {
    const v = e[k];
    if (v !== null && v !== undefined) parts.push(`${k}:${textValue(v)}`);
  }
  parts.push(`source:${e.source}`, `seq:${e.seq}`);
  return parts.join(" ");
}

/** One JSON object: `time` (ISO) first, then the event's fields as they travel. */
export function eventJson(e: TidemarkEvent): string {
  return JSON.stringify({ time: new Date(e.timeMs).toISOString(), ...e });
}

/** The line after every source's `exists` lines, as `drbdsetup events2` ends its state dump with `exists -`. */
export function existsEndLine(json: boolean, timeMs: number): string {
  return json ? JSON.stringify({ time: new Date(timeMs).toISOString(), timeMs, action: "exists", kind: "-" }) : `${new Date(timeMs).toISOString()} exists -`;
}

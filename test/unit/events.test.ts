// The event model (appliance/events): the kinds table and docs/events.md
// agree, the hub numbers events and bounds its subscribers, and a
// subsystem's state changes become the object and occurrence events
// docs/events.md promises, in order.
import fs from "node:fs";
import path from "node:path";
import { Writable } from "node:stream";
import { fileURLToPath } from "node:url";
import pino from "pino";
import { describe, expect, it } from "vitest";
import { EVENT_KINDS, actionFits, type TidemarkEvent } from "../../appliance/events/kinds.ts";
import { EventHub, type EventSink } from "../../appliance/events/hub.ts";
import { StateTracker, RESYNC_PROGRESS_INTERVAL_MS, type EventView } from "../../appliance/events/state-events.ts";
import { eventText, eventJson } from "../../appliance/events/format.ts";

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");

function logCapture() {
  const lines: Record<string, unknown>[] = [];
  const stream = new Writable({
    write(chunk: Buffer, _enc, cb) {
      for (const l of chunk.toString().split("\n").filter(Boolean)) lines.push(JSON.parse(l) as Record<string, unknown>);
      cb();
    },
  });
  return { logger: pino({ level: "info" }, stream), lines };
}

function sink(peer: string, buffered: () => number) {
  const got: TidemarkEvent[] = [];
  let closed = false;
  const s: EventSink = { peer, send: (e) => got.push(e), bufferedBytes: buffered, close: () => (closed = true) };
  return { s, got, closed: () => closed };
}

type Pg = NonNullable<EventView["primary"]>["groups"][number];
type Sg = NonNullable<EventView["secondary"]>[number];

function view(o: { pg?: Partial<Pg>; sg?: Partial<Sg>; linkUp?: boolean } = {}): EventView {
  const pg = { name: "C1", state: "active", reason: null, suspendedBy: null, bitmapBlocks: 0, pending: 0, lastSyncT: "0", generation: 1, copy: null, ...o.pg } as Pg;
  const sg = { name: "C1", generation: 1, state: "active", reason: null, suspendedBy: null, synchronizedTs: null, ...o.sg } as Sg;
  return {
    subsystem: 1,
    pid: 42,
    disk: "ok",
    directions: { C1: "forward" },
    primary: {
      lastStamp: "0",
      writes: 0,
      writeBytes: 0,
      pending: 0,
      journal: { entries: 0, bytes: 0, hotRegions: 0 },
      groups: [pg],
      links: [{ secondary: 3, state: o.linkUp === false ? "backoff" : "up", sentSeq: 0, ackedSeq: 0, bytesInFlight: 0, lastError: o.linkUp === false ? "ECONNREFUSED" : null }],
      volumes: [{ name: "p1a", group: "C1", secondary: 3, target: "s3a", failed: null }],
      pendingCopies: [],
    },
    secondary: [sg],
  };
}

describe("events: kinds", () => {
  it("events kinds: docs/events.md's Kinds table is EVENT_KINDS row for row (kind, shape, key, meaning)", () => {
    const doc = fs.readFileSync(path.join(ROOT, "docs/events.md"), "utf8");
    const section = doc.slice(doc.indexOf("## Kinds"), doc.indexOf("## JSON"));
    const rows = [...section.matchAll(/^\| `([a-z-]+)` \| (object|occurrence) \| (.*?) \| (.*) \|$/gm)].map((m) => [m[1], m[2], m[3], m[4]]);
    const code = Object.entries(EVENT_KINDS).map(([k, v]) => [k, v.shape, v.key.map((x) => `\`${x}\``).join(", "), v.doc]);
    expect(rows).toEqual(code);
  });

  it("events kinds: an action fits only its kind's shape", () => {
    expect(actionFits("group", "change")).toBe(true);
    expect(actionFits("group", "occur")).toBe(false);
    expect(actionFits("takeover", "occur")).toBe(true);
    expect(actionFits("takeover", "exists")).toBe(false);
  });
});

describe("events: hub", () => {
  it("events hub: seqs rise by one per event; a subscriber past its buffer bound is dropped with one log line naming it", () => {
    const { logger, lines } = logCapture();
    let now = 1000;
    const hub = new EventHub({ source: "ss1", incarnation: "1-1", nowMs: () => now, logger, subscriberBufferBytesMax: 100 });
    let slowBytes = 0;
    const fast = sink("fast:1", () => 0);
    const slow = sink("slow:2", () => slowBytes);
    hub.subscribe(fast.s);
    hub.subscribe(slow.s);
    hub.emit({ kind: "link", action: "change", primary: 1, secondary: 3, state: "down" });
    now = 2000;
    slowBytes = 101;
    hub.emit({ kind: "link", action: "change", primary: 1, secondary: 3, state: "up" });
    hub.emit({ kind: "link", action: "change", primary: 1, secondary: 3, state: "down" });
    expect(fast.got.map((e) => e.seq)).toEqual([1, 2, 3]);
    expect(fast.got[1]).toMatchObject({ source: "ss1", incarnation: "1-1", timeMs: 2000, state: "up" });
    expect(slow.got.map((e) => e.seq)).toEqual([1]);
    expect(slow.closed()).toBe(true);
    expect(hub.subscribers).toBe(1);
    const drops = lines.filter((l) => l.msg === "event subscriber dropped: it does not read its events");
    expect(drops).toHaveLength(1);
    expect(drops[0]).toMatchObject({ peer: "slow:2", bufferBytesMax: 100 });
  });

  it("events hub: past subscribersMax a subscribe is refused with TM_EVENTS_SUBSCRIBERS", () => {
    const { logger } = logCapture();
    const hub = new EventHub({ source: "ss1", incarnation: "1-1", nowMs: () => 0, logger, subscribersMax: 2 });
    const off = hub.subscribe(sink("a", () => 0).s);
    hub.subscribe(sink("b", () => 0).s);
    expect(() => hub.subscribe(sink("c", () => 0).s)).toThrow(expect.objectContaining({ code: "TM_EVENTS_SUBSCRIBERS" }));
    off();
    expect(() => hub.subscribe(sink("c", () => 0).s)).not.toThrow();
  });

  it("events hub: an action that does not fit its kind is a bug at the emitting site", () => {
    const hub = new EventHub({ source: "ss1", incarnation: "1-1", nowMs: () => 0, logger: logCapture().logger });
    expect(() => hub.emit({ kind: "group", action: "occur" })).toThrow(/does not fit/);
  });
});

describe("events: a subsystem's state changes", () => {
  it("events state: exists lists the subsystem, groups in each role, the link and the pair", () => {
    const t = new StateTracker(view(), 0);
    const ex = t.exists();
    expect(ex.map((e) => `${e.action} ${e.kind}`)).toEqual(["exists subsystem", "exists group", "exists link", "exists pair", "exists group"]);
    expect(ex.find((e) => e.kind === "pair")).toMatchObject({ volume: "p1a", state: "paired", target: "s3a" });
  });

  it("events state: suspension, takeover and resync start/end come after the group's change, in the order they happen", () => {
    const t = new StateTracker(view(), 0);
    expect(t.next(view(), 100)).toEqual([]);
    const s = t.next(view({ sg: { state: "suspended", generation: 2, reason: "maintenance", suspendedBy: "admin", synchronizedTs: "5" } }), 200);
    expect(s.map((e) => `${e.action} ${e.kind}`)).toEqual(["change group", "occur suspension"]);
    expect(s[1]).toMatchObject({ group: "C1", role: "secondary", generation: 2, reason: "maintenance", by: "admin" });
    const tk = t.next(view({ sg: { state: "takeover", generation: 3, synchronizedTs: "7" } }), 300);
    expect(tk.map((e) => `${e.action} ${e.kind}`)).toEqual(["change group", "occur takeover"]);
    expect(tk[1]).toMatchObject({ ts: "7", generation: 3 });
    const rs = t.next(view({ sg: { state: "resyncing", generation: 4, synchronizedTs: "7" } }), 400);
    expect(rs.map((e) => `${e.action} ${e.kind}`)).toEqual(["change group", "start resync"]);
    expect(rs[1]).toMatchObject({ floor: "7" });
    const end = t.next(view({ sg: { state: "active", generation: 4 } }), 500);
    expect(end.map((e) => `${e.action} ${e.kind}`)).toEqual(["change group", "end resync"]);
    expect(end[1]).toMatchObject({ state: "active", generation: 4 });
  });

  it("events state: a link going down changes the link and the pair; the occurrence-free change carries the error", () => {
    const t = new StateTracker(view(), 0);
    const down = t.next(view({ linkUp: false }), 100);
    expect(down).toEqual([
      expect.objectContaining({ kind: "link", action: "change", state: "down", error: "ECONNREFUSED" }),
      expect.objectContaining({ kind: "pair", action: "change", state: "link-down" }),
    ]);
    expect(t.next(view(), 200).map((e) => `${e.kind} ${String(e.state)}`)).toEqual(["link up", "pair paired"]);
  });

  it(`events state: a copy's progress at most once per ${RESYNC_PROGRESS_INTERVAL_MS} ms, and once more when done`, () => {
    const copy = (done: number) => ({ phase: "copying" as const, totalBlocks: 100, doneBlocks: done, dataBytes: 0, zeroBytes: 0, elapsedMs: 0, bytesPerSecond: 0, etaMs: null });
    const t = new StateTracker(view(), 0);
    const p1 = t.next(view({ pg: { state: "copying", copy: copy(10) } }), 1000).filter((e) => e.kind === "resync");
    expect(p1).toEqual([expect.objectContaining({ action: "progress", doneBlocks: 10, totalBlocks: 100 })]);
    expect(t.next(view({ pg: { state: "copying", copy: copy(20) } }), 1500).filter((e) => e.kind === "resync")).toEqual([]);
    expect(t.next(view({ pg: { state: "copying", copy: copy(60) } }), 2100).filter((e) => e.kind === "resync")).toEqual([expect.objectContaining({ doneBlocks: 60 })]);
    const done = t.next(view(), 2200).filter((e) => e.kind === "resync");
    expect(done).toEqual([expect.objectContaining({ action: "progress", phase: "done", doneBlocks: 100 })]);
  });
});

describe("events: lines", () => {
  it("events lines: text puts the key first, leaves nulls out and quotes what has spaces; JSON has time first", () => {
    const e = { kind: "group", action: "change", group: "C1", role: "secondary", subsystem: 3, state: "suspended", reason: "planned maintenance", by: null, source: "ss3", incarnation: "1-2", seq: 7, timeMs: 0 } as TidemarkEvent;
    expect(eventText(e)).toBe('1970-01-01T00:00:00.000Z change group group:C1 role:secondary subsystem:3 state:suspended reason:"planned maintenance" source:ss3 seq:7');
    expect(Object.keys(JSON.parse(eventJson(e)) as object)[0]).toBe("time");
  });
});

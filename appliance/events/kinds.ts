// The event model of `tidemark events` (docs/events.md), as data. Pure.
// An event is one state change (or the state of one object at subscription,
// "exists") from one source: a subsystem (`ss3`) or the RCM (`rcm`). Each
// kind names its key fields, which say which object it is about; every other
// field is the state after the change. Adding a kind is one row of
// EVENT_KINDS (and one row of docs/events.md, which a test checks).

/**
 * Objects (subsystem, group, pair, link) are described by `exists` at
 * subscription, then `create`, `change`, `destroy`. Occurrences (a
 * suspension, a takeover, a resync, a procedure of the RCM, a verify) have a
 * `start`, `progress` and `end`, or one `occur` when they are a single step.
 */
export const OBJECT_ACTIONS = ["exists", "create", "change", "destroy"] as const;
export const OCCURRENCE_ACTIONS = ["start", "progress", "end", "occur"] as const;
export type EventAction = (typeof OBJECT_ACTIONS)[number] | (typeof OCCURRENCE_ACTIONS)[number];

export interface EventKind {
  /** "object": exists/create/change/destroy; "occurrence": start/progress/end/occur. */
  shape: "object" | "occurrence";
  /** The fields that say which object or occurrence this is; printed first. */
  key: readonly string[];
  /** One table-safe line for docs/events.md. */
  doc: string;
}

export const EVENT_KINDS = {
  connection: { shape: "object", key: ["to"], doc: "the CLI's own connection to a source `to` (`ss<id>`, `rcm`): `state` connected or lost, `error`, `peerIncarnation`, `restarted` (true when the source came back as a new process); its `source` is `cli`" },
  subsystem: { shape: "object", key: ["subsystem"], doc: "a subsystem process as it reports itself: `state` up, `pid`, `disk` (ok or state-disk-full); whether the CLI reaches it is the `connection` kind" },
  group: { shape: "object", key: ["group", "role", "subsystem"], doc: "a consistency group on one subsystem in one role: `state`, `generation`, `reason`, `by` (who suspended it), `ts` (the synchronized time a secondary rests at), `direction`" },
  pair: { shape: "object", key: ["volume", "subsystem"], doc: "a primary volume and its secondary as the primary sees it: `group`, `target`, `secondary`, `state` (paired, link-down, copying, copy-pending, failed, or the group's resting state)" },
  link: { shape: "object", key: ["primary", "secondary"], doc: "a replication link from a primary: `state` up or down, `error` (the last error while down)" },
  suspension: { shape: "occurrence", key: ["group", "subsystem"], doc: "a group was suspended on a subsystem (`occur`): `generation`, `reason`, `by`, `role`" },
  takeover: { shape: "occurrence", key: ["group", "subsystem"], doc: "a secondary took the group over (`occur`): `generation`, `ts` (the synchronized time Ts its volumes hold)" },
  resync: { shape: "occurrence", key: ["group", "subsystem"], doc: "a resync or initial copy: `start` from each secondary (`generation`, `floor`: T_old, the image kept until the barrier) and `end` (`state`: active once past the barrier, else where a suspension or takeover left it); `progress` from each copying primary at most once a second (`doneBlocks`, `totalBlocks`, `phase`) and its last `progress` when its copy is done" },
  verify: { shape: "occurrence", key: ["group", "volume", "subsystem"], doc: "an online verify of one primary volume (docs/verify.md), from its primary: `start` (`runTs`, `startOffset`, `endOffset`, `resumed`), `progress` at most once a second (`nextOffset`, `endOffset`, `bytesPerSecond`), `end` (`outcome` done or paused, `blocks`, `ms`, `lastTs`)" },
  mismatch: { shape: "occurrence", key: ["group", "volume", "subsystem"], doc: "a block a secondary found different from its primary's at the same stamp during a verify (`occur`): `offset`, `ts`, `runTs`, `primaryHash`, `secondaryHash`; the block is in the secondary's bitmap for the next resync" },
  procedure: { shape: "occurrence", key: ["group"], doc: "a procedure of the RCM (`start`, `end`): `mode` (suspend, takeover, dry-run, resync, swap), `by`, `reason`; at `end` `ok`, `ts` or `error`" },
} as const satisfies Record<string, EventKind>;

export type EventKindName = keyof typeof EVENT_KINDS;

/** A field's value: what JSON carries (bigints travel as decimal strings). */
export type EventValue = string | number | boolean | null;

/** What a source emits; the hub adds source, seq and time. */
export interface EventBody {
  kind: EventKindName;
  action: EventAction;
  [field: string]: EventValue | undefined;
}

/** One event as it travels (docs/events.md, "JSON"). */
export interface TidemarkEvent extends EventBody {
  /** `ss<id>` or `rcm`. */
  source: string;
  /** The source process's incarnation: its start time in ms and pid (`1796316464874-4242`); a restart changes it. */
  incarnation: string;
  /** Per source and incarnation, +1 per change; `exists` lines carry the seq of the last change they include. */
  seq: number;
  /** Wall-clock time at the source, ms since the epoch. */
  timeMs: number;
}

export function isEventKind(k: unknown): k is EventKindName {
  return typeof k === "string" && Object.hasOwn(EVENT_KINDS, k);
}

/** True when the action belongs to the kind's shape: a source's bug otherwise, and a peer's event is refused. */
export function actionFits(kind: EventKindName, action: unknown): action is EventAction {
  const actions: readonly string[] = EVENT_KINDS[kind].shape === "object" ? OBJECT_ACTIONS : OCCURRENCE_ACTIONS;
  return typeof action === "string" && actions.includes(action);
}

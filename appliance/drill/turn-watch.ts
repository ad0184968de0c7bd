// What one `status` sample says of the group a turn must leave alone (round.ts's turn phase):
// while another group on the same subsystems is turned, this group's primaries and secondaries
// must stay `active` and every link from its primaries to its secondaries must stay `up`, or
// come back within a bound: links are shared by every group of a pair of subsystems, and the
// turned group's fence on a secondary closes the links its primaries send it on.
// Pure: the subsystems' answers come in, the problems (one sentence each) and a tally go out.
import type { Answer } from "../cli/status-view.ts";

export interface WatchedPair {
  primary: { subsystemId: number; name: string };
  secondary: { subsystemId: number; name: string };
}

/** `link` names the link (`#1 -> #3`) when kind is link-down. */
export type HealthProblem = { kind: "unanswered" | "not-active" | "link-down"; what: string; link?: string };

/** The problems one sample shows for `group`, whose pairs are `pairs` (empty: it stayed as it should). */
export function groupHealth(group: string, pairs: readonly WatchedPair[], answers: ReadonlyMap<number, Answer>): HealthProblem[] {
  const out: HealthProblem[] = [];
  const seen = new Set<string>();
  const once = (p: HealthProblem) => {
    const key = `${p.kind} ${p.what}`;
    if (!seen.has(key)) out.push(p);
    seen.add(key);
  };
  for (const p of pairs) {
    const pa = answers.get(p.primary.subsystemId);
    const sa = answers.get(p.secondary.subsystemId);
    if (!pa?.ok) once({ kind: "unanswered", what: `primary #${p.primary.subsystemId} did not answer status (${pa ? pa.error : "not asked"})` });
    if (!sa?.ok) once({ kind: "unanswered", what: `secondary #${p.secondary.subsystemId} did not answer status (${sa ? sa.error : "not asked"})` });
    if (pa?.ok) {
      const pg = pa.value.primary?.groups.find((g) => g.name === group);
      if (pg?.state !== "active") once({ kind: "not-active", what: `primary #${p.primary.subsystemId}: ${group} ${pg ? `${pg.state}${pg.reason ? ` (${pg.reason})` : ""}` : "not a primary group there"}` });
      const link = pa.value.primary?.links.find((l) => l.secondary === p.secondary.subsystemId);
      const name = `#${p.primary.subsystemId} -> #${p.secondary.subsystemId}`;
      if (link?.state !== "up") once({ kind: "link-down", link: name, what: `link #${p.primary.subsystemId} -> #${p.secondary.subsystemId} ${link ? link.state : "absent"}${link?.lastError ? ` (${link.lastError})` : ""}` });
    }
    if (sa?.ok) {
      const sg = sa.value.secondary?.find((g) => g.name === group);
      if (sg?.state !== "active") once({ kind: "not-active", what: `secondary #${p.secondary.subsystemId}: ${group} ${sg ? `${sg.state}${sg.reason ? ` (${sg.reason})` : ""}` : "not a secondary group there"}` });
    }
  }
  return out;
}

/**
 * Samples taken and problems seen over a turn. A link outage runs from the first sample that
 * shows the link not up to the first that shows it up again (or to the last sample). `first`
 * keeps the earliest few sentences of states and silences, `linkFirst` of link outages.
 */
export interface WatchTally {
  samples: number;
  unanswered: number;
  notActive: number;
  /** Samples with some link not up. */
  linkDown: number;
  /** Outages seen, and the longest, in milliseconds between samples. */
  linkOutages: number;
  longestLinkOutageMs: number;
  first: string[];
  linkFirst: string[];
  /** Link name -> when its outage under way was first seen. */
  downSince: Map<string, number>;
  /** Every link seen down at least once. */
  everDown: Set<string>;
  lastAtMs: number;
}

export const WATCH_FIRST_KEPT = 5;

export function newTally(): WatchTally {
  return { samples: 0, unanswered: 0, notActive: 0, linkDown: 0, linkOutages: 0, longestLinkOutageMs: 0, first: [], linkFirst: [], downSince: new Map(), everDown: new Set(), lastAtMs: 0 };
}

export function tallySample(t: WatchTally, problems: readonly HealthProblem[], atMs: number): void {
  t.samples++;
  t.lastAtMs = atMs;
  if (problems.some((p) => p.kind === "unanswered")) t.unanswered++;
  if (problems.some((p) => p.kind === "not-active")) t.notActive++;
  const down = new Set(problems.flatMap((p) => (p.kind === "link-down" && p.link ? [p.link] : [])));
  if (down.size > 0) t.linkDown++;
  for (const link of down) {
    t.everDown.add(link);
    if (t.downSince.has(link)) continue;
    t.downSince.set(link, atMs);
    t.linkOutages++;
  }
  for (const [link, since] of t.downSince) {
    if (down.has(link)) continue;
    t.downSince.delete(link);
    t.longestLinkOutageMs = Math.max(t.longestLinkOutageMs, atMs - since);
  }
  for (const p of problems) {
    const into = p.kind === "link-down" ? t.linkFirst : t.first;
    if (into.length < WATCH_FIRST_KEPT) into.push(`+${atMs} ms ${p.what}`);
  }
}

/** Ends the tally: a link still down at the last sample counts as down until then. */
export function closeTally(t: WatchTally): WatchTally {
  for (const since of t.downSince.values()) t.longestLinkOutageMs = Math.max(t.longestLinkOutageMs, t.lastAtMs - since);
  return t;
}

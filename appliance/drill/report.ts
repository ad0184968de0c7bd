// What a drill round did and found, and the drill's summary, as values and as the text an
// admin reads. Pure: the rounds' facts come in, strings and numbers go out.
import type { ViolationCounts } from "./chain-checker.ts";

export interface RoundEvent {
  /** Milliseconds since the round's write phase started (negative: during the preparation). */
  atMs: number;
  what: string;
}

export interface GroupChains {
  group: string;
  chains: number;
  length: number;
  /** Sums over the group's chains. */
  acked: number;
  issued: number;
  /** Positions present on the secondaries after the takeover (sum of prefix lengths). */
  onSecondaries: number;
  prefixLengths: number[];
  counts: ViolationCounts;
}

export interface GroupTakeover {
  group: string;
  ts: string;
  generation: number;
  attempts: number;
  elapsedMs: number;
  /** Primaries the RCM could not reach (down at the takeover: the disaster case). */
  primariesDown: number[];
}

export interface GroupResync {
  group: string;
  /** What ran: `resync` (forward), `resync --reverse` (failback) or `swap` (back again); `resync` when absent. */
  command?: "resync" | "resync --reverse" | "swap";
  elapsedMs: number;
  /** What the resync command said, in one line. */
  said: string;
}

/**
 * The turn phase of a two-group shape (round.ts): `group` is taken over, failed back with
 * `resync --reverse` and swapped back alone, while hosts write `other.group` at full rate.
 */
export interface TurnReport {
  group: string;
  takeover: GroupTakeover | null;
  /** The turned group's chains on its secondaries after its takeover. */
  chains: GroupChains | null;
  resyncs: GroupResync[];
  cmpAfterFailback?: { pairs: number; identical: number };
  /** cmp of the turned group's pairs after the swap back. */
  cmp: { pairs: number; identical: number };
  /** The turned group's chains on its primaries: exactly the takeover's prefixes after the failback and the swap. */
  completeOnPrimaries: { acked: number; ok: boolean };
  other: {
    group: string;
    /** Its chains, checked on its secondaries after it was quiesced (prefix lengths: the positions there). */
    chains: GroupChains | null;
    load: { writes: number; bytes: number };
    /** Host writes of the group that failed or were refused (each retried; any is a violation). */
    writeFailures: number;
    /** `status` samples taken during the turn, and those that showed it not active, a link down, or a subsystem silent. */
    samples: number;
    notActive: number;
    linkDown: number;
    unanswered: number;
    /** Link outages seen (a link not up, then up again), and the longest, from sample to sample. */
    linkOutages: number;
    longestLinkOutageMs: number;
    /** cmp of its pairs after it was quiesced. */
    cmp: { pairs: number; identical: number };
    /** Every acknowledged chain write on its primaries. */
    completeOnPrimaries: boolean;
  };
  elapsedMs: number;
}

export interface RoundReport {
  round: number;
  seed: number;
  ok: boolean;
  elapsedMs: number;
  events: RoundEvent[];
  kills: { primary: number; secondary: number; rcm: number };
  linkFaults: { cut: number; hang: number };
  takeovers: GroupTakeover[];
  chains: GroupChains[];
  secondaryWrites: number;
  load: { writes: number; bytes: number };
  resyncs: GroupResync[];
  /** How the group went home: a forward resync, or a failback (`resync --reverse`) and a swap back (schedule.ts). */
  wayBack: "forward" | "failback";
  /** cmp at the end of the round: after the resync, or after the swap back. */
  cmp: { pairs: number; identical: number };
  /** Failback rounds: cmp after the reverse resync, before the swap back. */
  cmpAfterFailback?: { pairs: number; identical: number };
  /**
   * Forward: chain writes acknowledged to the host and found on the primary images after the
   * resync. Failback: the chain writes the takeover left on the secondaries, found on the primary
   * images exactly as prefixes of the same lengths (later acknowledged writes are lost by design).
   */
  completeOnPrimaries: { acked: number; ok: boolean };
  violations: string[];
  /** Milliseconds spent in each step of the round (paired, clear, write, takeover, check, dr-writes, restore, resync, compare). */
  stepsMs: Record<string, number>;
  /** Set when the round could not finish (a step failed or the drill was stopped): what it was doing. */
  abortedAt?: string;
  /** The two-group shape's turn phase, after the round's own steps. */
  turn?: TurnReport;
}

export interface DrillSummary {
  rounds: number;
  passed: number;
  failedSeeds: number[];
  kills: { primary: number; secondary: number; rcm: number };
  linkFaults: { cut: number; hang: number };
  takeovers: number;
  /** Takeovers with at least one primary down (the disaster case). */
  takeoversWithPrimaryDown: number;
  /** Rounds that went home by failback (`resync --reverse`, then `swap`). */
  failbacks: number;
  /** Turn phases run (two-group shape), and the writes hosts made to the other group meanwhile. */
  turns: number;
  turnOtherWrites: number;
  chainWritesAcked: number;
  chainWritesOnSecondaries: number;
  loadWrites: number;
  secondaryWrites: number;
  violations: number;
  elapsedMs: number;
}

export function summarize(reports: readonly RoundReport[], elapsedMs: number): DrillSummary {
  const sum = (f: (r: RoundReport) => number) => reports.reduce((n, r) => n + f(r), 0);
  return {
    rounds: reports.length,
    passed: reports.filter((r) => r.ok).length,
    failedSeeds: reports.filter((r) => !r.ok).map((r) => r.seed),
    kills: { primary: sum((r) => r.kills.primary), secondary: sum((r) => r.kills.secondary), rcm: sum((r) => r.kills.rcm) },
    linkFaults: { cut: sum((r) => r.linkFaults.cut), hang: sum((r) => r.linkFaults.hang) },
    takeovers: sum((r) => r.takeovers.length),
    takeoversWithPrimaryDown: sum((r) => r.takeovers.filter((t) => t.primariesDown.length > 0).length),
    failbacks: reports.filter((r) => r.wayBack === "failback").length,
    turns: reports.filter((r) => r.turn?.takeover).length,
    turnOtherWrites: sum((r) => (r.turn ? (r.turn.other.chains?.acked ?? 0) + r.turn.other.load.writes : 0)),
    chainWritesAcked: sum((r) => r.chains.reduce((n, c) => n + c.acked, 0)),
    chainWritesOnSecondaries: sum((r) => r.chains.reduce((n, c) => n + c.onSecondaries, 0)),
    loadWrites: sum((r) => r.load.writes),
    secondaryWrites: sum((r) => r.secondaryWrites),
    violations: sum((r) => r.violations.length),
    elapsedMs,
  };
}

const secs = (ms: number) => `${(ms / 1000).toFixed(1)} s`;
const mib = (bytes: number) => `${(bytes / 1048576).toFixed(1)} MiB`;

function spread(xs: readonly number[]): string {
  if (xs.length === 0) return "none";
  const s = [...xs].sort((a, b) => a - b);
  return `${s[0]}..${s[s.length - 1]} (median ${s[Math.floor(s.length / 2)]})`;
}

export function renderRound(r: RoundReport, replay: string): string {
  const out: string[] = [];
  const steps = Object.entries(r.stepsMs).map(([k, ms]) => `${k} ${(ms / 1000).toFixed(1)}`);
  out.push(`round ${r.round} (seed ${r.seed}) ${r.ok ? "OK" : "FAILED"} in ${secs(r.elapsedMs)}${steps.length ? ` (${steps.join(", ")})` : ""}`);
  for (const e of r.events) out.push(`  ${`+${e.atMs} ms`.padStart(10)}  ${e.what}`);
  for (const t of r.takeovers) {
    out.push(
      `  takeover ${t.group}: Ts ${t.ts}, generation ${t.generation}, ${t.elapsedMs} ms${t.attempts > 1 ? ` (${t.attempts} attempts)` : ""}` +
        `${t.primariesDown.length > 0 ? `; primaries down: ${t.primariesDown.map((p) => `#${p}`).join(", ")}` : ""}`,
    );
  }
  for (const c of r.chains) {
    out.push(
      `  chains ${c.group}: ${c.chains} x ${c.length}; ${c.acked} writes acknowledged, ${c.issued} issued, ${c.onSecondaries} on the secondaries; ` +
        `prefix lengths ${spread(c.prefixLengths)}; gaps ${c.counts.gaps}, torn ${c.counts.torn}, foreign ${c.counts.foreign}, from the future ${c.counts.future}`,
    );
  }
  if (r.takeovers.length > 0) out.push(`  host writes on the taken-over secondaries: ${r.secondaryWrites}`);
  for (const s of r.resyncs) out.push(`  ${s.command ?? "resync"} ${s.group}: ${secs(s.elapsedMs)}${s.said ? `: ${s.said}` : ""}`);
  if (r.cmpAfterFailback && r.cmpAfterFailback.pairs > 0) out.push(`  after the reverse resync and quiesce: cmp ${r.cmpAfterFailback.identical} of ${r.cmpAfterFailback.pairs} pairs identical`);
  if (r.cmp.pairs > 0 && r.wayBack === "failback") {
    out.push(
      `  after the swap back and quiesce: cmp ${r.cmp.identical} of ${r.cmp.pairs} pairs identical; chains on the primaries: ${r.completeOnPrimaries.ok ? "exactly" : "NOT"} ` +
        `the takeover's prefixes (${r.completeOnPrimaries.acked} writes); load: ${r.load.writes} writes (${mib(r.load.bytes)}) acknowledged`,
    );
  } else if (r.cmp.pairs > 0) {
    out.push(
      `  after quiesce: cmp ${r.cmp.identical} of ${r.cmp.pairs} pairs identical; chains on the primaries: ${r.completeOnPrimaries.ok ? "every" : "NOT every"} ` +
        `acknowledged write present (${r.completeOnPrimaries.acked}); load: ${r.load.writes} writes (${mib(r.load.bytes)}) acknowledged`,
    );
  }
  if (r.turn) out.push(...renderTurn(r.turn));
  if (r.abortedAt) out.push(`  stopped while: ${r.abortedAt}`);
  if (!r.ok) {
    out.push(`  VIOLATIONS (${r.violations.length}):`);
    for (const v of r.violations) out.push(`    - ${v}`);
    out.push(`  replay: ${replay}`);
  }
  return out.join("\n");
}

export function renderSummary(s: DrillSummary, replayOf: (seed: number) => string): string {
  const out: string[] = [];
  out.push(
    `drill: ${s.rounds} round${s.rounds === 1 ? "" : "s"} in ${secs(s.elapsedMs)}: ${s.passed} passed, ${s.rounds - s.passed} failed; ` +
      `${s.violations} violation${s.violations === 1 ? "" : "s"}`,
  );
  out.push(
    `  kill -9: ${s.kills.primary} primaries, ${s.kills.secondary} secondaries, ${s.kills.rcm} RCMs; links cut ${s.linkFaults.cut}, hung ${s.linkFaults.hang}; ` +
      `${s.takeovers} takeovers (${s.takeoversWithPrimaryDown} with a primary down, ${s.failbacks} failed back and swapped)`,
  );
  out.push(
    `  chain writes: ${s.chainWritesAcked} acknowledged, ${s.chainWritesOnSecondaries} on the secondaries at takeover; ` +
      `load writes ${s.loadWrites}; host writes on taken-over secondaries ${s.secondaryWrites}`,
  );
  if (s.turns > 0) out.push(`  turns of one group while another was written: ${s.turns}; writes to the other group meanwhile: ${s.turnOtherWrites}`);
  for (const seed of s.failedSeeds) out.push(`  FAILED seed ${seed}: replay with ${replayOf(seed)}`);
  return out.join("\n");
}

function renderTurn(t: TurnReport): string[] {
  const out: string[] = [];
  const o = t.other;
  out.push(`  turn of ${t.group} alone while hosts wrote ${o.group}, ${secs(t.elapsedMs)}:`);
  if (t.takeover) out.push(`    takeover ${t.group}: Ts ${t.takeover.ts}, generation ${t.takeover.generation}, ${t.takeover.elapsedMs} ms`);
  if (t.chains) {
    const c = t.chains;
    out.push(`    chains ${c.group}: ${c.acked} writes acknowledged, ${c.onSecondaries} on the secondaries; prefix lengths ${spread(c.prefixLengths)}; gaps ${c.counts.gaps}, torn ${c.counts.torn}, foreign ${c.counts.foreign}, from the future ${c.counts.future}`);
  }
  for (const s of t.resyncs) out.push(`    ${s.command ?? "resync"} ${s.group}: ${secs(s.elapsedMs)}${s.said ? `: ${s.said}` : ""}`);
  if (t.cmpAfterFailback) out.push(`    after the reverse resync: cmp ${t.cmpAfterFailback.identical} of ${t.cmpAfterFailback.pairs} pairs of ${t.group} identical`);
  if (t.cmp.pairs > 0) {
    out.push(`    after the swap back: cmp ${t.cmp.identical} of ${t.cmp.pairs} pairs of ${t.group} identical; chains on the primaries ${t.completeOnPrimaries.ok ? "exactly" : "NOT"} the takeover's prefixes (${t.completeOnPrimaries.acked} writes)`);
  }
  const chains = o.chains ? `${o.chains.acked} chain writes acknowledged (${o.chains.onSecondaries} on the secondaries after quiesce, gaps ${o.chains.counts.gaps}, torn ${o.chains.counts.torn}, foreign ${o.chains.counts.foreign}, from the future ${o.chains.counts.future}), ` : "";
  out.push(`    ${o.group} meanwhile: ${chains}${o.load.writes} load writes (${mib(o.load.bytes)}); ${o.writeFailures} failed or refused`);
  out.push(
    `    ${o.group} status: ${o.samples} samples; not active in ${o.notActive}, a subsystem silent in ${o.unanswered}, a link down in ${o.linkDown}` +
      ` (${o.linkOutages} outage${o.linkOutages === 1 ? "" : "s"}, the longest ${o.longestLinkOutageMs} ms)`,
  );
  if (o.cmp.pairs > 0) out.push(`    ${o.group} after quiesce: cmp ${o.cmp.identical} of ${o.cmp.pairs} pairs identical; every acknowledged chain write on the primaries: ${o.completeOnPrimaries ? "yes" : "NO"}`);
  return out;
}

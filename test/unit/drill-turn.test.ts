// The two-group shape and its turn phase's watch (appliance/drill/topology.ts, turn-watch.ts,
// report.ts): the shape puts A and B on shared subsystems and passes checkShape; one status
// sample of B names what is wrong (a state not active, a link not up, a silent subsystem); the
// tally measures link outages from sample to sample; the report shows the turn.
import { describe, expect, it } from "vitest";
import { parseConfig } from "../../config/schema.ts";
import type { Answer, SubsystemStatus } from "../../appliance/cli/status-view.ts";
import { renderRound, summarize, type RoundReport, type TurnReport } from "../../appliance/drill/report.ts";
import { checkShape, drillConfig, portsNeeded, SHAPES, TWO_GROUPS_SHAPE, DrillConfigError } from "../../appliance/drill/topology.ts";
import { closeTally, groupHealth, newTally, tallySample } from "../../appliance/drill/turn-watch.ts";

const ports = (n: number) => Array.from({ length: n }, (_, i) => 61000 + i);

const pairs = [
  { primary: { subsystemId: 1, name: "p1b" }, secondary: { subsystemId: 3, name: "s3b" } },
  { primary: { subsystemId: 2, name: "p2b" }, secondary: { subsystemId: 5, name: "s5b" } },
];

/** A status answer with only what groupHealth reads: B's state on either side, and the links. */
function answer(id: number, o: { primary?: string; secondary?: string; links?: Record<number, string> }): Answer {
  const value = {
    subsystem: id,
    primary: o.primary ? { groups: [{ name: "B", state: o.primary, reason: null }], links: Object.entries(o.links ?? {}).map(([s, state]) => ({ secondary: Number(s), state, lastError: null })) } : null,
    secondary: o.secondary ? [{ name: "B", state: o.secondary, reason: null }] : null,
  } as unknown as SubsystemStatus;
  return { ok: true, value };
}

function healthy(): Map<number, Answer> {
  return new Map<number, Answer>([
    [1, answer(1, { primary: "active", links: { 3: "up", 4: "up", 5: "up" } })],
    [2, answer(2, { primary: "active", links: { 3: "up", 4: "up", 5: "up" } })],
    [3, answer(3, { secondary: "active" })],
    [5, answer(5, { secondary: "active" })],
  ]);
}

describe("drill turn", () => {
  it("drill turn: the two-group shape has A and B on primaries #1 and #2, a secondary subsystem (#3) shared, and a valid config", () => {
    expect(SHAPES["two-groups"]).toBe(TWO_GROUPS_SHAPE);
    checkShape(TWO_GROUPS_SHAPE, "two-groups");
    const topo = parseConfig(drillConfig({ shape: TWO_GROUPS_SHAPE, host: "127.0.0.1", ports: ports(portsNeeded(TWO_GROUPS_SHAPE)), clusterKeyFile: "/tmp/d/cluster.key", dataDir: "/tmp/d", volumeMiB: 8 }).config, "drill.json");
    const [a, b] = [topo.groups.get("A")!, topo.groups.get("B")!];
    expect(a.primaries).toEqual([1, 2]);
    expect(b.primaries).toEqual([1, 2]);
    expect(a.secondaries.filter((s) => b.secondaries.includes(s))).toEqual([3]);
    expect(TWO_GROUPS_SHAPE.turn).toEqual({ group: "A", whileWriting: "B" });
  });

  it("drill turn: a turn naming a group the shape lacks, or one group twice, is refused", () => {
    expect(() => checkShape({ ...TWO_GROUPS_SHAPE, turn: { group: "A", whileWriting: "A" } }, "x")).toThrow(DrillConfigError);
    expect(() => checkShape({ ...TWO_GROUPS_SHAPE, turn: { group: "A", whileWriting: "C" } }, "x")).toThrow("x: the turn needs two different groups of the shape, not A and C");
  });

  it("drill turn: a healthy sample shows nothing; a suspended secondary, a link in backoff and a silent primary are each named", () => {
    expect(groupHealth("B", pairs, healthy())).toEqual([]);
    const a = healthy();
    a.set(5, answer(5, { secondary: "suspended" }));
    a.set(1, answer(1, { primary: "active", links: { 3: "backoff" } }));
    a.set(2, { ok: false, error: "connect ECONNREFUSED" });
    expect(groupHealth("B", pairs, a)).toEqual([
      { kind: "link-down", link: "#1 -> #3", what: "link #1 -> #3 backoff" },
      { kind: "unanswered", what: "primary #2 did not answer status (connect ECONNREFUSED)" },
      { kind: "not-active", what: "secondary #5: B suspended" },
    ]);
  });

  it("drill turn: the tally counts outages and measures the longest from the first sample down to the first up; one down at the end counts to the end", () => {
    const t = newTally();
    const down = [{ kind: "link-down" as const, link: "#1 -> #3", what: "link #1 -> #3 backoff" }];
    tallySample(t, [], 0);
    tallySample(t, down, 100);
    tallySample(t, down, 200);
    tallySample(t, [], 350);
    tallySample(t, down, 400);
    closeTally(t);
    expect(t).toMatchObject({ samples: 5, linkDown: 3, linkOutages: 2, longestLinkOutageMs: 250, notActive: 0, unanswered: 0 });
    tallySample(t, down, 1900);
    closeTally(t);
    expect(t.longestLinkOutageMs).toBe(1500);
    expect(t.linkFirst[0]).toBe("+100 ms link #1 -> #3 backoff");
  });

  it("drill turn: the round report shows the turn of A and what B did meanwhile; the summary counts turns", () => {
    const turn: TurnReport = {
      group: "A",
      takeover: { group: "A", ts: "99", generation: 8, attempts: 1, elapsedMs: 700, primariesDown: [] },
      chains: { group: "A", chains: 16, length: 100, acked: 500, issued: 516, onSecondaries: 480, prefixLengths: [30, 30], counts: { torn: 0, foreign: 0, gaps: 0, future: 0, missing: 0 } },
      resyncs: [
        { group: "A", command: "resync --reverse", elapsedMs: 3000, said: "" },
        { group: "A", command: "swap", elapsedMs: 4000, said: "" },
      ],
      cmpAfterFailback: { pairs: 2, identical: 2 },
      cmp: { pairs: 2, identical: 2 },
      completeOnPrimaries: { acked: 480, ok: true },
      other: {
        group: "B",
        chains: { group: "B", chains: 16, length: 100, acked: 1600, issued: 1600, onSecondaries: 1600, prefixLengths: [100], counts: { torn: 0, foreign: 0, gaps: 0, future: 0, missing: 0 } },
        load: { writes: 3000, bytes: 50 << 20 },
        writeFailures: 0,
        samples: 60,
        notActive: 0,
        linkDown: 3,
        unanswered: 0,
        linkOutages: 4,
        longestLinkOutageMs: 450,
        cmp: { pairs: 2, identical: 2 },
        completeOnPrimaries: true,
      },
      elapsedMs: 16400,
    };
    const r = { round: 1, seed: 1, ok: true, elapsedMs: 1, events: [], kills: { primary: 0, secondary: 0, rcm: 0 }, linkFaults: { cut: 0, hang: 0 }, takeovers: [], chains: [], secondaryWrites: 0, load: { writes: 0, bytes: 0 }, resyncs: [], wayBack: "forward", cmp: { pairs: 0, identical: 0 }, completeOnPrimaries: { acked: 0, ok: true }, violations: [], stepsMs: {}, turn } satisfies RoundReport;
    const text = renderRound(r, "replay");
    expect(text).toContain("turn of A alone while hosts wrote B, 16.4 s:");
    expect(text).toContain("swap A: 4.0 s");
    expect(text).toContain("B meanwhile: 1600 chain writes acknowledged (1600 on the secondaries after quiesce, gaps 0, torn 0, foreign 0, from the future 0), 3000 load writes (50.0 MiB); 0 failed or refused");
    expect(text).toContain("B status: 60 samples; not active in 0, a subsystem silent in 0, a link down in 3 (4 outages, the longest 450 ms)");
    expect(summarize([r], 1)).toMatchObject({ turns: 1, turnOtherWrites: 4600 });
  });
});

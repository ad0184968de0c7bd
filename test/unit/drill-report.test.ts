// The drill's report (appliance/drill/report.ts): a round says what was killed when, Ts, the
// chain prefix lengths and the violation counts; a failed round lists its violations and the
// command that replays it; the summary adds the rounds up.
import { describe, expect, it } from "vitest";
import { renderRound, renderSummary, summarize, type RoundReport } from "../../appliance/drill/report.ts";

function round(o: Partial<RoundReport> = {}): RoundReport {
  return {
    round: 1,
    seed: 41,
    ok: true,
    elapsedMs: 5400,
    events: [
      { atMs: 0, what: "hosts write" },
      { atMs: 412, what: "kill -9 subsystem #1 (pid 77)" },
    ],
    kills: { primary: 1, secondary: 0, rcm: 1 },
    linkFaults: { cut: 1, hang: 0 },
    takeovers: [{ group: "C1", ts: "123456789", generation: 3, attempts: 2, elapsedMs: 310, primariesDown: [1] }],
    chains: [{ group: "C1", chains: 3, length: 100, acked: 30, issued: 32, onSecondaries: 21, prefixLengths: [9, 5, 7], counts: { torn: 0, foreign: 0, gaps: 0, future: 0, missing: 0 } }],
    secondaryWrites: 4,
    load: { writes: 100, bytes: 3 << 20 },
    resyncs: [{ group: "C1", elapsedMs: 1200, said: "copied 12 blocks" }],
    wayBack: "forward",
    cmp: { pairs: 4, identical: 4 },
    completeOnPrimaries: { acked: 30, ok: true },
    violations: [],
    stepsMs: { write: 2100, resync: 1250 },
    ...o,
  };
}

describe("drill report", () => {
  it("drill report: a passing round shows its events, Ts, prefix lengths and zero gaps and torn blocks", () => {
    const text = renderRound(round(), "tidemark drill --rounds 1 --seed 41");
    expect(text).toContain("round 1 (seed 41) OK in 5.4 s (write 2.1, resync 1.3)");
    expect(text).toContain("+412 ms  kill -9 subsystem #1 (pid 77)");
    expect(text).toContain("takeover C1: Ts 123456789, generation 3, 310 ms (2 attempts); primaries down: #1");
    expect(text).toContain("prefix lengths 5..9 (median 7); gaps 0, torn 0, foreign 0, from the future 0");
    expect(text).toContain("cmp 4 of 4 pairs identical");
    expect(text).not.toContain("replay");
  });

  it("drill report: a failback round shows the reverse resync and the swap, cmp after each, and the takeover's prefixes on the primaries", () => {
    const text = renderRound(
      round({
        wayBack: "failback",
        resyncs: [
          { group: "C1", command: "resync --reverse", elapsedMs: 2300, said: "took over #1 on its return; paired again at generation 5" },
          { group: "C1", command: "swap", elapsedMs: 1400, said: "nothing to copy" },
        ],
        cmpAfterFailback: { pairs: 4, identical: 4 },
        completeOnPrimaries: { acked: 21, ok: true },
      }),
      "tidemark drill --rounds 1 --seed 41",
    );
    expect(text).toContain("  resync --reverse C1: 2.3 s: took over #1 on its return; paired again at generation 5");
    expect(text).toContain("  swap C1: 1.4 s: nothing to copy");
    expect(text).toContain("  after the reverse resync and quiesce: cmp 4 of 4 pairs identical");
    expect(text).toContain("  after the swap back and quiesce: cmp 4 of 4 pairs identical; chains on the primaries: exactly the takeover's prefixes (21 writes)");
    const s = summarize([round(), round({ wayBack: "failback" })], 1000);
    expect(s.failbacks).toBe(1);
    expect(renderSummary(s, String)).toContain("2 takeovers (2 with a primary down, 1 failed back and swapped)");
  });

  it("drill report: a failed round lists every violation and the replay command", () => {
    const text = renderRound(round({ ok: false, violations: ["chain 2: pos 4 missing but pos 6 present"] }), "tidemark drill --rounds 1 --seed 41 --loop");
    expect(text).toContain("round 1 (seed 41) FAILED");
    expect(text).toContain("VIOLATIONS (1):\n    - chain 2: pos 4 missing but pos 6 present");
    expect(text).toContain("replay: tidemark drill --rounds 1 --seed 41 --loop");
  });

  it("drill report: the summary adds rounds up and names every failed seed with its replay", () => {
    const s = summarize([round(), round({ round: 2, seed: 42, ok: false, violations: ["x", "y"] })], 12_000);
    expect(s).toMatchObject({ rounds: 2, passed: 1, failedSeeds: [42], kills: { primary: 2, secondary: 0, rcm: 2 }, takeovers: 2, takeoversWithPrimaryDown: 2, chainWritesAcked: 60, violations: 2 });
    const text = renderSummary(s, (seed) => `tidemark drill --rounds 1 --seed ${seed}`);
    expect(text).toContain("drill: 2 rounds in 12.0 s: 1 passed, 1 failed; 2 violations");
    expect(text).toContain("kill -9: 2 primaries, 0 secondaries, 2 RCMs");
    expect(text).toContain("FAILED seed 42: replay with tidemark drill --rounds 1 --seed 42");
  });
});

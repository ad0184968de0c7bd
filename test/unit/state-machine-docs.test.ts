// docs/state-machines.md prints the replication link's state table and the
// group state tables of a primary and a secondary; the code's tables are
// LINK_TRANSITIONS, PRIMARY_GROUP_TRANSITIONS and SECONDARY_GROUP_TRANSITIONS.
// Each pair must be the same table, row for row, in both directions.
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { describe, expect, it } from "vitest";
import { LINK_TRANSITIONS } from "../../appliance/primary/link-state.ts";
import { PRIMARY_GROUP_TRANSITIONS } from "../../appliance/primary/group-state.ts";
import { SECONDARY_GROUP_TRANSITIONS } from "../../appliance/secondary/group-state.ts";
import { cells, movesMarkdown, outcomeText, refusedOrIgnoredMarkdown, type TransitionTable } from "../../appliance/transition-table.ts";

const doc = fs.readFileSync(path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../../docs/state-machines.md"), "utf8");

/** The rows of the first markdown table after the marker comment, as cells without backticks. */
function tableAfter(marker: string): string[][] {
  const at = doc.indexOf(marker);
  expect(at, `docs/state-machines.md has the marker '${marker}'`).toBeGreaterThanOrEqual(0);
  const lines = doc.slice(at).split("\n").slice(1);
  const rows: string[][] = [];
  for (const line of lines) {
    if (!line.startsWith("|")) {
      if (rows.length > 0) break;
      continue;
    }
    rows.push(
      line
        .split("|")
        .slice(1, -1)
        .map((c) => c.trim().replace(/`/g, "")),
    );
  }
  return rows;
}

describe("state machine docs", () => {
  it("state machine docs: the link table in docs/state-machines.md equals LINK_TRANSITIONS", () => {
    const [header, rule, ...rows] = tableAfter("<!-- link-transitions");
    expect(header).toEqual(["state", "event", "next state"]);
    expect(rule.every((c) => /^-+$/.test(c))).toBe(true);
    const fromDoc = rows.map((r) => r.join(" "));
    const fromCode = Object.entries(LINK_TRANSITIONS).flatMap(([state, events]) =>
      Object.entries(events).map(([event, next]) => `${state} ${event} ${next}`),
    );
    expect(new Set(fromDoc).size, "no row twice").toBe(fromDoc.length);
    expect([...fromDoc].sort()).toEqual([...fromCode].sort());
  });

  it("state machine docs: every state of LINK_TRANSITIONS appears in the doc's table", () => {
    const rows = tableAfter("<!-- link-transitions").slice(2);
    const named = new Set(rows.flatMap((r) => [r[0], r[2]]));
    for (const s of Object.keys(LINK_TRANSITIONS)) expect(named.has(s), `state '${s}'`).toBe(true);
  });

  /**
   * A group machine's doc tables: the moves (state, event, next state) and the
   * refusals and ignored events (event, outcome, states). Together with
   * `never` for every pair in neither, they must be the code's table.
   */
  function groupMachine(name: string, table: TransitionTable<string, string, string>) {
    const movesMarker = `<!-- ${name}-transitions`;
    const refusalsMarker = `<!-- ${name}-refusals`;
    /** What the doc says, as "state event outcome" lines. */
    function fromDoc(): string[] {
      const [mHeader, mRule, ...moves] = tableAfter(movesMarker);
      expect(mHeader).toEqual(["state", "event", "next state"]);
      expect(mRule.every((c) => /^-+$/.test(c))).toBe(true);
      const [rHeader, rRule, ...refusals] = tableAfter(refusalsMarker);
      expect(rHeader).toEqual(["event", "outcome", "in states"]);
      expect(rRule.every((c) => /^-+$/.test(c))).toBe(true);
      return [
        ...moves.map((r) => r.join(" ")),
        ...refusals.flatMap(([event, out, states]) => states.split(",").map((s) => `${s.trim()} ${event} ${out}`)),
      ];
    }
    const fixHint = () => `the doc's tables, from the code:\n\n${movesMarkdown(table)}\n\n${refusedOrIgnoredMarkdown(table)}\n`;

    it(`state machine docs: the ${name} tables in docs/state-machines.md equal the code's, except the never cells`, () => {
      const doc = fromDoc();
      expect(new Set(doc).size, "no pair twice").toBe(doc.length);
      const code = cells(table)
        .filter(([, , out]) => out.kind !== "never")
        .map(([s, e, out]) => `${s} ${e} ${outcomeText(out)}`);
      expect([...doc].sort(), fixHint()).toEqual([...code].sort());
    });

    it(`state machine docs: every ${name} pair the doc leaves out is never in the code`, () => {
      const named = new Set(fromDoc().map((l) => l.split(" ").slice(0, 2).join(" ")));
      const left = cells(table).filter(([s, e]) => !named.has(`${s} ${e}`));
      for (const [s, e, out] of left) expect(out.kind, `${s} × ${e}`).toBe("never");
    });

    it(`state machine docs: every state of the ${name} table appears in the doc's tables`, () => {
      const words = new Set(fromDoc().flatMap((l) => l.split(" ")));
      for (const s of Object.keys(table)) expect(words.has(s), `state '${s}'`).toBe(true);
    });
  }

  groupMachine("primary-group", PRIMARY_GROUP_TRANSITIONS);
  groupMachine("secondary-group", SECONDARY_GROUP_TRANSITIONS);
});

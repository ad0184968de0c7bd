// docs/state-machines.md prints the replication link's state table; the code's
// table is LINK_TRANSITIONS. They must be the same table, row for row.
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { describe, expect, it } from "vitest";
import { LINK_TRANSITIONS } from "../../appliance/primary/link-state.ts";

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
        .map((c) => c.trim().replace(/^`(.*)`$/, "$1")),
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
});

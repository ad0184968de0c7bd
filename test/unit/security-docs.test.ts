// docs/security.md gives each claim the test that backs it: a row names a
// test file and a test title as written in the source. A renamed or deleted
// test must not leave a claim pointing at nothing.
import { readFileSync } from "node:fs";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { ROOT } from "../support/cluster.ts";

interface Row {
  claim: string;
  file: string;
  title: string;
}

function claimRows(): Row[] {
  const doc = readFileSync(path.join(ROOT, "docs/security.md"), "utf8");
  const start = doc.indexOf("## Claims and the tests that back them");
  const end = doc.indexOf("### Claims without a test yet", start);
  const rows: Row[] = [];
  for (const line of doc.slice(start, end).split("\n")) {
    // | claim | `file` | `title` |
    const m = /^\| (.*) \| `([^`]+)` \| `(.+)` \|$/.exec(line);
    if (m) rows.push({ claim: m[1], file: m[2], title: m[3] });
  }
  return rows;
}

describe("docs/security.md claims table", () => {
  const rows = claimRows();

  it("security docs: the claims tables have rows", () => {
    expect(rows.length).toBeGreaterThan(60);
  });

  it("security docs: every row's test file holds a test with that title", () => {
    const missing: string[] = [];
    for (const r of rows) {
      let src: string;
      try {
        src = readFileSync(path.join(ROOT, r.file), "utf8");
      } catch {
        missing.push(`${r.file}: no such file (claim: ${r.claim})`);
        continue;
      }
      // Titles in single quotes escape their apostrophes.
      const forms = [r.title, r.title.replaceAll("'", "\\'"), r.title.replaceAll('"', '\\"')];
      if (!forms.some((t) => src.includes(t))) missing.push(`${r.file}: no test titled '${r.title}'`);
    }
    expect(missing).toEqual([]);
  });
});

// docs/errors.md is the registry of error codes: every `TM_...` string
// literal in appliance/, disks/ and config/ has a row there, and every row
// names a code the source still uses.
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { describe, expect, it } from "vitest";

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
const SOURCE_DIRS = ["appliance", "disks", "config"];

function sourceFiles(dir: string): string[] {
  const out: string[] = [];
  for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) out.push(...sourceFiles(p));
    else if (/\.(ts|js|mjs|cjs)$/.test(e.name)) out.push(p);
  }
  return out;
}

/** Code -> the files that use it as a string literal ("TM_X", 'TM_X' or `TM_X`). */
function codesInSource(): Map<string, string[]> {
  const codes = new Map<string, string[]>();
  for (const d of SOURCE_DIRS) {
    for (const f of sourceFiles(path.join(ROOT, d))) {
      const text = fs.readFileSync(f, "utf8");
      for (const m of text.matchAll(/(["'`])(TM_[A-Z_]+)\1/g)) {
        const at = codes.get(m[2]) ?? [];
        const rel = path.relative(ROOT, f);
        if (!at.includes(rel)) at.push(rel);
        codes.set(m[2], at);
      }
    }
  }
  return codes;
}

/** Codes in the first column of a table row of docs/errors.md. */
function codesInDoc(): string[] {
  const doc = fs.readFileSync(path.join(ROOT, "docs/errors.md"), "utf8");
  return [...doc.matchAll(/^\| `(TM_[A-Z_]+)` \|/gm)].map((m) => m[1]);
}

describe("error docs", () => {
  it("error docs: the source tree uses error codes (sanity: more than 30)", () => {
    expect(codesInSource().size).toBeGreaterThan(30);
  });

  it("error docs: every TM_ code literal in appliance/, disks/, config/ has a row in docs/errors.md", () => {
    const documented = new Set(codesInDoc());
    const missing = [...codesInSource()].filter(([c]) => !documented.has(c)).map(([c, files]) => `${c} (${files.join(", ")})`);
    expect(missing, "codes used in the source but not in docs/errors.md").toEqual([]);
  });

  it("error docs: every row of docs/errors.md names a code the source uses, once", () => {
    const used = codesInSource();
    const rows = codesInDoc();
    expect(rows.filter((c) => !used.has(c)), "codes documented but used nowhere").toEqual([]);
    expect(rows.filter((c, i) => rows.indexOf(c) !== i), "codes with two rows").toEqual([]);
  });
});

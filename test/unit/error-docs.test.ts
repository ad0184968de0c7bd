// The registry of error codes (appliance/errors/codes.ts) is the one list:
// docs/errors.md prints it row for row, every `TM_...` string literal in the
// source is one of its codes, every code is raised somewhere, and no page of
// docs/ names a code it does not have.
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { describe, expect, it } from "vitest";
import { ERROR_CODES, isErrorCode, peerErrorCode, tmError, TidemarkError } from "../../appliance/errors/codes.ts";

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
const SOURCE_DIRS = ["appliance", "disks", "config", "bin"];
const REGISTRY_FILE = path.join("appliance", "errors", "codes.ts");

function sourceFiles(dir: string): string[] {
  const out: string[] = [];
  for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) out.push(...sourceFiles(p));
    else if (/\.(ts|js|mjs|cjs)$/.test(e.name) || dir.endsWith("bin")) out.push(p);
  }
  return out;
}

/**
 * Code -> the files that use it as a string literal ("TM_X", 'TM_X' or `TM_X`), the registry
 * excepted. A literal that ends in "_" is a family prefix (`ErrorCodeOf<"TM_LINK_">`), not a code.
 */
function codesInSource(): Map<string, string[]> {
  const codes = new Map<string, string[]>();
  for (const d of SOURCE_DIRS) {
    for (const f of sourceFiles(path.join(ROOT, d))) {
      const rel = path.relative(ROOT, f);
      if (rel === REGISTRY_FILE) continue;
      const text = fs.readFileSync(f, "utf8");
      for (const m of text.matchAll(/(["'`])(TM_[A-Z_]*[A-Z])\1/g)) {
        const at = codes.get(m[2]) ?? [];
        if (!at.includes(rel)) at.push(rel);
        codes.set(m[2], at);
      }
    }
  }
  return codes;
}

/** The rows of docs/errors.md's registry table, as [code, meaning], in order. */
function rowsInDoc(): [string, string][] {
  const doc = fs.readFileSync(path.join(ROOT, "docs/errors.md"), "utf8");
  return [...doc.matchAll(/^\| `(TM_[A-Z_]+)` \| (.*) \|$/gm)].map((m) => [m[1], m[2]]);
}

function markdownFiles(): string[] {
  const docs = fs.readdirSync(path.join(ROOT, "docs")).filter((f) => f.endsWith(".md")).map((f) => path.join(ROOT, "docs", f));
  return [path.join(ROOT, "README.md"), ...docs];
}

const registry = Object.entries(ERROR_CODES) as [string, string][];

describe("error docs", () => {
  it("error docs: the registry holds the codes (sanity: more than 30), each meaning one table-safe line", () => {
    expect(registry.length).toBeGreaterThan(30);
    const bad = registry.filter(([, meaning]) => meaning.length === 0 || /[|\n\r]/.test(meaning)).map(([c]) => c);
    expect(bad, "meanings that are empty, hold a '|' or a line break").toEqual([]);
  });

  it("error docs: docs/errors.md prints the registry row for row (code and meaning, same order, both directions)", () => {
    const rows = rowsInDoc();
    const docCodes = new Set(rows.map(([c]) => c));
    const missing = registry.filter(([c]) => !docCodes.has(c)).map(([c, m]) => `| \`${c}\` | ${m} |`);
    expect(missing, "registry codes without a row in docs/errors.md (add these rows)").toEqual([]);
    expect(rows.filter(([c]) => !isErrorCode(c)).map(([c]) => c), "rows in docs/errors.md for codes the registry does not have").toEqual([]);
    const differing = rows.filter(([c, m]) => isErrorCode(c) && ERROR_CODES[c] !== m).map(([c]) => `| \`${c}\` | ${ERROR_CODES[c as keyof typeof ERROR_CODES]} |`);
    expect(differing, "rows whose meaning differs from the registry's (the registry's text)").toEqual([]);
    expect(rows.map(([c]) => c)).toEqual(registry.map(([c]) => c));
  });

  it("error docs: every TM_ code literal in appliance/, disks/, config/, bin/ is in the registry", () => {
    const unknown = [...codesInSource()].filter(([c]) => !isErrorCode(c)).map(([c, files]) => `${c} (${files.join(", ")})`);
    expect(unknown, "codes used in the source but not in appliance/errors/codes.ts").toEqual([]);
  });

  it("error docs: every code of the registry is raised somewhere in the source", () => {
    const used = codesInSource();
    expect(registry.filter(([c]) => !used.has(c)).map(([c]) => c), "codes in the registry that no source file uses").toEqual([]);
  });

  it("error docs: every TM_ code that a page of docs/ or the README names is in the registry", () => {
    const unknown: string[] = [];
    for (const f of markdownFiles()) {
      for (const m of fs.readFileSync(f, "utf8").matchAll(/\bTM_[A-Z_]*[A-Z]\b/g)) {
        if (!isErrorCode(m[0])) unknown.push(`${m[0]} (${path.relative(ROOT, f)})`);
      }
    }
    expect([...new Set(unknown)], "codes named in the docs that the registry does not have").toEqual([]);
  });
});

describe("errors: the helpers", () => {
  it("errors: tmError carries its code, message, context and cause", () => {
    const cause = new Error("EADDRINUSE");
    const err = tmError("TM_LISTEN", "nbd: cannot listen on 127.0.0.1:10811: EADDRINUSE", { host: "127.0.0.1", port: 10811 }, { cause });
    expect(err).toBeInstanceOf(TidemarkError);
    expect(err).toMatchObject({ code: "TM_LISTEN", context: { host: "127.0.0.1", port: 10811 }, cause });
    // A log line or a control answer may stringify it: context must survive JSON.
    expect(JSON.parse(JSON.stringify(err))).toMatchObject({ code: "TM_LISTEN", context: { port: 10811 } });
  });

  it("errors: a peer's code is kept as sent when it looks like one, else the fallback", () => {
    expect(peerErrorCode("TM_NO_GROUP", "TM_CONTROL")).toBe("TM_NO_GROUP");
    expect(peerErrorCode("TM_FROM_A_NEWER_PEER", "TM_CONTROL")).toBe("TM_FROM_A_NEWER_PEER");
    expect(peerErrorCode("ENOSPC", "TM_CONTROL")).toBe("ENOSPC");
    for (const odd of [undefined, null, 7, "", "tm_lower", "X".repeat(65), "TM_X\nforged log line"]) {
      expect(peerErrorCode(odd, "TM_CONTROL"), JSON.stringify(odd)).toBe("TM_CONTROL");
    }
  });
});

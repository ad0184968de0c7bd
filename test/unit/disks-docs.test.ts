// docs/disks.md is the registry of the disks layer's error codes: every code
// the code can throw has a row in its table, and the table lists no code that
// does not exist, so the doc and the code cannot drift apart silently.
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { describe, expect, it } from "vitest";
import { LOOP_ERROR_CODES, VOLUME_ERROR_CODES } from "../../disks/errors.ts";

const doc = fs.readFileSync(path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../../docs/disks.md"), "utf8");

describe("disks: docs", () => {
  it("disks: docs/disks.md's error table lists exactly the codes in disks/errors.ts", () => {
    const rows = [...doc.matchAll(/^\| `(TM_[A-Z_]+)` \|/gm)].map((m) => m[1]);
    expect(rows.sort()).toEqual([...VOLUME_ERROR_CODES, ...LOOP_ERROR_CODES].sort());
  });
});

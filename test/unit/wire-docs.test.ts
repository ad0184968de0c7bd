// docs/wire.md's table of refusal codes is WIRE_ERROR printed: the same
// codes, names and meanings in the same order, so the numbering a peer reads
// on the wire and the one the doc promises cannot drift apart.
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { describe, expect, it } from "vitest";
import { describeWireError, FRAME_VERSION, WIRE_ERROR, WIRE_ERROR_MEANINGS, wireErrorName, type WireErrorName } from "../../appliance/replication/frames.ts";

const doc = fs.readFileSync(path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../../docs/wire.md"), "utf8");

/** Rows `| code | name | meaning |` of the section that documents WIRE_ERROR. */
function docRows(): [number, string, string][] {
  const start = doc.indexOf("### In an `error` frame (`WIRE_ERROR`)");
  expect(start, "docs/wire.md has a section for WIRE_ERROR").toBeGreaterThanOrEqual(0);
  const end = doc.indexOf("\n#", start + 1);
  const section = doc.slice(start, end < 0 ? undefined : end);
  return [...section.matchAll(/^\| (\d+) \| (\w+) \| (.*) \|$/gm)].map((m) => [Number(m[1]), m[2], m[3]]);
}

describe("wire docs", () => {
  it("wire docs: docs/wire.md's WIRE_ERROR table and the code's are the same table (code, name, meaning; both directions)", () => {
    const code = (Object.entries(WIRE_ERROR) as [WireErrorName, number][]).map(([name, n]) => [n, name, WIRE_ERROR_MEANINGS[name]]);
    expect(docRows()).toEqual(code);
  });

  it("wire docs: the header's version and the last row of Versions are FRAME_VERSION", () => {
    expect(/^\| 4 \| 1 \| version \| `(\d+)`/m.exec(doc)?.[1]).toBe(String(FRAME_VERSION));
    const versions = doc.slice(doc.indexOf("## Versions"), doc.indexOf("## Error codes"));
    const rows = [...versions.matchAll(/^\| (\d+) \| /gm)].map((m) => Number(m[1]));
    expect(rows.at(-1)).toBe(FRAME_VERSION);
  });

  it("wire docs: codes are distinct, u16 and never 0", () => {
    const codes = Object.values(WIRE_ERROR);
    expect(new Set(codes).size).toBe(codes.length);
    for (const c of codes) expect(Number.isInteger(c) && c > 0 && c <= 0xffff).toBe(true);
  });

  it("wire docs: a code this build does not know is named, not thrown on (a peer may send anything)", () => {
    expect(wireErrorName(WIRE_ERROR.generation)).toBe("generation");
    expect(describeWireError(WIRE_ERROR.noGroup)).toBe("noGroup (7)");
    for (const unknown of [0, 409, 0xffff, -1, 1.5, Number.NaN]) {
      expect(wireErrorName(unknown)).toBeUndefined();
      expect(describeWireError(unknown)).toBe(`unknown code ${unknown}`);
    }
  });
});

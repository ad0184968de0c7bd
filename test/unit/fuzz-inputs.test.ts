// The fuzzer's generators (test/fuzz/): an input is a function of its seed,
// and a few thousand seeds reach every kind of message docs/fuzzing.md lists.
import { describe, expect, it } from "vitest";
import { generateInput, type FuzzTopology } from "../fuzz/generate.ts";
import { describeInput, sendBytes } from "../fuzz/input.ts";

const sizeBytes = 8 << 20;
const volumes = [
  { name: "p1", sizeBytes },
  { name: "s1", sizeBytes },
];
const TOPO: FuzzTopology = {
  nbd: [
    { subsystem: 1, exports: [{ name: "p1", sizeBytes }], maxPayloadBytes: 4 << 20 },
    { subsystem: 2, exports: [{ name: "s1", sizeBytes }], maxPayloadBytes: 4 << 20 },
  ],
  wire: [1, 2].map((subsystem) => ({ subsystem, primaryIds: [1], groups: ["C1"], volumes })),
};
const SEEDS = 3000;

describe("fuzz inputs", () => {
  it("fuzz inputs: the same seed gives the same bytes, another seed other bytes", () => {
    for (const seed of [1, 77, 123456, 2 ** 31 + 5]) {
      expect(describeInput(generateInput(seed, TOPO), 1 << 22)).toBe(describeInput(generateInput(seed, TOPO), 1 << 22));
    }
    expect(describeInput(generateInput(1, TOPO))).not.toBe(describeInput(generateInput(2, TOPO)));
  });

  it(`fuzz inputs: ${SEEDS} seeds reach every option, command, frame type, handshake mode and ending`, () => {
    const seen = new Set<string>();
    let maxBytes = 0;
    for (let seed = 1; seed <= SEEDS; seed++) {
      const input = generateInput(seed, TOPO);
      maxBytes = Math.max(maxBytes, sendBytes(input));
      seen.add(`${input.port}#${input.subsystem}`);
      seen.add(`ending:${input.ending}`);
      if (input.cutAt !== null) seen.add("cut");
      for (const w of input.label.split(/[^A-Za-z_-]+/)) if (w) seen.add(w);
      for (const s of input.steps) {
        if (s.kind === "auth") seen.add(`auth:${s.proof}:${s.role}`);
        else if (input.port === "replication" && s.bytes.length >= 6 && s.bytes.subarray(0, 4).toString() === "TMRK") seen.add(`frame:${s.bytes[5]}`);
      }
    }
    const expected = [
      "nbd#1", "nbd#2", "replication#1", "replication#2", "ending:end", "ending:reset", "ending:wait", "cut",
      "LIST", "STRUCTURED_REPLY", "INFO", "GO", "EXPORT_NAME", "ABORT", "STARTTLS", "META", "EXTENDED_HEADERS", "unknown",
      "READ", "WRITE", "DISC", "FLUSH", "TRIM", "WRITE_ZEROES", "CACHE", "BLOCK_STATUS",
      "stranger", "pre-handshake", "wrong-key", "control", "link",
      "auth:valid:link", "auth:valid:control", "auth:wrong-key:link", "auth:random:control",
    ];
    expect(expected.filter((e) => !seen.has(e))).toEqual([]);
    // Bounded inputs: the server's limits are probed by declared lengths, not by sending GiBs.
    expect(maxBytes).toBeLessThanOrEqual(1024 * 1024 + 64 * 1024);
  });
});

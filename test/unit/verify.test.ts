// The online verify's pure parts and its secondary check on a real SQLite
// state file (docs/verify.md): block hashes, the VERIFY record on the wire,
// ranges, the progress arithmetic, the config's schedule, and what a
// comparison records (bitmap, mismatches, counts without double counting).
import { describe, expect, it } from "vitest";
import { mkdtempSync, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import pino from "pino";
import { compareBlocks, verifyData, verifyRunTs } from "../../appliance/resync/verify-hashes.ts";
import { encodeFrame, FrameDecoder, storedPayloadBytes, verifyDataBytes, type Frame } from "../../appliance/replication/frames.ts";
import { rangeOf } from "../../appliance/resync/verifier.ts";
import { parseRequest } from "../../appliance/control/op-table.ts";
import { SUBSYSTEM_OPS } from "../../appliance/subsystem/control-ops.ts";
import { verifyProgress, type VerifyStart } from "../../appliance/rcm/verify.ts";
import { ConfigError, parseConfig } from "../../config/schema.ts";
import { openState } from "../../appliance/state/database.ts";
import { BitmapWriter } from "../../appliance/state/bitmap-writer.ts";
import { realRuntime } from "../../appliance/runtime/runtime.ts";
import { VerifyCheck } from "../../appliance/secondary/verify-check.ts";
import { VerifyEvents, type VerifyEvent } from "../../appliance/resync/verify-events.ts";

const BLOCK = 4096;
const MIB = 1024 * 1024;

function blocks(n: number, seed: number): Buffer {
  const b = Buffer.alloc(n * BLOCK);
  for (let i = 0; i < b.length; i++) b[i] = (i * 31 + seed * 7) & 0xff;
  return b;
}

describe("verify: hashes and the VERIFY record", () => {
  it("verify hashes: equal blocks compare equal; one changed byte names exactly its block with both hashes", () => {
    const a = blocks(8, 1);
    const data = verifyData(123456789012345678n, a);
    expect(data.length).toBe(verifyDataBytes(8 * BLOCK));
    expect(data.length).toBe(8 + 8 * 16);
    expect(verifyRunTs(data)).toBe(123456789012345678n);
    expect(compareBlocks(data, Buffer.from(a))).toEqual([]);
    const b = Buffer.from(a);
    b[5 * BLOCK + 100] ^= 1;
    const m = compareBlocks(data, b);
    expect(m.map((x) => x.index)).toEqual([5]);
    expect(m[0].primaryHash).toMatch(/^[0-9a-f]{32}$/);
    expect(m[0].secondaryHash).toMatch(/^[0-9a-f]{32}$/);
    expect(m[0].primaryHash).not.toBe(m[0].secondaryHash);
  });

  it("verify record: op 3 round-trips through the frame codec with its hashes; a length not of whole blocks is refused both ways", () => {
    const data = verifyData(7n, blocks(256, 2));
    const frame: Frame = { type: "rcr", generation: 3, group: "C1", records: [{ primaryId: 1, seq: 9, ts: 2n ** 63n + 5n, volume: "s3a", op: "verify", offset: 64 * MIB, length: MIB, data }] };
    const bytes = encodeFrame(frame);
    const [back] = new FrameDecoder().push(bytes);
    expect(back).toEqual(frame);
    // A 1 MiB range costs its hashes only: 4 KiB of hashes and the run stamp.
    expect(storedPayloadBytes(3, MIB)).toBe(4104);
    expect(storedPayloadBytes(1, MIB)).toBe(MIB);
    expect(() => encodeFrame({ ...frame, records: [{ ...frame.records[0], length: 1000 }] } as Frame)).toThrow(/whole number of 4 KiB blocks/);
    // On the wire: patch the length field of a valid record to 512 and the decoder refuses it.
    const bad = Buffer.from(bytes);
    const lenAt = 20 + 1 + 2 + 4 + 2 + 8 + 8 + 1 + 3 + 1 + 8;
    expect(bad.readUInt32BE(lenAt)).toBe(MIB);
    bad.writeUInt32BE(512, lenAt);
    expect(() => new FrameDecoder().push(bad)).toThrow();
  });
});

describe("verify: requests and ranges", () => {
  it("verify range: whole 4 KiB blocks inside the volume, else TM_VERIFY_RANGE naming the range", () => {
    expect(rangeOf({}, 16 * MIB, "C1")).toEqual([0, 16 * MIB]);
    expect(rangeOf({ offset: 4 * MIB, length: MIB }, 16 * MIB, "C1")).toEqual([4 * MIB, 5 * MIB]);
    expect(rangeOf({ offset: 4 * MIB }, 16 * MIB, "C1")).toEqual([4 * MIB, 16 * MIB]);
    for (const bad of [{ offset: 100, length: BLOCK }, { offset: 0, length: 100 }, { offset: 15 * MIB, length: 2 * MIB }, { offset: 16 * MIB }]) {
      expect(() => rangeOf(bad, 16 * MIB, "C1")).toThrow(expect.objectContaining({ code: "TM_VERIFY_RANGE", message: expect.stringMatching(/range .* not whole 4 KiB blocks inside the volume/) }));
    }
  });

  it("verify-start: a malformed field is TM_BAD_REQUEST naming it", () => {
    const verifyRequestOf = (body: unknown) => parseRequest(SUBSYSTEM_OPS, body).req;
    expect(verifyRequestOf({ op: "verify-start", group: "C1", rateMiBps: 10 })).toEqual({ group: "C1", rateMiBps: 10 });
    expect(() => verifyRequestOf({ op: "verify-start", group: "C1", rateMiBps: -1 })).toThrow(expect.objectContaining({ code: "TM_BAD_REQUEST", message: expect.stringContaining("rateMiBps") }));
    expect(() => verifyRequestOf({ op: "verify-start", group: "C1", rateMiBps: 1, offset: "x" })).toThrow(expect.objectContaining({ message: expect.stringContaining("offset") }));
  });

  it("verify config: a group's schedule is checked as cron (a seconds field allowed) and its rate defaults to 64 MiB/s", () => {
    const raw = (verify: unknown) => ({
      clusterKey: "a-cluster-key-of-enough-length",
      subsystems: [
        { id: 1, replicationPort: 7101, nbdPort: 10801, volumes: [{ name: "p1a", sizeMiB: 8 }] },
        { id: 2, replicationPort: 7102, nbdPort: 10802, volumes: [{ name: "s2a", sizeMiB: 8 }] },
      ],
      groups: [{ name: "C1", pairs: [{ primary: "p1a", secondary: "s2a" }], verify }],
    });
    expect(parseConfig(raw({ cron: "*/5 * * * * *" }), "x.json").config.groups[0].verify).toEqual({ cron: "*/5 * * * * *", rateMiBps: 64 });
    let err: unknown;
    try {
      parseConfig(raw({ cron: "every day", rateMiBps: 8 }), "x.json");
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(ConfigError);
    expect((err as ConfigError).problems.join("\n")).toMatch(/C1\.verify\.cron: not a cron expression/);
  });
});

describe("verify: progress", () => {
  it("verify progress: a pair is done only when its primary finished and its secondary compared through the end of the same run", () => {
    const start: VerifyStart = {
      group: "C1",
      rateMiBps: 10,
      runs: [
        { primary: 1, volume: "p1a", secondary: 3, target: "s3a", runTs: "100", startOffset: 0, endOffset: 8 * BLOCK },
        { primary: 2, volume: "p2a", secondary: 3, target: "s3b", runTs: "200", startOffset: 0, endOffset: 8 * BLOCK },
      ],
    };
    const run = (volume: string, runTs: string, state: string) => ({ volume, target: "", runTs, state, startOffset: 0, nextOffset: 8 * BLOCK, endOffset: 8 * BLOCK, rateMiBps: 10, startedMs: 0, finishedMs: null, lastTs: null, bytesPerSecond: 0 });
    const seen = (volume: string, runTs: string, through: number, mismatched: number) => ({ volume, runTs, throughOffset: through, verifiedBlocks: through / BLOCK, mismatchedBlocks: mismatched, lastTs: "0", verifiedTotal: 0, mismatchedTotal: 0, mismatches: [] });
    const answers = (secondary: ReturnType<typeof seen>[]) =>
      new Map([
        [1, { ok: true as const, value: { verify: { primary: { C1: [run("p1a", "100", "done")] }, secondary: [], counters: { hashedBytes: 0, records: 0 } } } as never }],
        [2, { ok: true as const, value: { verify: { primary: { C1: [run("p2a", "200", "done")] }, secondary: [], counters: { hashedBytes: 0, records: 0 } } } as never }],
        [3, { ok: true as const, value: { verify: { primary: {}, secondary, counters: { hashedBytes: 0, records: 0 } } } as never }],
      ]);
    // s3b's comparison belongs to an older run: not counted.
    let p = verifyProgress(start, answers([seen("s3a", "100", 8 * BLOCK, 1), seen("s3b", "199", 8 * BLOCK, 5)]));
    expect(p.pairs.map((x) => x.done)).toEqual([true, false]);
    expect(p.doneBlocks).toBe(8);
    expect(p.mismatchedBlocks).toBe(1);
    expect(p.done).toBe(false);
    p = verifyProgress(start, answers([seen("s3a", "100", 8 * BLOCK, 1), seen("s3b", "200", 8 * BLOCK, 0)]));
    expect(p.done).toBe(true);
    expect(p.totalBlocks).toBe(16);
  });
});

describe("verify: the secondary's check on a real state file", () => {
  it("verify check: a mismatch goes to the bitmap and verify_mismatch once per run; a range compared again is not counted twice; a new run starts its counts afresh", () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), "tidemark-verify-unit-"));
    try {
      const db = openState(path.join(dir, "state.db"));
      const bitmap = new BitmapWriter(db, realRuntime);
      const events = new VerifyEvents();
      const seenEvents: VerifyEvent[] = [];
      events.on((e) => seenEvents.push(e));
      const check = new VerifyCheck({ id: 3, db, bitmap, logger: pino({ level: "silent" }), events });
      const primary = blocks(4, 3);
      const secondary = Buffer.from(primary);
      secondary[2 * BLOCK] ^= 0xff;
      const record = (runTs: bigint, ts: bigint) => check.compare("C1", "s3a", 8 * BLOCK, 4 * BLOCK, ts, verifyData(runTs, primary), secondary);
      const commit = (o: ReturnType<typeof record>) => {
        db.transaction(() => check.record([o]))();
        check.report([o]);
      };
      commit(record(50n, 60n));
      // The same range again in the same run (re-hashed after a primary's crash).
      commit(record(50n, 70n));
      let s = check.status()[0];
      expect(s).toMatchObject({ volume: "s3a", runTs: "50", throughOffset: 12 * BLOCK, verifiedBlocks: 4, mismatchedBlocks: 1, verifiedTotal: 4, mismatchedTotal: 1, lastTs: "70" });
      expect(s.mismatches.map((m) => m.offset)).toEqual([10 * BLOCK]);
      expect(bitmap.count("s3a")).toBe(1);
      expect(seenEvents.filter((e) => e.kind === "mismatch").map((e) => (e as { offset: number }).offset)).toEqual([10 * BLOCK, 10 * BLOCK]);
      // A new run: its own counts, the old run's mismatch rows gone, the totals go on.
      commit(record(80n, 90n));
      s = check.status()[0];
      expect(s).toMatchObject({ runTs: "80", verifiedBlocks: 4, mismatchedBlocks: 1, verifiedTotal: 8, mismatchedTotal: 2 });
      expect((db.prepare("SELECT count(*) AS n FROM verify_mismatch").get() as { n: number }).n).toBe(1);
      db.close();
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

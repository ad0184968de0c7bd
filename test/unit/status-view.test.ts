// `tidemark status` as an admin reads it (appliance/cli/status-view.ts), from
// made-up subsystem answers on the default topology: a subsystem that does not
// answer keeps the SUBSYSTEMS table aligned (its reason goes on a line under
// the table), and a primary back after a takeover that could not reach it is
// named with the command that follows.
import path from "node:path";
import { fileURLToPath } from "node:url";
import { describe, expect, it } from "vitest";
import { loadConfig } from "../../config/load.ts";
import { buildStatus, renderStatus, type Answer, type SubsystemStatus } from "../../appliance/cli/status-view.ts";

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
const topo = loadConfig(path.join(ROOT, "config/default.json"));
const NOW = 5_000_000_000n;
const TS = "4000000000";
const DOWN_ERROR = "subsystem #1 at 127.0.0.1:17101 is unreachable: connect ECONNREFUSED 127.0.0.1:17101";

function base(id: number): SubsystemStatus {
  const ss = topo.config.subsystems.find((s) => s.id === id)!;
  return {
    subsystem: id,
    pid: 1000 + id,
    host: ss.host,
    replicationPort: ss.replicationPort,
    nbdPort: ss.nbdPort,
    nowNs: NOW.toString(),
    directions: { C1: "forward" },
    volumes: ss.volumes.map((v) => ({ name: v.name, role: id <= 2 ? "primary" : "secondary", path: `/data/${v.name}.img`, kind: "file", sizeBytes: 256 << 20, nbdUrl: `nbd://127.0.0.1:${ss.nbdPort}/${v.name}`, readOnly: false, bitmapBlocks: 0 })),
    primary: null,
    secondary: null,
  };
}

function primary(id: number, state: string, generation: number): SubsystemStatus {
  return {
    ...base(id),
    primary: {
      lastStamp: TS,
      writes: 0,
      writeBytes: 0,
      pending: 0,
      journal: { entries: 0, bytes: 0, hotRegions: 0 },
      groups: [{ name: "C1", state, reason: state === "active" ? null : "takeover", suspendedBy: "admin (pid 7)", bitmapBlocks: 0, pending: 0, lastSyncT: TS, generation }],
      links: [3, 4, 5].map((s) => ({ secondary: s, state: "closed", sentSeq: 0, ackedSeq: 0, bytesInFlight: 0, lastError: null })),
      volumes: [],
    },
  };
}

function secondary(id: number, generation: number): SubsystemStatus {
  return {
    ...base(id),
    secondary: [
      {
        name: "C1",
        generation,
        state: "takeover",
        reason: "takeover",
        first: { "1": TS, "2": TS },
        second: TS,
        rcrQueue: 0,
        rcrQueueBytes: 0,
        diskQueue: 0,
        diskQueueBytes: 0,
        applied: 120,
        appliedBytes: 4 << 20,
        lastAppliedTs: TS,
        appliedThrough: TS,
        synchronizedTs: TS,
        suspendedBy: "admin (pid 7)",
        applyError: null,
        dropped: 3,
        droppedBytes: 12288,
        bitmapBlocks: 3,
      },
    ],
  };
}

function answers(one: Answer): Map<number, Answer> {
  return new Map<number, Answer>([
    [1, one],
    [2, { ok: true, value: primary(2, "taken-over", 3) }],
    [3, { ok: true, value: secondary(3, 3) }],
    [4, { ok: true, value: secondary(4, 3) }],
    [5, { ok: true, value: secondary(5, 3) }],
  ]);
}

/** The SUBSYSTEMS table's lines: its header and one row per subsystem. */
function subsystemsTable(text: string): string[] {
  const lines = text.split("\n");
  const at = lines.indexOf("SUBSYSTEMS");
  return lines.slice(at + 1, at + 1 + 1 + topo.config.subsystems.length);
}

describe("status view", () => {
  it("status view: a subsystem that does not answer keeps the table aligned; its reason goes on a line of its own under the table", () => {
    const doc = buildStatus(topo, answers({ ok: false, error: DOWN_ERROR }), NOW);
    const text = renderStatus(doc);
    const table = subsystemsTable(text);
    expect(table[0]).toMatch(/^id\s+state\s+pid\s+replication\s+nbd$/);
    // Every row's columns start where the header's do.
    const columns = ["pid", "replication", "nbd"].map((c) => table[0].indexOf(c));
    for (const row of table.slice(1)) {
      const cells = row.split(/\s{2,}/);
      expect(cells, row).toHaveLength(5);
      expect(cells[1], row).toMatch(/^(up|DOWN)$/);
      for (const [i, col] of columns.entries()) expect(row.indexOf(cells[2 + i], columns[0] - 1), `${row}: column ${i + 2}`).toBe(col);
    }
    expect(table[1]).toMatch(/^#1\s+DOWN\s+-\s+127\.0\.0\.1:17101\s+127\.0\.0\.1:10811$/);
    // The reason, once, on its own line right under the table.
    const lines = text.split("\n");
    const under = lines[lines.indexOf("SUBSYSTEMS") + 1 + table.length];
    expect(under).toBe(`  #1 DOWN: ${DOWN_ERROR}`);
    expect(text.split(DOWN_ERROR)).toHaveLength(2);
    // The document keeps the reason for scripts.
    expect(doc.subsystems[0]).toMatchObject({ id: 1, reachable: false, error: DOWN_ERROR });
    // Down during the takeover: not a returning primary.
    expect(doc.groups[0].returning).toEqual([]);
  });

  it("status view: a primary back after the takeover that could not reach it is named, with the one command that follows", () => {
    const doc = buildStatus(topo, answers({ ok: true, value: primary(1, "fenced", 2) }), NOW);
    expect(doc.groups[0].returning).toEqual([{ subsystem: 1, state: "fenced", generation: 2 }]);
    const text = renderStatus(doc);
    expect(text).toContain(
      "  primary #1 is back (fenced, generation 2) after the takeover at generation 3, which could not reach it; next: tidemark resync --group C1 --reverse (takes it over and fails back)",
    );
    expect(text).not.toContain("DOWN");
    // Once it is taken over, the line goes.
    const after = buildStatus(topo, answers({ ok: true, value: primary(1, "taken-over", 3) }), NOW);
    expect(after.groups[0].returning).toEqual([]);
    expect(renderStatus(after)).not.toContain("is back");
  });

  it("status view: secondary volumes whose initial copy never finished are named as not usable for a takeover", () => {
    const a = answers({ ok: true, value: primary(1, "taken-over", 3) });
    const s4 = secondary(4, 3);
    s4.secondary![0].uncopiedVolumes = ["s4a"];
    a.set(4, { ok: true, value: s4 });
    const doc = buildStatus(topo, a, NOW);
    expect(doc.groups[0].uncopiedVolumes).toEqual(["s4a"]);
    expect(renderStatus(doc)).toContain("  initial copy not finished: s4a; a takeover now would present it incomplete (not usable)");
    expect(buildStatus(topo, answers({ ok: true, value: primary(1, "taken-over", 3) }), NOW).groups[0].uncopiedVolumes).toEqual([]);
  });
});

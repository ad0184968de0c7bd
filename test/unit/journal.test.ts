// The primary's journal (appliance/primary/journal.ts) on a real SQLite state
// file in a temporary folder: group commit, reads by link, trim, the activity
// log, the stamp and seq floors, replay, and a database that fails under it.
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import Database from "better-sqlite3";
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { openState, type Db } from "../../appliance/state/database.ts";
import { fileStateStore } from "../../appliance/state/store.ts";
import { realRuntime } from "../../appliance/runtime/runtime.ts";
import { ACTIVITY_REGION_BYTES, COMMIT_ENTRIES_MAX, Journal, OP_WRITE, OP_ZERO, SEQ_LEASE_SPAN, type JournalEntry } from "../../appliance/primary/journal.ts";

let dir: string;
let file: string;
let db: Db;

beforeEach(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), "tidemark-journal-"));
  file = path.join(dir, "state.db");
  db = openState(file);
});
afterEach(() => {
  vi.useRealTimers();
  if (db.open) db.close();
  fs.rmSync(dir, { recursive: true, force: true });
});

function entry(seq: number, link: number, offset = (seq - 1) * 4096, o: Partial<JournalEntry> = {}): JournalEntry {
  const data = Buffer.alloc(4096, seq & 0xff);
  return { seq, ts: 1_000_000n + BigInt(seq) * 10n, group: "C1", link, volume: "p1a", target: `s${link}a`, op: OP_WRITE, offset, length: 4096, data, ...o };
}

/** Counts the transactions that actually run on `d` (every Journal write goes through db.transaction). */
function countTransactions(d: Db): { count: () => number } {
  let n = 0;
  const original = d.transaction.bind(d);
  d.transaction = ((fn: (...a: unknown[]) => unknown) => {
    const tx = original(fn);
    const counted = (...a: unknown[]) => {
      n++;
      return tx(...a);
    };
    return Object.assign(counted, tx);
  }) as Db["transaction"];
  return { count: () => n };
}

/** Frames in the WAL file: a 32-byte header, then (24-byte header + page) per frame. */
function walFrames(): number {
  const size = fs.statSync(`${file}-wal`).size;
  const page = db.pragma("page_size", { simple: true }) as number;
  return size <= 32 ? 0 : (size - 32) / (page + 24);
}

describe("journal: group commit", () => {
  it("journal: 1000 appends issued in one tick commit in one transaction and all resolve", async () => {
    const tx = countTransactions(db);
    const j = new Journal(fileStateStore(db), realRuntime);
    const commits: number[] = [];
    j.onCommit = (last) => commits.push(last);
    db.pragma("wal_checkpoint(TRUNCATE)");
    const framesBefore = walFrames();
    // Every entry to one 4 MiB region: it turns hot in the same transaction.
    const all = Array.from({ length: 1000 }, (_, i) => j.append(entry(i + 1, 3, (i % 1024) * 4096)));
    await Promise.all(all);
    expect(tx.count()).toBe(1);
    expect(commits).toEqual([1000]);
    // Independent of the wrapper: 1000 one-row transactions would append at
    // least 1000 frames to the WAL; one transaction of ~4 MB of rows writes
    // about one frame per page it dirties and no more.
    const pageSize = db.pragma("page_size", { simple: true }) as number;
    const frames = walFrames() - framesBefore;
    expect(frames).toBeLessThan(Math.ceil((1000 * 4096 * 1.2) / pageSize) + 50);
    expect(j.counts()).toEqual({ entries: 1000, bytes: 1000 * 4096, hotRegions: 1 });
  });

  it(`journal: 10000 appends in one tick commit in ceil(10000 / ${COMMIT_ENTRIES_MAX}) transactions`, async () => {
    const tx = countTransactions(db);
    const j = new Journal(fileStateStore(db), realRuntime);
    const small = (seq: number) => entry(seq, 3, 0, { data: Buffer.alloc(512, 1), length: 512 });
    await Promise.all(Array.from({ length: 10_000 }, (_, i) => j.append(small(i + 1))));
    expect(tx.count()).toBe(Math.ceil(10_000 / COMMIT_ENTRIES_MAX));
    expect(j.counts().entries).toBe(10_000);
  });

  it("journal: appends made while a commit is scheduled join it; the next tick starts a new one (2 bursts)", async () => {
    const tx = countTransactions(db);
    const j = new Journal(fileStateStore(db), realRuntime);
    const a = Array.from({ length: 50 }, (_, i) => j.append(entry(i + 1, 3)));
    await Promise.all(a);
    const b = Array.from({ length: 50 }, (_, i) => j.append(entry(i + 51, 4)));
    await Promise.all(b);
    expect(tx.count()).toBe(2);
  });

  it("journal: a committed entry is visible from a second connection (in the WAL)", async () => {
    const j = new Journal(fileStateStore(db), realRuntime);
    await j.append(entry(1, 3));
    const other = new Database(file, { readonly: true });
    try {
      expect((other.prepare("SELECT count(*) AS n FROM journal").get() as { n: number }).n).toBe(1);
    } finally {
      other.close();
    }
  });
});

describe("journal: reads, trim and replay", () => {
  it("journal: readLink returns one link's entries after a seq, in seq order, up to a limit (2 links)", async () => {
    const j = new Journal(fileStateStore(db), realRuntime);
    // Interleaved links 3 and 4, appended out of seq order within the batch.
    const seqs = [5, 1, 3, 2, 6, 4, 8, 7];
    await Promise.all(seqs.map((s) => j.append(entry(s, s % 2 === 0 ? 4 : 3))));
    expect(j.readLink(3, 0, 100).map((e) => e.seq)).toEqual([1, 3, 5, 7]);
    expect(j.readLink(4, 0, 100).map((e) => e.seq)).toEqual([2, 4, 6, 8]);
    expect(j.readLink(4, 4, 100).map((e) => e.seq)).toEqual([6, 8]);
    expect(j.readLink(3, 0, 2).map((e) => e.seq)).toEqual([1, 3]);
    // A byte bound stops the read once it is reached, but never returns nothing.
    expect(j.readLink(3, 0, 100, 8192).map((e) => e.seq)).toEqual([1, 3]);
    expect(j.readLink(3, 0, 100, 1).map((e) => e.seq)).toEqual([1]);
    expect(j.readLink(9, 0, 100)).toEqual([]);
    const e = j.readLink(3, 2, 1)[0];
    expect(e).toMatchObject({ seq: 3, ts: 1_000_030n, group: "C1", link: 3, target: "s3a", op: OP_WRITE, offset: 2 * 4096, length: 4096 });
    expect(e.data!.equals(Buffer.alloc(4096, 3))).toBe(true);
  });

  it("journal: a zero entry keeps a null payload", async () => {
    const j = new Journal(fileStateStore(db), realRuntime);
    await j.append(entry(1, 3, 0, { op: OP_ZERO, data: null, length: 1 << 20 }));
    expect(j.readLink(3, 0, 10)[0]).toMatchObject({ op: OP_ZERO, data: null, length: 1 << 20 });
  });

  it("journal: trim deletes only up to the given seq of each link", async () => {
    const j = new Journal(fileStateStore(db), realRuntime);
    await Promise.all(Array.from({ length: 12 }, (_, i) => j.append(entry(i + 1, 3 + (i % 3)))));
    // link 3: 1 4 7 10; link 4: 2 5 8 11; link 5: 3 6 9 12
    j.trim(new Map([[3, 7], [4, 2]]));
    expect(j.readLink(3, 0, 100).map((e) => e.seq)).toEqual([10]);
    expect(j.readLink(4, 0, 100).map((e) => e.seq)).toEqual([5, 8, 11]);
    expect(j.readLink(5, 0, 100).map((e) => e.seq)).toEqual([3, 6, 9, 12]);
    j.trim(new Map([[3, 0]]));
    expect(j.counts().entries).toBe(8);
  });

  it("journal: replay yields every entry of every link in seq order, with its primary volume", async () => {
    const j = new Journal(fileStateStore(db), realRuntime);
    const seqs = [9, 2, 7, 1, 5];
    await Promise.all(seqs.map((s) => j.append(entry(s, s > 4 ? 4 : 3, 0, { volume: s > 4 ? "p1b" : "p1a" }))));
    await j.append(entry(10, 5));
    const replayed = [...new Journal(fileStateStore(db), realRuntime).replay()];
    expect(replayed.map((e) => e.seq)).toEqual([1, 2, 5, 7, 9, 10]);
    expect(replayed.map((e) => e.volume)).toEqual(["p1a", "p1a", "p1b", "p1b", "p1b", "p1a"]);
    expect(replayed.map((e) => e.link)).toEqual([3, 3, 4, 4, 4, 5]);
    expect(replayed[0].data!.equals(Buffer.alloc(4096, 1))).toBe(true);
  });

  it("journal: replay after reopening the state file (the WAL survives close)", async () => {
    const j = new Journal(fileStateStore(db), realRuntime);
    await Promise.all([1, 2, 3].map((s) => j.append(entry(s, 3))));
    db.close();
    db = openState(file);
    expect([...new Journal(fileStateStore(db), realRuntime).replay()].map((e) => e.seq)).toEqual([1, 2, 3]);
  });
});

describe("journal: activity log and floors", () => {
  const hotRows = () => db.prepare("SELECT volume, region FROM activity ORDER BY volume, region").all();

  it("journal: the first write to a region marks it hot in the same commit; cool() removes it (3 regions)", async () => {
    const j = new Journal(fileStateStore(db), realRuntime);
    const R = ACTIVITY_REGION_BYTES;
    await Promise.all([
      j.append(entry(1, 3, 0)),
      j.append(entry(2, 3, 4096)),
      // Straddles regions 1 and 2.
      j.append(entry(3, 3, 2 * R - 4096, { length: 8192, data: Buffer.alloc(8192) })),
    ]);
    expect(hotRows()).toEqual([
      { volume: "p1a", region: 0 },
      { volume: "p1a", region: 1 },
      { volume: "p1a", region: 2 },
    ]);
    expect([0, 1, 2, 3].map((r) => j.isHot("p1a", r))).toEqual([true, true, true, false]);
    j.cool([["p1a", 1]]);
    expect(j.isHot("p1a", 1)).toBe(false);
    expect(hotRows()).toEqual([
      { volume: "p1a", region: 0 },
      { volume: "p1a", region: 2 },
    ]);
    // Written again: hot again.
    await j.append(entry(4, 3, R));
    expect(j.isHot("p1a", 1)).toBe(true);
    expect(hotRows()).toHaveLength(3);
  });

  it("journal: a new journal on the same file knows the hot regions (after a restart)", async () => {
    const j = new Journal(fileStateStore(db), realRuntime);
    await j.append(entry(1, 3, 5 * ACTIVITY_REGION_BYTES, { volume: "p2b" }));
    const k = new Journal(fileStateStore(db), realRuntime);
    expect(k.isHot("p2b", 5)).toBe(true);
    expect(k.counts().hotRegions).toBe(1);
  });

  it("journal: the commit that marks a region hot runs with synchronous=FULL, and NORMAL is restored", async () => {
    const j = new Journal(fileStateStore(db), realRuntime);
    const levels: number[] = [];
    const original = db.transaction.bind(db);
    db.transaction = ((fn: (...a: unknown[]) => unknown) =>
      original((...a: unknown[]) => {
        levels.push(db.pragma("synchronous", { simple: true }) as number);
        return fn(...a);
      })) as Db["transaction"];
    await j.append(entry(1, 3, 0)); // new region 0
    await j.append(entry(2, 3, 4096)); // region 0 already hot
    expect(levels).toEqual([2, 1]); // FULL, then NORMAL
    expect(db.pragma("synchronous", { simple: true })).toBe(1);
  });

  it("journal: a commit raises the stamp floor; seqs resume above a durable lease; floors never go down", async () => {
    const j = new Journal(fileStateStore(db), realRuntime);
    expect(j.floorsNow()).toEqual({ tsFloor: 0n, seqFloor: 0 });
    await Promise.all([j.append(entry(3, 3)), j.append(entry(1, 4)), j.append(entry(2, 5))]);
    // The first commit leased seqs up to 3 + SEQ_LEASE_SPAN in a FULL commit: a restart resumes there,
    // so no seq the secondary may hold is issued twice even if later NORMAL commits are lost.
    expect(j.floorsNow()).toEqual({ tsFloor: 1_000_030n, seqFloor: 3 + SEQ_LEASE_SPAN });
    j.raiseTsFloor(9_000_000_000n);
    expect(j.floorsNow()).toEqual({ tsFloor: 9_000_000_000n, seqFloor: 3 + SEQ_LEASE_SPAN });
    j.raiseTsFloor(5n);
    await j.append(entry(4, 3));
    expect(j.floorsNow()).toEqual({ tsFloor: 9_000_000_000n, seqFloor: 3 + SEQ_LEASE_SPAN });
    expect(db.prepare("SELECT seq_floor FROM stamp").get()).toEqual({ seq_floor: 4 });
    // Past the lease, the next commit takes a new one.
    await j.append(entry(SEQ_LEASE_SPAN + 10, 3));
    expect(j.floorsNow().seqFloor).toBe(2 * SEQ_LEASE_SPAN + 10);
    // Trimming every entry keeps the floors: they outlive the journal rows.
    j.trim(new Map([[3, 1 << 30], [4, 100], [5, 100]]));
    expect(j.counts().entries).toBe(0);
    expect(new Journal(fileStateStore(db), realRuntime).floorsNow()).toEqual({ tsFloor: 9_000_000_000n, seqFloor: 2 * SEQ_LEASE_SPAN + 10 });
  });

  it("journal: barrier() commits with synchronous=FULL and leaves NORMAL", () => {
    const j = new Journal(fileStateStore(db), realRuntime);
    j.barrier();
    j.barrier();
    expect(db.prepare("SELECT value FROM meta WHERE key = 'barrier'").get()).toEqual({ value: "2" });
    expect(db.pragma("synchronous", { simple: true })).toBe(1);
  });
});

describe("journal: a failing database", () => {
  it("journal: a closed database rejects every append of the batch (regions already hot), and the journal keeps no trace", async () => {
    const j = new Journal(fileStateStore(db), realRuntime);
    await j.append(entry(1, 3, 0)); // region 0 is hot from here on
    const batch = Array.from({ length: 20 }, (_, i) => j.append(entry(i + 2, 3, (i + 1) * 4096)));
    db.close();
    const settled = await Promise.allSettled(batch);
    expect(settled.every((s) => s.status === "rejected")).toBe(true);
    expect((settled[0] as PromiseRejectedResult).reason.message).toMatch(/not open/);
  });

  it("journal: a read-only database rejects every append of the batch (opened readonly)", async () => {
    await new Journal(fileStateStore(db), realRuntime).append(entry(1, 3, 0));
    db.close();
    db = new Database(file, { readonly: true });
    const j = new Journal(fileStateStore(db), realRuntime);
    const settled = await Promise.allSettled([j.append(entry(2, 3, 4096)), j.append(entry(3, 4, 8192))]);
    expect(settled.map((s) => s.status)).toEqual(["rejected", "rejected"]);
    expect((settled[0] as PromiseRejectedResult).reason.message).toMatch(/readonly/);
  });

  it("journal: a duplicate seq fails the whole batch, and the batch's new regions are not left hot", async () => {
    const j = new Journal(fileStateStore(db), realRuntime);
    await j.append(entry(1, 3, 0));
    const settled = await Promise.allSettled([j.append(entry(2, 3, 9 * ACTIVITY_REGION_BYTES)), j.append(entry(1, 3, 4096))]);
    expect(settled.map((s) => s.status)).toEqual(["rejected", "rejected"]);
    expect(j.isHot("p1a", 9)).toBe(false);
    expect(j.readLink(3, 0, 10).map((e) => e.seq)).toEqual([1]);
    // The journal goes on working after a failed batch.
    await j.append(entry(2, 3, 4096));
    expect(j.readLink(3, 0, 10).map((e) => e.seq)).toEqual([1, 2]);
  });

  // Known bug (reported, not fixed here: product code): when the failing batch
  // also turns a region hot, commit()'s `finally` runs
  // db.pragma("synchronous = NORMAL") on the dead connection, which throws out
  // of the setImmediate callback: an uncaught exception, i.e. exit 70 in a
  // subsystem. Fake timers let the test see that throw instead of crashing the
  // worker. Drop `.fails` once journal.ts guards the restore.
  it("journal: a closed database rejects a batch that turns a region hot, without throwing out of the commit", async () => {
    vi.useFakeTimers({ toFake: ["setImmediate"] });
    const j = new Journal(fileStateStore(db), realRuntime);
    const batch = [j.append(entry(1, 3, 0)), j.append(entry(2, 3, ACTIVITY_REGION_BYTES))];
    const settled = Promise.allSettled(batch);
    db.close();
    expect(() => vi.runAllTimers()).not.toThrow();
    expect((await settled).map((s) => s.status)).toEqual(["rejected", "rejected"]);
  });
});

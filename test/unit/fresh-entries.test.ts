// The sender's in-memory queue against the rows it stands in for: whatever a
// take returns must be exactly what the SQLite query (every committed entry
// after the seq, in order, under the same limits) would have returned.
import { describe, expect, it } from "vitest";
import { FreshEntries, type FreshEntry } from "../../appliance/primary/fresh-entries.ts";

function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s * 1664525 + 1013904223) >>> 0;
    return s / 2 ** 32;
  };
}

/** What readLink's query returns from the rows. */
function fromRows(rows: FreshEntry[], afterSeq: number, limit: number, bytesMax: number): FreshEntry[] {
  const out: FreshEntry[] = [];
  let bytes = 0;
  for (const r of rows) {
    if (r.seq <= afterSeq) continue;
    if (out.length >= limit || (out.length > 0 && bytes >= bytesMax)) break;
    out.push(r);
    bytes += r.data?.length ?? 0;
  }
  return out;
}

describe("fresh entries", () => {
  it("a take returns the rows' answer or null, over 200 random histories with resends, trims and resets", () => {
    let served = 0;
    let fellBack = 0;
    for (let seed = 1; seed <= 200; seed++) {
      const r = rng(seed);
      const rows: FreshEntry[] = [];
      let seq = Math.floor(r() * 10);
      const q = new FreshEntries<FreshEntry>(seq, 64 * 1024, 40);
      let sent = seq;
      let acked = seq;
      for (let step = 0; step < 400; step++) {
        const x = r();
        if (x < 0.5) {
          // A commit of a few entries (seqs skip: other links take some).
          for (let k = Math.floor(r() * 5); k >= 0; k--) {
            seq += 1 + Math.floor(r() * 3);
            const e = { seq, data: r() < 0.2 ? null : Buffer.alloc(Math.floor(r() * 8192)) };
            rows.push(e);
            q.push(e);
          }
        } else if (x < 0.85) {
          const limit = 1 + Math.floor(r() * 16);
          const bytesMax = 1 + Math.floor(r() * 32768);
          const want = fromRows(rows, sent, limit, bytesMax);
          const got = q.take(sent, limit, bytesMax);
          if (got === null) fellBack++;
          else {
            served++;
            const a = got.map((e) => e.seq).join(",");
            const b = want.map((e) => e.seq).join(",");
            if (a !== b) expect(`seed ${seed} step ${step}: ${a}`).toBe(`seed ${seed} step ${step}: ${b}`);
          }
          if (want.length > 0) sent = want[want.length - 1].seq;
        } else if (x < 0.95) {
          // An ack, then a trim of the rows up to it.
          acked = acked + Math.floor(r() * (sent - acked + 1));
          while (rows.length > 0 && rows[0].seq <= acked) rows.shift();
          q.trimmed(acked);
        } else if (x < 0.98) {
          // A reconnect: the sender resends from its last ack.
          sent = acked;
        } else {
          // Rows dropped otherwise (a suspension): every one of them here.
          rows.length = 0;
          q.reset(seq);
          acked = sent = seq;
        }
        if (q.length > 40 || q.bytes > 64 * 1024 + 8192) expect({ seed, step, length: q.length, bytes: q.bytes }).toBe("within the bounds");
      }
    }
    // Both ways were taken: the comparison above was not vacuous.
    expect(served).toBeGreaterThan(1000);
    expect(fellBack).toBeGreaterThan(100);
  });

  it("an entry that is not the link's newest sends every read below it to SQLite", () => {
    const q = new FreshEntries<FreshEntry>(5, 1024, 10);
    q.push({ seq: 6, data: null });
    q.push({ seq: 8, data: null });
    q.push({ seq: 7, data: null });
    expect(q.take(5, 10, 1024)).toBeNull();
    expect(q.take(8, 10, 1024)).toEqual([]);
    q.push({ seq: 9, data: null });
    expect(q.take(8, 10, 1024)!.map((e) => e.seq)).toEqual([9]);
  });
});

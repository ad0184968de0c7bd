// What the simulation knows from outside the engines, and the checks it
// makes with it. It records every host write (in the order each block saw
// them), every stamp the primaries hand out (through PrimaryProbe), every
// apply (SecondaryProbe) and every ack a secondary sends (on the network).
// From that alone, not from the engines' word, it judges:
//   - DESIGN.md's Timestamps rule: a write gets a stamp above every stamp
//     already acknowledged to a host when it was issued;
//   - every acknowledged write is on its primary after a restart (or a
//     write that came after it), unless a power cut may have taken it;
//   - after a procedure at Ts, each secondary block holds the last write
//     with ts <= Ts that it must hold, or one after it and still <= Ts;
//   - where a primary and its secondary differ, a bitmap says so.
import { SIM_BLOCK_BYTES } from "./cluster.ts";

/** One write as the oracle knows it: a host write (with or without a stamp) or a copy. */
export interface WriteRec {
  id: number;
  primary: number;
  volume: string;
  /** First block and block count. */
  block: number;
  blocks: number;
  /** The bytes, or null for zeroes. */
  data: Buffer | null;
  host: boolean;
  fua: boolean;
  ts: bigint | null;
  seq: number | null;
  /** Greatest stamp acknowledged to any host when this write was issued. */
  ackedTsAtIssue: bigint;
  hostAcked: boolean;
  /** Order of acknowledgement, and the acknowledgements there were when it was issued. */
  ackIndex: number;
  issueIndex: number;
  /** A power cut of its primary may have taken it (not durable when the power went). */
  fragile: boolean;
  /** Durable on its primary: FUA, or acknowledged before a FUA write of that primary was issued (the FUA's barrier covers it). */
  durable: boolean;
  copy: boolean;
}

export class SimFailure extends Error {
  constructor(message: string) {
    super(message);
    this.name = "SimFailure";
  }
}

function fail(message: string): never {
  throw new SimFailure(message);
}

/** Host writes carry their id in the first 8 bytes of each block, so a block tells whose it is. */
export function hostBlock(id: number, block: number): Buffer {
  const b = Buffer.alloc(SIM_BLOCK_BYTES, (id * 31 + block) & 0xff);
  b.writeUInt32BE(0x7464_6d6b, 0);
  b.writeUInt32BE(id, 4);
  b.writeUInt32BE(block, 8);
  return b;
}

export function describeBlock(b: Buffer): string {
  if (b.every((x) => x === 0)) return "zeroes";
  if (b.readUInt32BE(0) === 0x7464_6d6b) return `host write #${b.readUInt32BE(4)}`;
  return "other bytes";
}

export class Oracle {
  readonly writes: WriteRec[] = [];
  private nextId = 1;
  /** Per primary volume block: the writes that reached it, in the order they were issued. */
  private readonly history = new Map<string, WriteRec[]>();
  private readonly byTsKey = new Map<string, WriteRec>();
  maxAckedTs = 0n;
  private ackCounter = 0;
  /** RCRs delivered to a secondary and not yet covered by its ack, per primary:secondary. */
  private readonly receivedSeqs = new Map<string, number[]>();
  /** primary:seq of every RCR a secondary acknowledged (durably queued). */
  private readonly ackedBySecondary = new Set<string>();

  private key(volume: string, block: number): string {
    return `${volume}\u0000${block}`;
  }

  /** A host issues a write: it is now in the history of its blocks. */
  issue(primary: number, volume: string, block: number, blocks: number, fua: boolean): WriteRec {
    const w: WriteRec = {
      id: this.nextId++,
      primary,
      volume,
      block,
      blocks,
      data: null,
      host: true,
      fua,
      ts: null,
      seq: null,
      ackedTsAtIssue: this.maxAckedTs,
      ackIndex: Number.POSITIVE_INFINITY,
      issueIndex: this.ackCounter,
      hostAcked: false,
      fragile: false,
      durable: false,
      copy: false,
    };
    const parts: Buffer[] = [];
    for (let i = 0; i < blocks; i++) parts.push(hostBlock(w.id, block + i));
    w.data = Buffer.concat(parts);
    this.writes.push(w);
    for (let i = 0; i < blocks; i++) {
      const k = this.key(volume, block + i);
      let h = this.history.get(k);
      if (!h) this.history.set(k, (h = []));
      h.push(w);
    }
    return w;
  }

  /**
   * What a primary volume held before the group's first start (an existing
   * volume paired: its initial copy carries it): durable, so it must stay
   * until a host write replaces it.
   */
  base(primary: number, volume: string, block: number, data: Buffer): void {
    const w: WriteRec = {
      id: this.nextId++,
      primary,
      volume,
      block,
      blocks: 1,
      data,
      host: true,
      fua: true,
      ts: null,
      seq: null,
      ackedTsAtIssue: 0n,
      ackIndex: 0,
      issueIndex: 0,
      hostAcked: true,
      fragile: false,
      durable: true,
      copy: false,
    };
    this.writes.push(w);
    this.history.set(this.key(volume, block), [w]);
  }

  /** PrimaryProbe.stamped: a host write or a copy got its stamp. */
  stamped(e: { primary: number; volume: string; offset: number; length: number; ts: bigint; seq: number; copy: boolean; data: Buffer | null }): void {
    const block = Math.floor(e.offset / SIM_BLOCK_BYTES);
    const blocks = Math.ceil(e.length / SIM_BLOCK_BYTES);
    let w: WriteRec | undefined;
    if (!e.copy) {
      if (!e.data) fail(`primary #${e.primary}: a stamped host write to ${e.volume} has no data; the simulated hosts send none`);
      const id = e.data.readUInt32BE(4);
      w = this.writes[id - 1];
      if (!w || w.volume !== e.volume || w.block !== block) fail(`primary #${e.primary}: stamped write ${e.volume}@${block} is not the host write #${id} it carries`);
      if (w.ts !== null) fail(`primary #${e.primary}: host write #${id} stamped twice (${w.ts}, then ${e.ts})`);
      // DESIGN.md, Timestamps: above every stamp acknowledged before the write was issued.
      if (e.ts <= w.ackedTsAtIssue) {
        fail(`primary #${e.primary}: host write #${id} stamped ${e.ts}, not above ${w.ackedTsAtIssue}, a stamp acknowledged to a host before it was issued (dependent writes inverted)`);
      }
      w.ts = e.ts;
      w.seq = e.seq;
    } else {
      w = {
        id: this.nextId++,
        primary: e.primary,
        volume: e.volume,
        block,
        blocks,
        data: e.data ? Buffer.from(e.data) : null,
        host: false,
        fua: false,
        ts: e.ts,
        seq: e.seq,
        ackedTsAtIssue: 0n,
      ackIndex: 0,
      issueIndex: 0,
        hostAcked: false,
        fragile: false,
      durable: false,
        copy: true,
      };
      this.writes.push(w);
    }
    // A seq issued again: the incarnation that issued it first died before
    // its journal commit was durable (a seq lease, or the row, lost to a
    // kill or a power cut), so nothing of that write left the primary under
    // it. Acks of the seq are the new write's (seed 615017).
    const prev = this.byTsKey.get(`${e.primary}:${e.seq}`);
    if (prev && prev !== w) {
      if (prev.host && prev.hostAcked && !prev.fragile) {
        fail(`primary #${e.primary}: seq ${e.seq} issued again (to ${w.host ? `host write #${w.id}` : "a copy"}) after host write #${prev.id} was acknowledged with it`);
      }
      prev.seq = null;
    }
    this.byTsKey.set(`${e.primary}:${e.seq}`, w);
  }

  acked(w: WriteRec): void {
    w.hostAcked = true;
    if (w.fua) {
      // FUA syncs the journal (every row and payload) and its volume: what was acknowledged before it was issued is durable.
      w.durable = true;
      // A journaled FUA write's barrier covers every journal row; the volume sync only the FUA write's own volume
      // (unreplicated writes live there alone). A FUA write that was not journaled (its group suspended, or a
      // taken-over secondary's volume on the same subsystem) syncs its volume only (seed 505062).
      for (const x of this.writes) {
        if (x.primary === w.primary && x.host && x.hostAcked && x.ackIndex < w.issueIndex && ((w.seq !== null && x.seq !== null) || x.volume === w.volume)) x.durable = true;
      }
    }
    w.ackIndex = ++this.ackCounter;
    if (w.ts !== null && w.ts > this.maxAckedTs) this.maxAckedTs = w.ts;
  }

  /** An RCR frame reached a secondary: its records may be acknowledged later. */
  received(primary: number, secondary: number, seqs: readonly number[]): void {
    const k = `${primary}:${secondary}`;
    let r = this.receivedSeqs.get(k);
    if (!r) this.receivedSeqs.set(k, (r = []));
    r.push(...seqs);
  }

  /**
   * An ack frame from a secondary to a primary: every RCR received with a
   * seq up to it is durably queued. (Acks are cumulative over what exists:
   * a seq never committed on the primary is covered by no ack.)
   */
  secondaryAck(primary: number, secondary: number, seq: number): void {
    const r = this.receivedSeqs.get(`${primary}:${secondary}`);
    if (!r) return;
    const keep: number[] = [];
    for (const s of r) {
      if (s <= seq) this.ackedBySecondary.add(`${primary}:${s}`);
      else keep.push(s);
    }
    this.receivedSeqs.set(`${primary}:${secondary}`, keep);
  }

  private isSecondaryAcked(w: WriteRec): boolean {
    return w.seq !== null && this.ackedBySecondary.has(`${w.primary}:${w.seq}`);
  }

  /**
   * A power cut of subsystem `id`. As a primary: what no FUA made durable
   * may be gone, the way a disk's cache loses unflushed writes (NBD promises
   * no more): a journal row may survive while its payload is torn, and an
   * unreplicated write lives only in the page cache. As a secondary: RCRs it
   * received and had not acknowledged may be gone (a torn queue tail). A
   * later cumulative ack then does not cover them: their primary resends
   * them (received again), or lost them too in a power cut of its own, and
   * goes on with seqs above them (seed 10154 of the power-cut sweep: an ack
   * of seq 65539 was taken to cover a seq 93 that neither side held).
   */
  powerCut(id: number): void {
    for (const w of this.writes) if (w.primary === id && w.host && !w.durable && !w.fua) w.fragile = true;
    for (const k of this.receivedSeqs.keys()) if (k.endsWith(`:${id}`)) this.receivedSeqs.set(k, []);
  }

  /**
   * A kill -9 of subsystem `id`. As a secondary: RCRs it received and had not
   * yet committed to its queue are gone with its memory, while what it
   * committed stays (its link_seq; `committedSeq`) and is acknowledged after
   * the restart. A later cumulative ack does not cover the lost ones: their
   * primary resends them, or lost them in a power cut of its own and goes on
   * with seqs above them (seed 671492 of the power-cut sweep: seq 68 reached
   * #3 just before its kill, a power cut of #1 then took it from #1's journal,
   * and #3's ack of seq 65541 was taken to cover it).
   */
  killed(id: number, committedSeq: (primary: number) => number): void {
    for (const [k, seqs] of this.receivedSeqs) {
      const [primary, secondary] = k.split(":").map(Number);
      if (secondary !== id) continue;
      const upTo = committedSeq(primary);
      this.receivedSeqs.set(k, seqs.filter((s) => s <= upTo));
    }
  }

  /** Must this write be on its primary (after a restart)? Acknowledged and not exposed to a power cut. */
  private mustBeOnPrimary(w: WriteRec): boolean {
    return w.host && w.hostAcked && !w.fragile;
  }

  /**
   * After a primary's restart: every block holds its last write that must be
   * there, or a write issued after it (in flight when it died).
   */
  checkPrimary(primary: number, volume: string, blocks: number, read: (block: number) => Buffer, where = `primary #${primary} ${volume}`, when = "after restart"): void {
    for (let b = 0; b < blocks; b++) {
      const h = (this.history.get(this.key(volume, b)) ?? []).filter((w) => w.primary === primary);
      let k = -1;
      for (let i = 0; i < h.length; i++) if (this.mustBeOnPrimary(h[i])) k = i;
      const got = read(b);
      const allowed = h.slice(Math.max(0, k));
      if (allowed.some((w) => sliceOf(w, b).equals(got))) continue;
      if (k === -1 && got.every((x) => x === 0)) continue;
      const must = k >= 0 ? h[k] : null;
      fail(
        `${where} block ${b} ${when} holds ${describeBlock(got)}, but ${must ? `host write #${must.id} (ts ${must.ts}, acknowledged${must.fua ? ", FUA" : ""}) or a later one` : "zeroes or a write"} must be there: an acknowledged write was lost`,
      );
    }
  }

  /**
   * After a procedure cut at ts: a secondary block holds the last write to
   * its primary block with ts <= cut that must be there (acknowledged by the
   * secondary, or acknowledged to the host and durable on the primary, so
   * the primary's SYNC covered it), or a later one still <= cut. `base` is
   * what the block held before (the image the group rested at).
   */
  checkSecondary(cut: bigint, primaryVolume: string, target: string, block: number, got: Buffer, base: Buffer): void {
    const stamped = this.writes.filter((w) => w.volume === primaryVolume && w.ts !== null && w.ts <= cut && w.block <= block && block < w.block + w.blocks);
    stamped.sort((a, b) => (a.ts! < b.ts! ? -1 : 1));
    let k = -1;
    for (let i = 0; i < stamped.length; i++) {
      const w = stamped[i];
      if (this.isSecondaryAcked(w) || (w.hostAcked && !w.fragile)) k = i;
    }
    const allowed = stamped.slice(Math.max(0, k));
    if (allowed.some((w) => sliceOf(w, block).equals(got))) return;
    if (k === -1 && got.equals(base)) return;
    const must = k >= 0 ? stamped[k] : null;
    const above = this.writes.find((w) => w.volume === primaryVolume && w.ts !== null && w.ts > cut && w.block <= block && block < w.block + w.blocks && sliceOf(w, block).equals(got));
    fail(
      `secondary ${target} block ${block} (of ${primaryVolume}) holds ${describeBlock(got)}${above ? ` stamped ${above.ts}, above the cut ${cut}` : ""}; ` +
        `expected ${must ? `${must.copy ? "the copy" : `host write #${must.id}`} (ts ${must.ts}) or a later write <= ${cut}` : "the image it rested at or a write <= the cut"}`,
    );
  }
}

/** The bytes a write put in one of its blocks. */
export function sliceOf(w: WriteRec, block: number): Buffer {
  if (!w.data) return Buffer.alloc(SIM_BLOCK_BYTES);
  const i = block - w.block;
  return w.data.subarray(i * SIM_BLOCK_BYTES, (i + 1) * SIM_BLOCK_BYTES);
}

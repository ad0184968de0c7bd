// The primary's copier (docs/resync.md, steps 4-5): copies a group's bitmap
// blocks and the initial-copy cursors of its volumes through the same stamped,
// journaled path as host writes, then waits for every copy to be
// acknowledged and marks the group copied (C_k). A copier belongs to one
// resync generation: it stops when that generation ends, and the next
// resync's copier starts only once it has stopped (issue 17, race 3).
import type { Db } from "../state/database.ts";
import type { BitmapWriter } from "../state/bitmap-writer.ts";
import type { Journal } from "../primary/journal.ts";
import type { PrimaryBinding } from "../primary/primary.ts";
import type { RangeLock } from "../primary/range-lock.ts";
import type { Runtime } from "../runtime/runtime.ts";
import type { NegativeControls } from "../runtime/controls.ts";
import type { Logger } from "pino";
import { BITMAP_BLOCK_BYTES } from "./blocks.ts";

/** Largest copy with data: one range lock, one read, one RCR. */
export const COPY_RUN_BYTES = 1024 * 1024;
/** Largest zero run (a hole of a sparse file): no payload, so it may be long. */
export const COPY_ZERO_RUN_BYTES = 64 * 1024 * 1024;
/** Copies in flight per group: the read of one overlaps the journal commit of another. */
const COPY_WORKERS = 4;
/** The copier waits while the journal holds more than this (host writes take precedence). */
export const COPY_JOURNAL_BYTES = 64 * 1024 * 1024;
/**
 * A copy run waits at most this long for host writes to drain the journal:
 * with 4 workers of 1 MiB runs, a resync under any load copies at least
 * 20 MiB/s (the floor is in docs/resync.md).
 */
export const COPY_STARVED_MS = 200;
const ZEROES = Buffer.alloc(COPY_RUN_BYTES);

/** A copy's progress (status, progress bars). */
export interface CopyProgress {
  startedAtMs: number;
  /** Blocks to copy when the copier (re)started, and blocks copied since. */
  totalBlocks: number;
  doneBlocks: number;
  /** Bytes sent with data (zero runs travel without payload). */
  dataBytes: number;
  zeroBytes: number;
  runs: number;
  phase: "copying" | "acknowledging";
}

/** What the copier sees of a group of its engine. */
export interface CopiedGroup {
  state: string;
  generation: number;
  copy: CopyProgress | null;
  /** Replicated writes and copies between stamping and journal commit. */
  inflight: number;
  idle: (() => void)[];
}

export interface CopiedBinding extends PrimaryBinding {
  lock: RangeLock;
}

export interface CopyTuning {
  copyRunBytes: number;
  copyZeroRunBytes: number;
  copyJournalBytes: number;
  copyStarvedMs: number;
}

/** The engine's side of a copy: the write path's stamping step and what only the engine knows. */
export interface CopierHost {
  id: number;
  db: Db;
  journal: Journal;
  bitmap: BitmapWriter;
  runtime: Runtime;
  logger: Logger;
  tuning: CopyTuning;
  journalBytesMax: number;
  syncIntervalMs: number;
  controls?: NegativeControls;
  group(name: string): CopiedGroup;
  bindingsOf(group: string): CopiedBinding[];
  stopped(): boolean;
  /** Resolves at the next trim, or after 50 ms. */
  trimmed(): Promise<void>;
  /**
   * The write path's stamping step for a copy, then its journal append:
   * stamp, seq, pending and the append are one synchronous step.
   */
  journalCopy(b: CopiedBinding, offset: number, length: number, data: Buffer | null): Promise<void>;
  /** Per link: the last seq issued, the last acknowledged, the highest issued on any link. */
  issuedOn(link: number): number;
  ackedOn(link: number): number;
  /**
   * Whether some seq <= `upTo` on the link is still awaited (stamped, not yet
   * acknowledged, and not dropped with a group that a suspension or takeover
   * turned into bitmap blocks).
   */
  awaitedUpTo(link: number, upTo: number): boolean;
  lastSeq(): number;
  /** Every copy is acknowledged: the group goes active with C_k (durably). */
  copied(group: string): void;
}

interface CopyRun {
  kind: "bitmap" | "cursor";
  offset: number;
  length: number;
  /** Known zero without reading (a hole). */
  zero: boolean;
  /** For bitmap runs: the blocks it clears. */
  blocks: number[];
}

export class Copier {
  /** Per group: the running copier and the generation it copies for. */
  private readonly running = new Map<string, { generation: number; done: Promise<void> }>();
  private readonly cursor;

  constructor(private readonly h: CopierHost) {
    const db = h.db;
    this.cursor = {
      get: db.prepare("SELECT next_off FROM copy_cursor WHERE volume = ?").pluck(true),
      all: db.prepare("SELECT volume FROM copy_cursor").pluck(true),
      move: db.prepare("UPDATE copy_cursor SET next_off = ? WHERE volume = ?"),
      done: db.prepare("DELETE FROM copy_cursor WHERE volume = ?"),
    };
  }

  /** Volumes with an initial-copy cursor. */
  cursorVolumes(): string[] {
    return this.cursor.all.all() as string[];
  }

  /**
   * Starts the group's copier for its current generation. One still running
   * for an older generation stops on its own (its generation ended); this
   * one starts after it, so two never share the group's cursors and bitmap.
   */
  start(group: string): void {
    const gs = this.h.group(group);
    const generation = gs.generation;
    const cur = this.running.get(group);
    // The negative control keeps the old rule: one copier per group, whatever its generation.
    if (cur && (cur.generation === generation || this.h.controls?.copierOutlivesGeneration)) return;
    const after = cur?.done ?? Promise.resolve();
    const done = after
      .then(() => this.copyGroup(group, generation))
      .catch((err: Error) => {
        this.h.logger.error({ group, err: err.message }, "copier stopped on an error; it resumes from the bitmap at the next resync or restart");
        if (gs.copy) gs.copy.phase = "copying";
      })
      .finally(() => {
        if (this.running.get(group)?.done === done) this.running.delete(group);
      });
    this.running.set(group, { generation, done });
  }

  /** Blocks still to copy in the group: bitmap rows plus what the cursors have left. */
  remainingBlocks(group: string): number {
    let n = 0;
    for (const b of this.h.bindingsOf(group)) {
      n += this.h.bitmap.count(b.volume.name);
      const next = this.cursor.get.get(b.volume.name) as number | undefined;
      if (next !== undefined) n += Math.ceil((b.volume.sizeBytes - next) / BITMAP_BLOCK_BYTES);
    }
    return n;
  }

  /** What status and the RCM show of a group's copy. */
  status(group: string, copiedTs: bigint | null) {
    const gs = this.h.group(group);
    const c = gs.copy;
    const remaining = this.remainingBlocks(group);
    const elapsed = c ? Math.max(1, this.h.runtime.nowMs() - c.startedAtMs) : 0;
    const rate = c ? (c.dataBytes + c.zeroBytes) / (elapsed / 1000) : 0;
    return {
      subsystem: this.h.id,
      group,
      state: gs.state,
      generation: gs.generation,
      copiedTs: copiedTs?.toString() ?? null,
      remainingBlocks: remaining,
      copy: c
        ? {
            phase: c.phase,
            totalBlocks: Math.max(c.totalBlocks, c.doneBlocks + remaining),
            doneBlocks: c.doneBlocks,
            dataBytes: c.dataBytes,
            zeroBytes: c.zeroBytes,
            elapsedMs: elapsed,
            bytesPerSecond: Math.round(rate),
            etaMs: rate > 0 ? Math.round(((remaining * BITMAP_BLOCK_BYTES) / rate) * 1000) : null,
          }
        : null,
    };
  }

  private async copyGroup(group: string, generation: number): Promise<void> {
    const gs = this.h.group(group);
    // The generation ended while this copier waited for the one before it.
    if (gs.generation !== generation || gs.state !== "copying" || this.h.stopped()) return;
    try {
      await this.copyAll(group, gs, generation);
    } finally {
      gs.copy = null;
    }
  }

  private async copyAll(group: string, gs: CopiedGroup, generation: number): Promise<void> {
    const { h } = this;
    // The generation is part of it: a suspension and a new resync within one
    // sleep would otherwise leave this copier finishing the new resync
    // without reading the bitmap it merged.
    const copying = () =>
      gs.state === "copying" && !h.stopped() && (gs.generation === generation || h.controls?.copierOutlivesGeneration === true);
    gs.copy = { startedAtMs: h.runtime.nowMs(), totalBlocks: this.remainingBlocks(group), doneBlocks: 0, dataBytes: 0, zeroBytes: 0, runs: 0, phase: "copying" };
    const vols = h.bindingsOf(group);
    for (;;) {
      let any = false;
      for (const b of vols) {
        const runs = this.copyRuns(b);
        const inFlight = new Set<CopyRun>();
        const dispatched = { end: 0 };
        const workers = Array.from({ length: COPY_WORKERS }, async () => {
          for (;;) {
            if (!copying()) return;
            const r = runs.next();
            if (r.done) return;
            any = true;
            inFlight.add(r.value);
            if (r.value.kind === "cursor") dispatched.end = r.value.offset + r.value.length;
            // A run not copied (the group left copying meanwhile) stays in
            // flight for good: no cursor may move past it.
            const done = await this.copyRun(b, gs, r.value, copying);
            if (done === "stopped") return;
            // A hole filled meanwhile stays in flight, so no cursor moves past it; the next pass reads it.
            if (done === "rescan") continue;
            inFlight.delete(r.value);
            this.copyDone(b, r.value, inFlight, dispatched.end);
            gs.copy!.doneBlocks += r.value.length / BITMAP_BLOCK_BYTES;
            gs.copy!.runs++;
          }
        });
        await Promise.all(workers);
        if (!copying()) return;
      }
      if (!any) break;
    }
    // Every copy is journaled; C_k is sent once they are all acknowledged.
    gs.copy.phase = "acknowledging";
    const upTo = new Map([...new Set(vols.map((b) => b.link))].map((l) => [l, h.controls?.copiedWaitsForLastSeq ? h.lastSeq() : h.issuedOn(l)]));
    // Waits for what can still be acknowledged: a seq of another group that
    // a suspension or takeover dropped is never sent, and a cumulative ack
    // would pass it only with some later write on the link (finding 10 in
    // docs/simulation.md: the resync never ended with hosts idle).
    const awaited = ([l, seq]: [number, number]) => (h.controls?.copiedWaitsForLastSeq ? h.ackedOn(l) < seq : h.awaitedUpTo(l, seq));
    while (copying() && [...upTo].some(awaited)) {
      await h.runtime.sleep(Math.max(10, h.syncIntervalMs));
    }
    if (!copying()) return;
    h.copied(group);
  }

  /** Runs of one volume to copy: its bitmap (runs of set bits), then its initial-copy cursor. */
  private *copyRuns(b: CopiedBinding): Generator<CopyRun> {
    const { tuning } = this.h;
    const blocks = this.h.bitmap.blocks(b.volume.name);
    let i = 0;
    while (i < blocks.length) {
      let j = i + 1;
      while (j < blocks.length && blocks[j] === blocks[j - 1] + 1 && (j - i) * BITMAP_BLOCK_BYTES < tuning.copyRunBytes) j++;
      const offset = blocks[i] * BITMAP_BLOCK_BYTES;
      yield { kind: "bitmap", offset, length: Math.min((j - i) * BITMAP_BLOCK_BYTES, b.volume.sizeBytes - offset), zero: false, blocks: blocks.slice(i, j) };
      i = j;
    }
    const start = this.cursor.get.get(b.volume.name) as number | undefined;
    if (start === undefined) return;
    const size = b.volume.sizeBytes;
    let pos = start;
    while (pos < size) {
      const data = b.volume.nextData(pos);
      if (data > pos) {
        // A hole of a sparse file reads as zeroes: sent as a zero run, never read.
        const end = Math.min(data, pos + tuning.copyZeroRunBytes);
        yield { kind: "cursor", offset: pos, length: end - pos, zero: true, blocks: [] };
        pos = end;
        continue;
      }
      const end = Math.min(b.volume.nextHole(pos), pos + tuning.copyRunBytes, size);
      yield { kind: "cursor", offset: pos, length: end - pos, zero: false, blocks: [] };
      pos = end;
    }
  }

  /**
   * One copy: under the range lock host writes hold from stamping until their
   * volume write completes, read, then stamp, register pending and journal.
   */
  private async copyRun(b: CopiedBinding, gs: CopiedGroup, run: CopyRun, copying: () => boolean): Promise<"copied" | "stopped" | "rescan"> {
    const { h } = this;
    // Host writes take precedence, but not for ever: a load that keeps the
    // journal above the mark would starve a resync, which then never ends.
    // After copyStarvedMs the run goes anyway (a floor rate, as DRBD's
    // c-min-rate), unless the journal is near half its cap, where a copy could
    // be what suspends the group.
    const waitUntil = h.runtime.nowMs() + h.tuning.copyStarvedMs;
    const nearCap = () => h.journal.bytes + run.length > h.journalBytesMax / 2;
    while (h.journal.bytes > h.tuning.copyJournalBytes && (h.runtime.nowMs() < waitUntil || nearCap()) && copying()) await h.trimmed();
    const release = await b.lock.acquire(run.offset, run.length);
    gs.inflight++;
    try {
      if (!copying()) return "stopped";
      // A hole is a hole only under the lock: a host write may have filled it
      // since the run was chosen (it was stamped first, so zeroes stamped
      // after it would wipe it). The run is chosen again from the cursor.
      if (run.zero && !h.controls?.copyHoleOutsideLock && b.volume.nextData(run.offset) < run.offset + run.length) return "rescan";
      let data: Buffer | null = null;
      if (!run.zero) {
        data = await b.volume.read(run.offset, run.length);
        // A run of zeroes travels without payload.
        if (data.equals(ZEROES.subarray(0, data.length))) data = null;
      }
      if (!copying()) return "stopped";
      // Read, then stamp: under the lock no overlapping host write can come
      // between, so the copy holds exactly the writes stamped before it.
      await h.journalCopy(b, run.offset, run.length, data);
      // While still counted in flight: a suspension waiting for this copy then
      // finds either the bits set, or the journal entry it turns back into bits.
      if (run.kind === "bitmap") h.db.transaction(() => h.bitmap.clearNow(b.volume.name, run.blocks))();
      if (data) gs.copy!.dataBytes += run.length;
      else gs.copy!.zeroBytes += run.length;
      return "copied";
    } finally {
      release();
      if (--gs.inflight === 0) for (const w of gs.idle.splice(0)) w();
    }
  }

  /**
   * A copy is in the journal: its bits leave the bitmap, or the cursor moves
   * up to the lowest run still in flight (runs are handed out in order), so
   * a crash re-copies at most the runs in flight.
   */
  private copyDone(b: CopiedBinding, run: CopyRun, inFlight: ReadonlySet<CopyRun>, dispatchedEnd: number): void {
    if (run.kind === "bitmap") return;
    let next = dispatchedEnd;
    for (const r of inFlight) if (r.kind === "cursor" && r.offset < next) next = r.offset;
    const cursor = this.cursor.get.get(b.volume.name) as number | undefined;
    if (cursor === undefined || next <= cursor) return;
    if (next >= b.volume.sizeBytes) this.cursor.done.run(b.volume.name);
    else this.cursor.move.run(next, b.volume.name);
  }
}

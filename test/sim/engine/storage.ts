// The simulated disks of one subsystem's host: its SQLite state, payload
// segments and volumes. They outlive process incarnations (kill -9 keeps all
// that was written: the page cache), and a power cut keeps exactly what
// docs/simulation.md "Storage" makes durable, choosing the rest with the
// scheduler's PRNG. No real files, no real timers; I/O completions are events
// of the process that issued them, so a killed process never sees one.
import Database from "better-sqlite3";
import type { Db } from "../../../appliance/state/database.ts";
import { MIGRATIONS, SCHEMA_VERSION } from "../../../appliance/state/schema.ts";
import type { SegmentDir, SegmentFile } from "../../../appliance/state/segment-files.ts";
import type { SegmentPrefix, StateStore } from "../../../appliance/state/store.ts";
import { READ_BYTES_MAX, SECTOR_BYTES, VolumeError, type Volume, type VolumeErrorCode } from "../../../disks/volume.ts";
import type { SimProcess } from "./scheduler.ts";
import { storedPayloadBytes } from "../../../appliance/replication/frames.ts";

type Random = () => number;
type Statement = Database.Statement<unknown[], unknown>;

/** An I/O completion 0-2 ms after the call. */
function ioDelay(random: Random): number {
  return Math.floor(random() * 3);
}

/** Completes `fn` as an I/O of `proc`: never, if proc is killed first. */
function completion<T>(proc: SimProcess, random: Random, fn: () => T): Promise<T> {
  return new Promise<T>((resolve, reject) =>
    proc.after(ioDelay(random), () => {
      try {
        resolve(fn());
      } catch (err) {
        reject(err as Error);
      }
    }),
  );
}

// ---------------------------------------------------------------- SQLite

/** Past this many non-durable commits, the oldest are folded together (memory), so fewer prefixes remain to choose from. */
const PENDING_COMMITS_MAX = 1024;

/** Non-durable commits first..n (one, unless folded): the pages that differ from the image before them. */
interface PendingCommit {
  first: number;
  n: number;
  length: number;
  pages: Map<number, Buffer>;
}

const ROLLBACK_RE = /^\s*ROLLBACK\b/i;
/** Pragmas that write the database header: a commit of their own outside a transaction. */
const HEADER_PRAGMA_RE = /^\s*(user_version|application_id)\s*=/i;
const SYNCHRONOUS_RE = /^\s*synchronous\s*=\s*(\w+)\s*$/i;
const SYNCHRONOUS_NORMAL = 1;
const SYNCHRONOUS_LEVELS: Record<string, number> = { off: 0, normal: 1, full: 2, extra: 3 };

function synchronousLevel(word: string): number {
  const level = SYNCHRONOUS_LEVELS[word.toLowerCase()] ?? Number(word);
  if (!Number.isInteger(level) || level < 0 || level > 3) throw new Error(`SimStateDb: PRAGMA synchronous = ${word} is not a level the simulation knows`);
  return level;
}

/**
 * A subsystem's state file: an in-memory better-sqlite3 database migrated as
 * openState does. Every commit made through a view() is counted; with
 * powerCuts, its pages are kept until it is durable, so that powerCut() can
 * return to the durable state plus a random prefix of the later commits.
 */
let migrated: Buffer | null = null;

/**
 * A fresh state file as openState leaves it: migrations keyed on
 * user_version, one transaction each. Run once per simulator process and
 * copied per database: every seed starts from the same bytes.
 */
function migratedImage(): Buffer {
  if (migrated === null) {
    const db = new Database(":memory:");
    for (let v = db.pragma("user_version", { simple: true }) as number; v < SCHEMA_VERSION; v++) {
      db.transaction(() => {
        db.exec(MIGRATIONS[v]);
        db.pragma(`user_version = ${v + 1}`);
      })();
    }
    migrated = db.serialize();
    db.close();
  }
  return migrated;
}

export class SimStateDb {
  private raw: Db;
  private readonly pageSize: number;
  /** The durable database image, and the latest committed one (what the next delta is taken against). */
  private durable: Buffer | null = null;
  private latest: Buffer | null = null;
  private pending: PendingCommit[] = [];
  /** Commits made, ever (lost ones included); commits are numbered 1.. this. */
  commits = 0;
  /** Commits that are durable: made so by a FULL commit or a sync, or kept by a power cut. */
  durableCommits = 0;
  /** Commits power cuts took back. */
  lostCommits = 0;
  /** The number of the last durable commit: every later one is pending. */
  private durableThrough = 0;
  /**
   * The connection's PRAGMA synchronous, as set through a view: asking
   * SQLite at every commit cost a fifth of a power-cut seed's time.
   */
  private synchronous = SYNCHRONOUS_NORMAL;

  constructor(private readonly o: { powerCuts: boolean }) {
    this.raw = new Database(migratedImage());
    this.raw.pragma("synchronous = NORMAL");
    this.pageSize = this.raw.pragma("page_size", { simple: true }) as number;
    // The state file was created and synced before any engine ran.
    if (o.powerCuts) {
      this.durable = this.raw.serialize();
      this.latest = this.durable;
    }
  }

  get powerCuts(): boolean {
    return this.o.powerCuts;
  }

  /** Commits made and not yet durable. */
  get pendingCommits(): number {
    return this.commits - this.durableThrough;
  }

  /**
   * A connection to the current database for one incarnation: statements,
   * transactions and exec through it are watched for commits. Its close()
   * closes this connection only: the data stays for the next incarnation.
   */
  /**
   * The state disk is full: while set, every commit through a view fails
   * with SQLITE_FULL before it writes anything, as a full disk fails SQLite's
   * WAL append and the transaction rolls back. Reads go on. A function
   * chooses the commits to fail by their SQL (null: a transaction's, which
   * is not known before it runs).
   */
  diskFull: boolean | ((sql: string | null) => boolean) = false;
  /** Called after each commit the full disk refused (a test frees the space there). */
  onRefusedCommit: (() => void) | null = null;

  view(): Db {
    return viewOf(
      this.raw,
      (raw) => this.onCommit(raw),
      (level) => (this.synchronous = level),
      (sql) => {
        if (this.diskFull === false || (typeof this.diskFull === "function" && !this.diskFull(sql))) return false;
        // This commit fails whatever the callback does: a test may free the space for the next one.
        this.onRefusedCommit?.();
        return true;
      },
    );
  }

  /** The database itself, for the checker's reads: nothing done through it is recorded, so it must not write. */
  peek(): Db {
    return this.raw;
  }

  /** Opening the state file in a new incarnation: a view, with openState's per-connection pragma. */
  reopen(): Db {
    this.raw.pragma("synchronous = NORMAL");
    this.synchronous = SYNCHRONOUS_NORMAL;
    return this.view();
  }

  /** A sync token: the commits made so far (an fdatasync covers what was written before it was called). */
  syncPoint(): number {
    return this.commits;
  }

  /** Every commit up to `token` is durable: the completion of a WAL fdatasync started at syncPoint(). */
  makeDurable(token: number): void {
    token = Math.min(token, this.commits);
    if (token <= this.durableThrough) return;
    let k = 0;
    // A folded entry that holds the token is made durable whole (more than asked: never less).
    while (k < this.pending.length && this.pending[k].first <= token) k++;
    const through = k > 0 ? Math.max(token, this.pending[k - 1].n) : token;
    if (this.o.powerCuts && k > 0) this.durable = this.imageAfter(k);
    this.pending.splice(0, k);
    this.setDurableThrough(through);
  }

  /** Every commit so far is durable (an fdatasync of the WAL on this thread). */
  syncNow(): void {
    this.makeDurable(this.commits);
  }

  /**
   * Power is lost: the database becomes the durable image plus a prefix of
   * the later commits, each prefix length as likely. Call it once every
   * process of the host is killed; the old database is closed, so anything a
   * dead incarnation still holds fails loudly. Returns the commits lost.
   */
  powerCut(random: Random): number {
    if (!this.o.powerCuts) throw new Error("SimStateDb: power cut on a database created with powerCuts: false (nothing was recorded)");
    const target = this.durableThrough + Math.floor(random() * (this.pendingCommits + 1));
    let keep = 0;
    while (keep < this.pending.length && this.pending[keep].n <= target) keep++;
    const image = this.imageAfter(keep);
    const through = keep > 0 ? this.pending[keep - 1].n : this.durableThrough;
    const lost = this.commits - through;
    this.raw.close();
    this.raw = new Database(image);
    this.raw.pragma("synchronous = NORMAL");
    this.synchronous = SYNCHRONOUS_NORMAL;
    this.durable = image;
    this.latest = image;
    this.pending = [];
    this.setDurableThrough(through);
    this.lostCommits += lost;
    // The lost numbers are never reused: every commit number up to now is settled.
    this.durableThrough = this.commits;
    return lost;
  }

  private setDurableThrough(through: number): void {
    this.durableCommits += through - this.durableThrough;
    this.durableThrough = through;
  }

  /** The durable image with the first `k` pending entries applied. */
  private imageAfter(k: number): Buffer {
    if (k === 0) return this.durable!;
    if (k === this.pending.length) return this.latest!;
    let img = Buffer.from(this.durable!);
    for (let i = 0; i < k; i++) {
      const c = this.pending[i];
      if (c.length !== img.length) {
        const resized = Buffer.alloc(c.length);
        img.copy(resized, 0, 0, Math.min(c.length, img.length));
        img = resized;
      }
      for (const [p, page] of c.pages) page.copy(img, p * this.pageSize);
    }
    return img;
  }

  private onCommit(raw: Db): void {
    // A commit on a database a power cut replaced: the view belongs to a dead incarnation.
    if (raw !== this.raw) return;
    this.commits++;
    // FULL (2) or EXTRA (3): this commit syncs the WAL, which holds every earlier frame too.
    const full = this.synchronous >= 2;
    if (!this.o.powerCuts) {
      if (full) this.setDurableThrough(this.commits);
      return;
    }
    const img = raw.serialize();
    if (full) {
      this.durable = img;
      this.latest = img;
      this.pending = [];
      this.setDurableThrough(this.commits);
      return;
    }
    this.pending.push({ first: this.commits, n: this.commits, length: img.length, pages: changedPages(this.latest!, img, this.pageSize) });
    this.latest = img;
    if (this.pending.length > PENDING_COMMITS_MAX) {
      // Fold the oldest entry into the next: a cut keeps both or neither.
      const [a, b] = this.pending.splice(0, 2);
      const pages = new Map(a.pages);
      for (const [p, page] of b.pages) pages.set(p, page);
      for (const p of pages.keys()) if ((p + 1) * this.pageSize > b.length) pages.delete(p);
      this.pending.unshift({ first: a.first, n: b.n, length: b.length, pages });
    }
  }
}

/** Pages of `next` that differ from `prev` (or lie beyond it). */
function changedPages(prev: Buffer, next: Buffer, pageSize: number): Map<number, Buffer> {
  const out = new Map<number, Buffer>();
  for (let off = 0, p = 0; off < next.length; off += pageSize, p++) {
    const page = next.subarray(off, off + pageSize);
    if (off + pageSize > prev.length || !page.equals(prev.subarray(off, off + pageSize))) out.set(p, Buffer.from(page));
  }
  return out;
}

/** A Proxy over `raw` that reports every commit made through it. */
function viewOf(raw: Db, onCommit: (raw: Db) => void, onSynchronous: (level: number) => void, full: (sql: string | null) => boolean): Db {
  let closed = false;
  const notOpen = () => {
    throw new TypeError("The database connection is not open");
  };
  // What better-sqlite3 throws when the disk under the WAL is full.
  const failIfFull = (sql: string | null) => {
    if (full(sql)) throw new Database.SqliteError("database or disk is full", "SQLITE_FULL");
  };

  const wrapStatement = (stmt: Statement): Statement => {
    const writer = !stmt.readonly;
    // The Proxy's target is a stand-in: `database` is a read-only own property
    // of a statement, which a Proxy over the statement could not answer with the view.
    const proxy = new Proxy({} as Statement, {
      get(_stub, prop) {
        switch (prop) {
          case "run":
            return (...args: unknown[]) => {
              if (closed) notOpen();
              const before = raw.inTransaction;
              if (writer && !before) failIfFull(stmt.source);
              const r = stmt.run(...args);
              // Autocommit of a writer, or a COMMIT/END/RELEASE run as a statement.
              if (!raw.inTransaction && (writer || (before && !ROLLBACK_RE.test(stmt.source)))) onCommit(raw);
              return r;
            };
          case "get":
          case "all":
            return (...args: unknown[]) => {
              if (closed) notOpen();
              const r = (stmt[prop] as (...a: unknown[]) => unknown)(...args);
              // INSERT ... RETURNING and the like.
              if (writer && !raw.inTransaction) onCommit(raw);
              return r;
            };
          case "iterate":
            return (...args: unknown[]) => {
              if (closed) notOpen();
              const it = stmt.iterate(...args);
              if (!writer) return it;
              // A writer's autocommit ends with its iteration.
              const done = () => {
                if (!raw.inTransaction) onCommit(raw);
              };
              return {
                next() {
                  const r = it.next();
                  if (r.done) done();
                  return r;
                },
                return(v?: unknown) {
                  const r = it.return ? it.return(v) : { done: true as const, value: v };
                  done();
                  return r;
                },
                [Symbol.iterator]() {
                  return this;
                },
              };
            };
          case "pluck":
          case "safeIntegers":
          case "raw":
          case "expand":
          case "bind":
            return (...args: unknown[]) => {
              (stmt[prop] as (...a: unknown[]) => unknown)(...args);
              return proxy;
            };
          case "database":
            return view;
        }
        const v = Reflect.get(stmt, prop, stmt) as unknown;
        return typeof v === "function" ? (v as (...a: unknown[]) => unknown).bind(stmt) : v;
      },
    });
    return proxy;
  };

  type TxFn = ((...args: unknown[]) => unknown) & { default: TxFn; deferred: TxFn; immediate: TxFn; exclusive: TxFn };
  const wrapTransaction = (fn: (...args: unknown[]) => unknown): TxFn => {
    const tx = raw.transaction(fn) as unknown as TxFn;
    const wrap = (variant: (...args: unknown[]) => unknown) =>
      function (this: unknown, ...args: unknown[]) {
        if (closed) notOpen();
        if (!raw.inTransaction) failIfFull(null);
        const r = variant.apply(this, args);
        // A nested transaction (a savepoint) commits nothing: the outer one does.
        if (!raw.inTransaction) onCommit(raw);
        return r;
      };
    const main = wrap(tx) as TxFn;
    main.default = main;
    main.deferred = wrap(tx.deferred) as TxFn;
    main.immediate = wrap(tx.immediate) as TxFn;
    main.exclusive = wrap(tx.exclusive) as TxFn;
    return main;
  };

  // Referred to above only from functions called after this line has run.
  const view: Db = new Proxy(raw, {
    get(target, prop) {
      switch (prop) {
        case "open":
          return !closed && target.open;
        case "close":
          return () => {
            closed = true;
            return view;
          };
      }
      if (closed && prop !== "name" && prop !== "inTransaction" && prop !== "memory" && prop !== "readonly") {
        const v = Reflect.get(target, prop, target) as unknown;
        return typeof v === "function" ? notOpen : v;
      }
      switch (prop) {
        case "prepare":
          return (source: string) => wrapStatement(target.prepare(source));
        case "transaction":
          return wrapTransaction;
        case "exec":
          return (source: string) => {
            target.exec(source);
            if (!target.inTransaction && !ROLLBACK_RE.test(source)) onCommit(target);
            return view;
          };
        case "pragma":
          return (source: string, options?: Database.PragmaOptions) => {
            const r = target.pragma(source, options);
            const level = SYNCHRONOUS_RE.exec(source);
            if (level) onSynchronous(synchronousLevel(level[1]));
            if (HEADER_PRAGMA_RE.test(source) && !target.inTransaction) onCommit(target);
            return r;
          };
      }
      const v = Reflect.get(target, prop, target) as unknown;
      return typeof v === "function" ? (v as (...a: unknown[]) => unknown).bind(target) : v;
    },
  });
  return view;
}

// ---------------------------------------------------------------- segments

/** State a sync captured when it was called: bytes overwritten since are kept as they were then. */
interface SyncCapture {
  version: number;
  length: number;
  /** Sector -> its bytes at capture time, for sectors written after it. */
  undo: Map<number, Buffer>;
}

/** One segment file: page-cache bytes, and how to get back to what is durable. */
class SimFile {
  buf = Buffer.alloc(0);
  length = 0;
  /** Bumped by every write. */
  version = 0;
  /** The file's directory entry survives a power cut (its first sync). */
  durableExists = false;
  durableLength = 0;
  durableVersion = 0;
  /** Sector -> its durable bytes, for sectors below durableLength written since. */
  durableUndo = new Map<number, Buffer>();
  private readonly syncs = new Set<SyncCapture>();
  removed = false;

  write(bufs: readonly Buffer[], position: number): number {
    let total = 0;
    for (const b of bufs) total += b.length;
    if (total === 0) return 0;
    const end = position + total;
    for (let s = Math.floor(position / SECTOR_BYTES); s * SECTOR_BYTES < end; s++) {
      this.remember(this.durableUndo, s, this.durableLength);
      for (const c of this.syncs) this.remember(c.undo, s, c.length);
    }
    if (end > this.buf.length) {
      const grown = Buffer.alloc(Math.max(end, this.buf.length * 2, 4096));
      this.buf.copy(grown, 0, 0, this.length);
      this.buf = grown;
    }
    if (position > this.length) this.buf.fill(0, this.length, position);
    let at = position;
    for (const b of bufs) {
      b.copy(this.buf, at);
      at += b.length;
    }
    this.length = Math.max(this.length, end);
    this.version++;
    return total;
  }

  /** Before sector `s` changes: its bytes below `limit`, once. */
  private remember(undo: Map<number, Buffer>, s: number, limit: number): void {
    const start = s * SECTOR_BYTES;
    if (start >= limit || undo.has(s)) return;
    undo.set(s, Buffer.from(this.buf.subarray(start, Math.min(start + SECTOR_BYTES, limit, this.length))));
  }

  read(buf: Buffer, offset: number, length: number, position: number): number {
    // As pread: at or past the end, 0 bytes (Buffer.copy would throw).
    const n = Math.max(0, Math.min(length, this.length - position));
    if (n > 0) this.buf.copy(buf, offset, position, position + n);
    return n;
  }

  capture(): SyncCapture {
    const c: SyncCapture = { version: this.version, length: this.length, undo: new Map() };
    this.syncs.add(c);
    return c;
  }

  /** The sync that captured `c` has returned: the file as it was then is durable. */
  complete(c: SyncCapture): void {
    this.syncs.delete(c);
    if (c.version < this.durableVersion) return;
    this.durableExists = true;
    this.durableLength = c.length;
    this.durableUndo = c.undo;
    this.durableVersion = c.version;
  }

  syncNow(): void {
    this.complete(this.capture());
  }

  /** What a power cut leaves of this file: null when it vanished. */
  afterCut(random: Random): SimFile | null {
    if (!this.durableExists && random() < 0.5) return null;
    // The durable bytes, then a random prefix of the bytes written after (a torn tail).
    const keep = this.durableLength + tornPrefix(random, this.length - this.durableLength);
    const f = new SimFile();
    f.buf = Buffer.alloc(Math.max(keep, 4096));
    this.buf.copy(f.buf, 0, 0, keep);
    // Sectors rewritten in place since: the old bytes or the new, per sector.
    for (const [s, old] of this.durableUndo) if (random() < 0.5) old.copy(f.buf, s * SECTOR_BYTES);
    f.length = keep;
    f.durableExists = true;
    f.durableLength = keep;
    return f;
  }
}

/**
 * How many of `n` unsynced bytes survive: none or all a quarter of the time
 * each (the edges, where a replay's decisions change), else any count.
 */
function tornPrefix(random: Random, n: number): number {
  const r = random();
  if (r < 0.25) return 0;
  if (r >= 0.75) return n;
  return Math.floor(((r - 0.25) / 0.5) * (n + 1));
}

function segmentError(message: string, code: string): Error {
  return Object.assign(new Error(message), { code });
}

/**
 * One prefix's payload segments ("journal" or "queue"), kept across
 * incarnations. Its own SegmentDir methods are the checker's direct access
 * (their sync() is immediate); view(proc) is what an incarnation uses. A
 * removal is durable at once: a removed file never comes back after a cut.
 */
export class SimSegmentDir implements SegmentDir {
  private files = new Map<number, SimFile>();
  /** An incarnation removed a segment (the simulation may cut the power then: finding 18). */
  onRemove: (() => void) | null = null;

  constructor(
    readonly prefix: SegmentPrefix | string,
    private readonly random: Random,
  ) {}

  nameOf(seg: number): string {
    return `sim:${this.prefix}-${String(seg).padStart(8, "0")}.seg`;
  }

  list(): number[] {
    return [...this.files.keys()].sort((a, b) => a - b);
  }

  open(seg: number): SegmentFile {
    return this.handle(seg, null);
  }

  remove(seg: number): void {
    const f = this.files.get(seg);
    if (f) f.removed = true;
    this.files.delete(seg);
  }

  /** The directory as one incarnation sees it: sync() completes as an I/O of proc. */
  view(proc: SimProcess): SegmentDir {
    return {
      nameOf: (seg) => this.nameOf(seg),
      list: () => this.list(),
      open: (seg) => this.handle(seg, proc),
      remove: (seg) => {
        this.remove(seg);
        this.onRemove?.();
      },
    };
  }

  /** Bytes the file holds now and what a power cut would keep at least (for checks). */
  stat(seg: number): { length: number; durableLength: number; durableExists: boolean } | undefined {
    const f = this.files.get(seg);
    return f && { length: f.length, durableLength: f.durableLength, durableExists: f.durableExists };
  }

  powerCut(random: Random = this.random): { vanished: number; tornBytes: number } {
    const next = new Map<number, SimFile>();
    let vanished = 0;
    let tornBytes = 0;
    for (const seg of this.list()) {
      const f = this.files.get(seg)!;
      const after = f.afterCut(random);
      f.removed = true;
      if (after === null) {
        vanished++;
        continue;
      }
      tornBytes += f.length - after.length;
      next.set(seg, after);
    }
    this.files = next;
    return { vanished, tornBytes };
  }

  private handle(seg: number, proc: SimProcess | null): SegmentFile {
    let f = this.files.get(seg);
    if (!f) {
      f = new SimFile();
      this.files.set(seg, f);
    }
    const file = f;
    let closed = false;
    const usable = () => {
      if (closed) throw segmentError(`${this.nameOf(seg)}: EBADF (used after close)`, "EBADF");
    };
    return {
      size: () => {
        usable();
        return file.length;
      },
      writev: (bufs, position) => {
        usable();
        return file.write(bufs, position);
      },
      read: (buf, offset, length, position) => {
        usable();
        return file.read(buf, offset, length, position);
      },
      syncNow: () => {
        usable();
        file.syncNow();
      },
      sync: () => {
        usable();
        // fdatasync covers what the file held when it was called.
        const c = file.capture();
        if (proc === null) {
          file.complete(c);
          return Promise.resolve();
        }
        return completion(proc, this.random, () => file.complete(c));
      },
      close: () => {
        closed = true;
      },
    };
  }
}

// ---------------------------------------------------------------- volumes

export const SIM_BLOCK_BYTES = 4096;

/** A block's contents since its last durable point: [0] is durable, the last is the page cache's. */
interface BlockState {
  seq: number;
  data: Buffer | null;
}

/**
 * A volume's 4 KiB blocks across incarnations. A block never written, or
 * last covered whole by writeZeroes, is a hole (null). A block written since
 * the last sync that covered it keeps every content it had since: a power
 * cut picks one of them, per block, so a multi-block write may be torn.
 */
export class SimVolume {
  private readonly blocks = new Map<number, Buffer>();
  private readonly dirty = new Map<number, BlockState[]>();
  /** Bumped by every write; a sync covers the writes numbered up to its call. */
  private wseq = 0;

  constructor(
    readonly name: string,
    readonly sizeBytes: number,
    private readonly random: Random,
  ) {
    if (!Number.isSafeInteger(sizeBytes) || sizeBytes <= 0 || sizeBytes % SECTOR_BYTES !== 0) {
      throw new Error(`SimVolume ${name}: size ${sizeBytes} is not a positive multiple of ${SECTOR_BYTES}`);
    }
  }

  get path(): string {
    return `sim:${this.name}`;
  }

  /** The page-cache view: what a read returns now. */
  readNow(offset: number, length: number): Buffer {
    return this.readFrom(offset, length, (b) => this.blocks.get(b) ?? null);
  }

  /** What would be on the medium if power were cut now and every unsynced write were lost. */
  readDurable(offset: number, length: number): Buffer {
    return this.readFrom(offset, length, (b) => {
      const d = this.dirty.get(b);
      return d ? d[0].data : (this.blocks.get(b) ?? null);
    });
  }

  /** Blocks written since the last sync that covered them. */
  unsyncedBlocks(): number[] {
    return [...this.dirty.keys()].sort((a, b) => a - b);
  }

  /** pwrite into the page cache: `data`, or zeroes (null), which punch whole blocks into holes. */
  writeNow(offset: number, data: Buffer | null, length = data?.length ?? 0): void {
    const seq = ++this.wseq;
    const end = offset + length;
    for (let b = Math.floor(offset / SIM_BLOCK_BYTES); b * SIM_BLOCK_BYTES < end; b++) {
      const start = b * SIM_BLOCK_BYTES;
      const from = Math.max(offset, start);
      const to = Math.min(end, start + SIM_BLOCK_BYTES);
      const prev = this.blocks.get(b) ?? null;
      let next: Buffer | null;
      if (data === null && (prev === null || (from === start && to === start + SIM_BLOCK_BYTES))) next = null;
      else {
        // Copy on write: the states kept for a power cut share these buffers.
        next = prev ? Buffer.from(prev) : Buffer.alloc(SIM_BLOCK_BYTES);
        if (data === null) next.fill(0, from - start, to - start);
        else data.copy(next, from - start, from - offset, to - offset);
      }
      let states = this.dirty.get(b);
      if (!states) {
        states = [{ seq: 0, data: prev }];
        this.dirty.set(b, states);
      }
      states.push({ seq, data: next });
      if (next === null) this.blocks.delete(b);
      else this.blocks.set(b, next);
    }
  }

  /** fdatasync called now; the returned function is its completion. */
  syncStart(): () => void {
    const upTo = this.wseq;
    return () => {
      for (const [b, states] of this.dirty) {
        let k = 0;
        while (k + 1 < states.length && states[k + 1].seq <= upTo) k++;
        if (k > 0) states.splice(0, k);
        if (states.length === 1) this.dirty.delete(b);
      }
    };
  }

  nextData(offset: number): number {
    if (offset >= this.sizeBytes) return this.sizeBytes;
    const first = Math.floor(offset / SIM_BLOCK_BYTES);
    if (this.blocks.has(first)) return offset;
    let best = Infinity;
    for (const b of this.blocks.keys()) if (b > first && b < best) best = b;
    return Math.min(this.sizeBytes, best * SIM_BLOCK_BYTES);
  }

  nextHole(offset: number): number {
    if (offset >= this.sizeBytes) return this.sizeBytes;
    let b = Math.floor(offset / SIM_BLOCK_BYTES);
    if (!this.blocks.has(b)) return offset;
    while (this.blocks.has(b)) b++;
    return Math.min(this.sizeBytes, b * SIM_BLOCK_BYTES);
  }

  /** Power is lost: each unsynced block takes its durable content or any it had since. Returns the blocks that changed. */
  powerCut(random: Random = this.random): number {
    let changed = 0;
    for (const b of this.unsyncedBlocks()) {
      const states = this.dirty.get(b)!;
      const pick = states[Math.floor(random() * states.length)].data;
      if (pick !== states[states.length - 1].data) changed++;
      if (pick === null) this.blocks.delete(b);
      else this.blocks.set(b, pick);
    }
    this.dirty.clear();
    return changed;
  }

  /** The Volume one incarnation opens: async I/O completes 0-2 ms later, as an event of proc. */
  view(proc: SimProcess): Volume {
    let closed = false;
    const err = (code: VolumeErrorCode, what: string, offset?: number, length?: number) =>
      new VolumeError(code, `volume "${this.name}" (${this.path}): ${what}`, { volume: this.name, path: this.path, offset, length });
    const check = (op: string, offset: number, length: number) => {
      if (closed) throw new VolumeError("TM_VOLUME_CLOSED", `volume "${this.name}": ${op} on ${this.path} after close`, { volume: this.name, path: this.path });
      if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0) {
        throw err("TM_VOLUME_RANGE", `${op}: offset and length must be non-negative integers`, offset, length);
      }
      if (offset % SECTOR_BYTES !== 0 || length % SECTOR_BYTES !== 0) {
        throw err("TM_VOLUME_ALIGN", `${op}: offset and length must be multiples of ${SECTOR_BYTES}`, offset, length);
      }
      if (offset + length > this.sizeBytes) {
        throw err("TM_VOLUME_RANGE", `${op}: [${offset}, ${offset + length}) is outside the volume's ${this.sizeBytes} bytes`, offset, length);
      }
    };
    const open = (op: string) => {
      if (closed) throw new VolumeError("TM_VOLUME_CLOSED", `volume "${this.name}": ${op} on ${this.path} after close`, { volume: this.name, path: this.path });
    };
    return {
      name: this.name,
      path: this.path,
      kind: "file",
      sizeBytes: this.sizeBytes,
      read: async (offset, length) => {
        check("read", offset, length);
        if (length > READ_BYTES_MAX) throw err("TM_VOLUME_RANGE", `read of ${length} bytes exceeds READ_BYTES_MAX (${READ_BYTES_MAX})`, offset, length);
        return completion(proc, this.random, () => this.readNow(offset, length));
      },
      write: async (offset, data) => {
        check("write", offset, data.length);
        // The thread pool reads the caller's buffer later; the caller must not change it, and here cannot.
        const copy = Buffer.from(data);
        return completion(proc, this.random, () => this.writeNow(offset, copy));
      },
      writeSync: (offset, data) => {
        check("write", offset, data.length);
        this.writeNow(offset, data);
      },
      writeZeroes: async (offset, length) => {
        check("writeZeroes", offset, length);
        return completion(proc, this.random, () => this.writeNow(offset, null, length));
      },
      nextData: (offset) => {
        open("seek");
        return this.nextData(offset);
      },
      nextHole: (offset) => {
        open("seek");
        return this.nextHole(offset);
      },
      sync: async () => {
        open("sync");
        return completion(proc, this.random, this.syncStart());
      },
      close: async () => {
        closed = true;
      },
    };
  }

  private readFrom(offset: number, length: number, blockAt: (b: number) => Buffer | null): Buffer {
    const out = Buffer.alloc(length);
    const end = offset + length;
    for (let b = Math.floor(offset / SIM_BLOCK_BYTES); b * SIM_BLOCK_BYTES < end; b++) {
      const data = blockAt(b);
      if (data === null) continue;
      const start = b * SIM_BLOCK_BYTES;
      const from = Math.max(offset, start);
      const to = Math.min(end, start + SIM_BLOCK_BYTES);
      data.copy(out, from - offset, from - start, to - start);
    }
    return out;
  }
}

// ---------------------------------------------------------------- host

export interface SimHostDiskOptions {
  /** The scheduler's PRNG: I/O delays and what a power cut keeps. */
  random: Random;
  /** Record what a power cut needs (costs a database image per commit); without it powerCut() throws. */
  powerCuts: boolean;
  volumes?: readonly { name: string; sizeBytes: number }[];
}

export interface SimPowerCutReport {
  lostCommits: number;
  segmentsVanished: number;
  segmentBytesTorn: number;
  volumeBlocksChanged: number;
}

/** One subsystem host's disks: its state database, the two segment directories and its volumes. */
export class SimHostDisk {
  readonly state: SimStateDb;
  readonly segmentDirs: Record<SegmentPrefix, SimSegmentDir>;
  readonly volumes = new Map<string, SimVolume>();
  private readonly random: Random;

  constructor(o: SimHostDiskOptions) {
    this.random = o.random;
    this.state = new SimStateDb({ powerCuts: o.powerCuts });
    this.segmentDirs = { journal: new SimSegmentDir("journal", o.random), queue: new SimSegmentDir("queue", o.random) };
    for (const v of o.volumes ?? []) this.addVolume(v.name, v.sizeBytes);
  }

  addVolume(name: string, sizeBytes: number): SimVolume {
    if (this.volumes.has(name)) throw new Error(`SimHostDisk: volume ${name} exists`);
    const v = new SimVolume(name, sizeBytes, this.random);
    this.volumes.set(name, v);
    return v;
  }

  volumeNames(): string[] {
    return [...this.volumes.keys()];
  }

  volume(name: string): SimVolume {
    const v = this.volumes.get(name);
    if (!v) throw new Error(`SimHostDisk: no volume ${name}`);
    return v;
  }

  /** stamp.seq_floor now: after a power cut, the highest seq whose journal commit survived. */
  seqFloor(): number {
    return Number(this.state.peek().prepare("SELECT seq_floor FROM stamp WHERE id = 1").pluck(true).get() ?? 0);
  }

  /** link_seq.last_seq of `primary` now: the highest of its seqs this secondary has committed to its queue. */
  committedSeqOf(primary: number): number {
    return Number(this.state.peek().prepare("SELECT last_seq FROM link_seq WHERE primary_id = ?").pluck(true).get(primary) ?? 0);
  }

  /** Where the copy of `volume` (an initial copy, or a whole copy owed) goes on, in bytes; null when none is owed. */
  copyCursor(volume: string): number | null {
    const off = this.state.peek().prepare("SELECT next_off FROM copy_cursor WHERE volume = ?").pluck(true).get(volume) as number | undefined;
    return off ?? null;
  }

  /** The blocks of `volume` in the bitmap table now. */
  bitmapBlocks(volume: string): number[] {
    return this.state.peek().prepare("SELECT block FROM bitmap WHERE volume = ? ORDER BY block").pluck(true).all(volume) as number[];
  }

  /**
   * The first RCR queue row of `primary` with a seq in (after, upTo] whose
   * payload is not yet all in the durable part of its segment, or null: a
   * secondary acknowledges a seq only once a power cut can no longer take
   * its payload back (rows already applied and deleted are not looked at).
   */
  undurableQueuePayload(primary: number, after: number, upTo: number): string | null {
    const rows = this.state
      .peek()
      .prepare("SELECT seq, seg, seg_off, op, len FROM rcr WHERE primary_id = ? AND seq > ? AND seq <= ? AND seg IS NOT NULL ORDER BY seq")
      .all(primary, after, upTo) as { seq: number; seg: number; seg_off: number; op: number; len: number }[];
    for (const r of rows) {
      const end = r.seg_off + storedPayloadBytes(r.op, r.len);
      const st = this.segmentDirs.queue.stat(r.seg);
      if (!st || !st.durableExists || st.durableLength < end) {
        return `seq ${r.seq} of primary #${primary}: payload at ${this.segmentDirs.queue.nameOf(r.seg)} ${r.seg_off}..${end}, durable ${st?.durableExists ? `up to ${st.durableLength}` : "nowhere (the file may vanish)"}`;
      }
    }
    return null;
  }

  /** The StateStore an incarnation opens (openState + fileStateStore). */
  store(proc: SimProcess): StateStore {
    const db = this.state.reopen();
    const dirs = new Map<SegmentPrefix, SegmentDir>();
    return {
      db,
      syncWal: () => {
        // fdatasync of the WAL covers the commits made before it was called.
        const token = this.state.syncPoint();
        return completion(proc, this.random, () => this.state.makeDurable(token));
      },
      segments: (prefix) => {
        let d = dirs.get(prefix);
        if (!d) {
          d = this.segmentDirs[prefix].view(proc);
          dirs.set(prefix, d);
        }
        return d;
      },
      close: () => {},
    };
  }

  /** The volumes an incarnation opens. */
  openVolumes(proc: SimProcess): Map<string, Volume> {
    return new Map([...this.volumes].map(([name, v]) => [name, v.view(proc)]));
  }

  /** Power is lost on this host: call it once every process on it is killed. */
  powerCut(): SimPowerCutReport {
    const lostCommits = this.state.powerCut(this.random);
    let segmentsVanished = 0;
    let segmentBytesTorn = 0;
    for (const d of [this.segmentDirs.journal, this.segmentDirs.queue]) {
      const r = d.powerCut(this.random);
      segmentsVanished += r.vanished;
      segmentBytesTorn += r.tornBytes;
    }
    let volumeBlocksChanged = 0;
    for (const v of this.volumes.values()) volumeBlocksChanged += v.powerCut(this.random);
    return { lostCommits, segmentsVanished, segmentBytesTorn, volumeBlocksChanged };
  }
}

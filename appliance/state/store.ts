// A subsystem's durable state as the engines see it: the SQLite database,
// the WAL's fdatasync, and the payload-segment directories beside it. The
// subsystem opens real files (fileStateStore); the seeded simulation passes a
// store whose power cut keeps only what its rules make durable
// (docs/simulation.md, Storage).
import { closeSync, openSync, fdatasync } from "node:fs";
import path from "node:path";
import { promisify } from "node:util";
import type { Db } from "./database.ts";
import { fileSegmentDir, type SegmentDir } from "./segment-files.ts";

const fdatasyncAsync = promisify(fdatasync);

export type SegmentPrefix = "journal" | "queue";

export interface StateStore {
  readonly db: Db;
  /**
   * fdatasync of the WAL, off the event loop: every commit made so far is
   * durable once it resolves (in WAL mode a NORMAL commit is durable once the
   * WAL is).
   */
  syncWal(): Promise<void>;
  /** The payload segments of the journal (primary) or the RCR queue (secondary). */
  segments(prefix: SegmentPrefix): SegmentDir;
  /** Closes the files the store opened (not the database). */
  close(): void;
}

/** The store of an open state file: segments in `segments/` beside it. */
export function fileStateStore(db: Db, onSegmentError: (err: Error) => void = () => {}): StateStore {
  let walFd: number | null = null;
  const dirs = new Map<SegmentPrefix, SegmentDir>();
  return {
    db,
    syncWal: () => {
      // A NORMAL commit in WAL mode is durable once the WAL is: sync it in the thread pool.
      walFd ??= openSync(`${db.name}-wal`, "r");
      return fdatasyncAsync(walFd);
    },
    segments: (prefix) => {
      let d = dirs.get(prefix);
      if (!d) {
        d = fileSegmentDir(path.join(path.dirname(db.name), "segments"), prefix, onSegmentError);
        dirs.set(prefix, d);
      }
      return d;
    },
    close: () => {
      if (walFd !== null) closeSync(walFd);
      walFd = null;
    },
  };
}

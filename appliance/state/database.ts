// Opens a subsystem's SQLite state file: WAL mode, synchronous=NORMAL (a
// commit reaches the WAL in the page cache, which survives kill -9), and
// the schema migrated to SCHEMA_VERSION. durableBarrier() fsyncs the WAL for
// FLUSH/FUA and activity-log marks. Checkpoint policy: SQLite's automatic
// checkpoint at 4096 pages, run by whichever commit crosses it.
import Database from "better-sqlite3";
import { mkdirSync } from "node:fs";
import path from "node:path";
import { MIGRATIONS, SCHEMA_VERSION } from "./schema.ts";
import { TidemarkError, type ErrorCodeOf } from "../errors/codes.ts";

export type Db = Database.Database;

export class StateError extends TidemarkError {
  declare readonly code: ErrorCodeOf<"TM_STATE_">;
  constructor(code: ErrorCodeOf<"TM_STATE_">, message: string, file: string, options?: { cause?: unknown }) {
    super(code, message, { file }, options);
    this.name = "StateError";
  }
}

export function openState(file: string): Db {
  mkdirSync(path.dirname(file), { recursive: true });
  let db: Db;
  let version: number;
  try {
    db = new Database(file);
  } catch (err) {
    throw new StateError("TM_STATE_OPEN", `cannot open state file ${file}: ${(err as Error).message}`, file, { cause: err });
  }
  try {
    db.pragma("journal_mode = WAL");
    db.pragma("synchronous = NORMAL");
    db.pragma("wal_autocheckpoint = 4096");
    db.pragma("busy_timeout = 5000");
    version = db.pragma("user_version", { simple: true }) as number;
  } catch (err) {
    db.close();
    throw new StateError("TM_STATE_OPEN", `state file ${file} is not a usable SQLite database: ${(err as Error).message}`, file, { cause: err });
  }
  if (version > SCHEMA_VERSION) {
    db.close();
    throw new StateError(
      "TM_STATE_VERSION",
      `state file ${file} has schema version ${version}, newer than this tidemark (${SCHEMA_VERSION}); refusing to touch it`,
      file,
    );
  }
  for (let v = version; v < SCHEMA_VERSION; v++) {
    db.transaction(() => {
      db.exec(MIGRATIONS[v]);
      db.pragma(`user_version = ${v + 1}`);
    })();
  }
  return db;
}

/** Barriers come with every FLUSH and FUA: the statement is prepared once per connection. */
const barrierStatements = new WeakMap<Db, Database.Statement>();

/**
 * Makes every commit so far durable: one FULL-synchronous commit fsyncs the
 * WAL, and the WAL holds every earlier frame.
 */
export function durableBarrier(db: Db): void {
  let bump = barrierStatements.get(db);
  if (!bump) {
    bump = db.prepare("INSERT INTO meta (key, value) VALUES ('barrier', '1') ON CONFLICT(key) DO UPDATE SET value = CAST(value AS INTEGER) + 1");
    barrierStatements.set(db, bump);
  }
  db.pragma("synchronous = FULL");
  try {
    bump.run();
  } finally {
    db.pragma("synchronous = NORMAL");
  }
}

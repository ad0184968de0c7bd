// The subsystem's state file: a versioned schema, applied by migrations keyed
// on PRAGMA user_version. One file per subsystem holds both roles' state: the
// primary's journal and stamp floor, the secondary's RCR and disk request
// queues (one table: the disk request queue is the rows with ts <= 112),
// time parameters, bitmaps, group and pair state. docs/state.md is the table
// of tables.
export const MIGRATIONS: readonly string[] = [
  // 1: the normal procedure.
  `
  CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
  ) WITHOUT ROWID;

  -- Primary: every host write not yet acknowledged by its secondary, or not
  -- yet durable on the primary volume. seq is the per-primary RCR sequence.
  CREATE TABLE journal (
    seq       INTEGER PRIMARY KEY,
    ts        INTEGER NOT NULL,
    grp       TEXT    NOT NULL,
    link      INTEGER NOT NULL,   -- secondary subsystem id
    volume    TEXT    NOT NULL,   -- primary volume
    target    TEXT    NOT NULL,   -- secondary volume
    op        INTEGER NOT NULL,   -- 1 write, 2 zero
    off       INTEGER NOT NULL,
    len       INTEGER NOT NULL,
    data      BLOB
  );
  CREATE INDEX journal_link ON journal (link, seq);

  -- Primary: floors that survive a reboot of the monotonic clock.
  CREATE TABLE stamp (
    id        INTEGER PRIMARY KEY CHECK (id = 1),
    ts_floor  INTEGER NOT NULL,
    seq_floor INTEGER NOT NULL
  );
  INSERT INTO stamp VALUES (1, 0, 0);

  -- Primary: DESIGN.md's activity log: regions durably hot before their
  -- first write, cooled once their writes are acknowledged and durable.
  CREATE TABLE activity (
    volume TEXT    NOT NULL,
    region INTEGER NOT NULL,
    PRIMARY KEY (volume, region)
  ) WITHOUT ROWID;

  -- Both roles: 4 KiB blocks that differ from the other side (114).
  CREATE TABLE bitmap (
    volume TEXT    NOT NULL,
    block  INTEGER NOT NULL,
    PRIMARY KEY (volume, block)
  ) WITHOUT ROWID;

  -- Secondary: received RCRs (115); those with ts <= the group's 112 form the
  -- disk request queue (116).
  CREATE TABLE rcr (
    id         INTEGER PRIMARY KEY,
    grp        TEXT    NOT NULL,
    ts         INTEGER NOT NULL,
    primary_id INTEGER NOT NULL,
    seq        INTEGER NOT NULL,
    volume     TEXT    NOT NULL,
    op         INTEGER NOT NULL,
    off        INTEGER NOT NULL,
    len        INTEGER NOT NULL,
    data       BLOB
  );
  CREATE INDEX rcr_order ON rcr (grp, ts, primary_id, seq);

  -- Secondary: the highest seq durably queued per primary, to drop resends.
  CREATE TABLE link_seq (
    primary_id INTEGER PRIMARY KEY,
    last_seq   INTEGER NOT NULL
  );

  -- Secondary: 111 per (group, primary).
  CREATE TABLE first_time (
    grp        TEXT    NOT NULL,
    primary_id INTEGER NOT NULL,
    t          INTEGER NOT NULL,
    PRIMARY KEY (grp, primary_id)
  ) WITHOUT ROWID;

  -- Both roles: per group, 112 (secondary), the fencing generation and the
  -- applied counters.
  CREATE TABLE grp (
    name          TEXT PRIMARY KEY,
    second_time   INTEGER NOT NULL DEFAULT 0,
    generation    INTEGER NOT NULL DEFAULT 1,
    state         TEXT    NOT NULL DEFAULT 'active',
    reason        TEXT,
    applied       INTEGER NOT NULL DEFAULT 0,
    applied_bytes INTEGER NOT NULL DEFAULT 0,
    last_applied_ts INTEGER NOT NULL DEFAULT 0
  ) WITHOUT ROWID;
  `,
  // 2: the after-failure procedure: the synchronized time a group was brought
  // to, and what the RCM said when it suspended it.
  `
  ALTER TABLE grp ADD COLUMN synchronized_ts INTEGER;
  ALTER TABLE grp ADD COLUMN suspended_by TEXT;
  ALTER TABLE grp ADD COLUMN changed_at_ms INTEGER;
  ALTER TABLE grp ADD COLUMN dropped INTEGER NOT NULL DEFAULT 0;
  ALTER TABLE grp ADD COLUMN dropped_bytes INTEGER NOT NULL DEFAULT 0;
  `,
  // 3: seqs are leased durably: a seq the secondary may hold is never issued
  // again, even when a power cut takes the last NORMAL commits with it.
  `
  ALTER TABLE stamp ADD COLUMN seq_lease INTEGER NOT NULL DEFAULT 0;
  `,
  // 4: resync, initial copy and failback (docs/resync.md).
  `
  -- Both roles: a group row made before this version has been replicating
  -- already; a new one starts with an initial copy.
  ALTER TABLE grp ADD COLUMN initialized INTEGER NOT NULL DEFAULT 0;
  UPDATE grp SET initialized = 1;
  -- Secondary: T_old while 112 is held for a resync, else NULL.
  ALTER TABLE grp ADD COLUMN resync_floor INTEGER;
  -- Primary: C_k, the stamp at which its last copy was complete and acknowledged.
  ALTER TABLE grp ADD COLUMN copied_ts INTEGER;
  -- Both roles: 'forward' (the config's primaries are primary) or 'reverse'.
  ALTER TABLE grp ADD COLUMN direction TEXT NOT NULL DEFAULT 'forward';

  -- Secondary: COPIED(primary, C_k) received while holding for a resync.
  CREATE TABLE copied (
    grp        TEXT    NOT NULL,
    primary_id INTEGER NOT NULL,
    ts         INTEGER NOT NULL,
    PRIMARY KEY (grp, primary_id)
  ) WITHOUT ROWID;

  -- Primary: an initial copy's progress, a cursor instead of one bitmap row per block.
  CREATE TABLE copy_cursor (
    volume   TEXT PRIMARY KEY,
    next_off INTEGER NOT NULL
  ) WITHOUT ROWID;

  -- Primary: the pairs this subsystem has replicated, to tell a new pair from a known one.
  CREATE TABLE pair (
    volume TEXT PRIMARY KEY,
    target TEXT NOT NULL
  ) WITHOUT ROWID;
  -- Pairs of a state file older than this table are known already (not new).
  INSERT INTO meta (key, value) SELECT 'pairs_unrecorded', '1' WHERE EXISTS (SELECT 1 FROM grp);
  `,
  // 5: payloads in append-only segment files (docs/segments.md); rows of older
  // versions keep theirs in \`data\`.
  `
  ALTER TABLE journal ADD COLUMN seg INTEGER;
  ALTER TABLE journal ADD COLUMN seg_off INTEGER;
  ALTER TABLE journal ADD COLUMN crc INTEGER;
  ALTER TABLE rcr ADD COLUMN seg INTEGER;
  ALTER TABLE rcr ADD COLUMN seg_off INTEGER;
  ALTER TABLE rcr ADD COLUMN crc INTEGER;
  `,
  // 6: a journal row says whether it is a resync's copy: a copy was read from
  // the primary volume, so replay resends it but never writes it back there.
  `
  ALTER TABLE journal ADD COLUMN copy INTEGER NOT NULL DEFAULT 0;
  `,
  // 7: the secondary knows which of its volumes have never held a complete
  // image (a new pair whose initial copy has not passed a resync barrier): a
  // takeover shows them as not usable. Volumes of a state file older than
  // this are taken as copied (the first start records them).
  `
  CREATE TABLE secondary_volume (volume TEXT PRIMARY KEY) WITHOUT ROWID;
  CREATE TABLE uncopied (volume TEXT PRIMARY KEY) WITHOUT ROWID;
  INSERT INTO meta (key, value) SELECT 'secondary_volumes_unrecorded', '1' WHERE EXISTS (SELECT 1 FROM grp);
  `,
  // 8: one procedure at a time per group (issue 17): the RCM's lease on the
  // group, held on every subsystem of it (docs/takeover.md, "One procedure at a time").
  `
  CREATE TABLE lease (
    grp            TEXT    PRIMARY KEY,
    holder         TEXT    NOT NULL,
    holder_address TEXT    NOT NULL,
    incarnation    INTEGER NOT NULL,
    procedure      TEXT    NOT NULL,
    token          TEXT    NOT NULL,
    acquired_ms    INTEGER NOT NULL,
    expires_ms     INTEGER NOT NULL
  ) WITHOUT ROWID;
  `,
  // 9: the stamp a primary's group was frozen at for a swap: every write
  // acknowledged before the freeze is stamped at or below it. A rerun of a
  // swap cut short checks the takeover's Ts against it before it turns.
  `
  ALTER TABLE grp ADD COLUMN frozen_ts INTEGER;
  `,
  // 10: online verify (docs/verify.md). On a primary, one run per volume: its
  // cursor (the next offset to hash), its end and its stamp, so a verify
  // resumes after kill -9. On a secondary, per volume the run it last
  // compared (its stamp, how far it got, blocks compared and mismatched) and
  // the mismatched blocks of that run, with both hashes.
  `
  CREATE TABLE verify_run (
    volume      TEXT    PRIMARY KEY,
    grp         TEXT    NOT NULL,
    run_ts      INTEGER NOT NULL,
    start_off   INTEGER NOT NULL,
    next_off    INTEGER NOT NULL,
    end_off     INTEGER NOT NULL,
    rate_mibps  REAL    NOT NULL,
    started_ms  INTEGER NOT NULL,
    last_ts     INTEGER,
    finished_ms INTEGER
  ) WITHOUT ROWID;
  CREATE TABLE verify_seen (
    volume      TEXT    PRIMARY KEY,
    run_ts      INTEGER NOT NULL,
    through_off INTEGER NOT NULL,
    verified    INTEGER NOT NULL,
    mismatched  INTEGER NOT NULL,
    last_ts     INTEGER NOT NULL,
    verified_total   INTEGER NOT NULL DEFAULT 0,
    mismatched_total INTEGER NOT NULL DEFAULT 0
  ) WITHOUT ROWID;
  CREATE TABLE verify_mismatch (
    volume         TEXT    NOT NULL,
    block          INTEGER NOT NULL,
    run_ts         INTEGER NOT NULL,
    primary_hash   TEXT    NOT NULL,
    secondary_hash TEXT    NOT NULL,
    PRIMARY KEY (volume, block)
  ) WITHOUT ROWID;
  `,
];

export const SCHEMA_VERSION = MIGRATIONS.length;

// The registry of tidemark's error codes, as fastify keeps lib/errors.js: every `TM_*` code any
// module raises is a key of ERROR_CODES, once, with one line on what went wrong and what the admin
// does. Invariants: ErrorCode is the union of the keys, so a code typed anywhere else that is not
// here (a typo) is a compile error; docs/errors.md prints this table and
// test/unit/error-docs.test.ts fails if the two differ in either direction. Pure: no I/O.

/**
 * Code → meaning. A meaning is one line of Markdown (no `|`, no line break)
 * because docs/errors.md prints it as a table cell. Grouped by layer; the
 * order is the doc's order.
 */
export const ERROR_CODES = {
  // Start, config and local state.
  TM_CONFIG:
    "the topology file cannot be read, is not JSON, or breaks the schema or a topology rule; the message names the file and each field (`C1.pairs[2].secondary: volume 'x' is not defined`). The CLI exits 2 and a subsystem does not start: fix the file",
  TM_KEY:
    "a key file (`clusterKeyFile`, the TLS `keyFile`) cannot be read or written, is readable by group or others (mode must be 0600 or stricter), is below the strength rule (docs/security.md: at least 32 characters, not the well-known default key, when any listener is outside loopback), or an inline `clusterKey` or `linkTls` mode `off` is used with a listener outside loopback; the message names the file or field and the process does not start: `tidemark keygen`, `chmod 600`, or fix the config",
  TM_CLOCK:
    "the host clock's epoch file (`<clock folder>/<boot_id>.epoch`, docs/clock.md) cannot be read or created, does not parse, or disagrees with this boot's high-water file; or the clock folder or the boot id cannot be read. The message names the file; the subsystem does not start (a CLI command that reads the clock exits 1): fix the file or its folder's permissions (docs/clock.md, Errors)",
  TM_STATE_OPEN:
    "the SQLite state file cannot be opened (permissions, a folder in the way, not a database); the subsystem does not start (exit 1): fix the path or its permissions",
  TM_STATE_VERSION:
    "the state file's `user_version` is newer than this tidemark's schema: it is refused untouched (docs/state.md, Migrations) and the subsystem does not start: run the newer tidemark",
  TM_STATE_DISK_FULL:
    "a file of the subsystem's state could not be written because its file system is full or over quota (`ENOSPC`, `EDQUOT`, `EFBIG`): `state.db` or its WAL, a journal or queue segment, a bitmap mark; or a subsystem started on a full file system with no reserve file left to release. The message names the file and the file system. The subsystem keeps running and serving reads, refuses host writes with NBD `ENOSPC`, takes no RCRs, and shows `state-disk-full` in `status` and metrics; the RCM suspends its groups. Free space: host writes are taken again by themselves within seconds, the groups need `tidemark resync` (README, When a disk fills)",
  TM_STATE_IO:
    "a file of the subsystem's state (`state.db` or its WAL, a journal or queue segment) failed with an I/O error (`EIO`, `EROFS`, SQLite's `SQLITE_IOERR`): after a failed write or fdatasync Linux may have dropped the data, so the state can no longer be trusted. The subsystem logs at `fatal`, writes one stderr line naming the file and its file system and exits 70; it serves nothing, stale or otherwise, and the RCM suspends its groups. Check the disk (`dmesg`), repair or replace it, and start the subsystem again: it replays its journal and queue, or refuses to open a damaged state file (`TM_STATE_OPEN`)",
  TM_SUBSYSTEM_RUNNING:
    "another process already runs this subsystem id on this data folder (its `subsystem.lock` flock is held); this one does not start: stop the other or use another folder",
  TM_LISTEN:
    "the replication, NBD, metrics or RCM port cannot be bound (`EADDRINUSE`, `EACCES`); the message names the port and the process does not start: free the port or change the config",
  TM_INVARIANT:
    "a broken invariant (`assert()` in `appliance/invariant.ts`): a bug. The process logs at `fatal`, writes one stderr line and exits 70 before it writes a volume wrong; `tidemark up` reports the child as DIED: report it with the log",

  // Control requests, the CLI and the RCM.
  TM_CONTROL:
    "a control request failed on the subsystem without a code of its own; the CLI exits 1 with `subsystem #N: <message>`",
  TM_CONTROL_OP:
    "a control request named an operation the subsystem or the RCM does not know (a CLI newer than the subsystem); the CLI exits 1: run the same tidemark version everywhere",
  TM_CONTROL_CLOSED:
    "the control connection closed before the answer came; the CLI exits 1, and `status` shows the subsystem DOWN and exits 3",
  TM_CONTROL_TIMEOUT:
    "no answer to a control request within its timeout (10 s); as `TM_CONTROL_CLOSED`",
  TM_CONTROL_SILENT:
    "a subsystem or the RCM sent nothing, neither an answer nor a heartbeat, for `linkTimeoutMs` while a control request waited (docs/wire.md, Heartbeats on control connections): its host, its process or the network to it is down or hung (a slow step still heartbeats); as `TM_CONTROL_CLOSED`",
  TM_UNREACHABLE:
    "a subsystem's replication port (or the RCM's) did not accept a control connection: down, wrong key, wrong address; also a primary or secondary that `quiesce` or the RCM procedure could not reach. `status` shows a DOWN row and exits 3; other commands exit 1 with nothing changed: start it or fix the address, then run the command again",
  TM_NO_GROUP:
    "the named consistency group is not in the config, or a subsystem is no primary or secondary of it; the CLI exits 1: check the group name and the config",
  TM_SUSPENDED:
    "`quiesce` on a group that is suspended (or taken over) on some secondary: it can never catch up until resynced; the CLI exits 1: run `tidemark resync`",
  TM_TIMEOUT:
    "`quiesce` did not see every acknowledged write applied within `--timeout-ms`; the CLI exits 1: `tidemark status` shows what lags",
  TM_NO_ROLE:
    "a control request for the primary or secondary role reached a subsystem that has no such role; the CLI exits 1: check the subsystem id",
  TM_NO_RCM:
    "an RCM command on a config without an `rcm` section (host, port); the CLI exits 1: add the section and start `tidemark rcm`",
  TM_RCM:
    "a request to the remote copy manager failed without a code of its own; the CLI exits 1 with the RCM's message",
  TM_FENCE:
    "the after-failure procedure could not raise the generation on every secondary (step 601 needs all M); nothing after fencing was done. The RCM command exits 1: run it again",
  TM_APPLY:
    "bringing a secondary to the synchronized time Ts failed (steps 603-606) on some secondary; the RCM command exits 1. The procedure is idempotent: run it again",
  TM_TAKEOVER:
    "making the secondary volumes writable (step 7G) failed on some secondary; the RCM command exits 1: run it again",
  TM_NOT_FENCED:
    "a secondary was asked to apply Ts for a generation it is not fenced at (the group is active, or at another generation); surfaces as `TM_APPLY`",
  TM_TS_CONFLICT:
    "a secondary already brought to one Ts was asked for a different one at the same generation; the procedure stops (surfaces as `TM_APPLY` or on the RCM command): this needs an operator",
  TM_NOT_SYNCHRONIZED:
    "a takeover asked of a secondary that has not been brought to a synchronized time at that generation (surfaces as `TM_TAKEOVER`); or a resync asked of a group that still replicates (a secondary not at rest, a primary not suspended): suspend first",
  TM_GENERATION:
    "a resync or a turn of direction asked with a generation not newer than the one a subsystem holds; `tidemark resync` fails: running it again computes a new generation",
  TM_NO_VOLUME:
    "a resync named a volume that is not a primary volume of the group on that subsystem (the config changed under a running resync); nothing merged: make the configs agree and run it again",
  TM_BAD_REQUEST:
    "a control request with a malformed field (bitmap runs outside the volume, a direction that is neither `forward` nor `reverse`, a bad generation or timestamp); nothing changed: a CLI or RCM bug, or mixed versions",
  TM_EVENTS_SUBSCRIBERS:
    "a subscribe control request (`tidemark events`) to a subsystem or the RCM that already has its limit of event subscribers (16, docs/events.md, Bounds); `tidemark events` says so for that source and tries again every few seconds: close another `tidemark events`",
  TM_RESYNC:
    "the resync procedure cannot go on: the group does not rest at one synchronized time even after a suspension, or a secondary volume is in no pair of the group; `tidemark resync` exits 1: see `tidemark status`",
  TM_RESYNC_INTERRUPTED:
    "while `tidemark resync` followed a resync, the group was suspended or taken over (a secondary reports a newer generation); it exits 1 and the group rests where that left it: run the resync again",
  TM_VERIFY_STATE:
    "`tidemark verify` on a group that is not paired on some primary (copying, suspended, frozen or taken over): only a paired group has a settled replica to compare; it exits 1 with nothing started: resync the group first (docs/verify.md)",
  TM_VERIFY_RANGE:
    "`tidemark verify --range OFF:LEN` (or a control request) whose range is not whole 4 KiB blocks inside the volume, or does not parse; it exits 1 before anything is started (commander prints the usage), or the subsystem refuses it and nothing starts: give a 4096-aligned offset and length inside the volume",
  TM_VERIFY_MISMATCH:
    "`tidemark verify` finished and some secondary block differed from its primary's at the same stamp: it exits 1 after printing each pair's count and the first blocks (volume, offset, both hashes); the blocks are in the secondaries' bitmaps: `tidemark resync` (or `verify --repair`) copies them",
  TM_NOT_PAIRED:
    "`tidemark swap` on a group that is not paired (a primary copying, suspended or taken over), or whose sides differ (blocks in a bitmap, an online verify's mismatches, a volume never copied: the swap would copy them the wrong way); it exits 1 with nothing changed and names what differs: resync the group first",
  TM_SWAP:
    "`tidemark swap`: the takeover came to a Ts below the stamp the primaries were frozen at (`grp.frozen_ts`): a suspension came in between a swap's freeze and its takeover (another RCM's, or an automatic one while a primary or a link was down), so writes the primaries acknowledged are in no secondary's image; or a suspension made one of the frozen primaries writable again before the turn, so hosts may have written it since. A rerun of the swap refuses to turn such a group rather than discard them. It exits 1 with the direction unchanged: when the swap's own takeover found the Ts too low, before it opened the secondaries, no side takes host writes (the secondaries rest suspended at Ts, the primaries are taken over) and the message gives `tidemark resync --group G` (the primaries' image wins, nothing is lost), then swap again, or `tidemark takeover --group G` then `tidemark resync --group G --reverse` to discard those writes; a group found taken over already (or a secondary found open to hosts by another takeover) stays so, and the message says hosts may have written the secondaries and which side each way keeps: `tidemark resync --group G` keeps the primaries' writes and discards the secondaries', then swap again; `tidemark resync --group G --reverse` keeps the secondaries' and discards the primaries' writes after Ts",
  TM_DIRECTION_MIXED:
    "the subsystems of a group disagree on its direction (a `resync --reverse` or `swap` was cut short between subsystems); quiesce, suspend, takeover and resync refuse: run `resync --reverse` or `swap` again, which finishes the turn",
  TM_NOT_TAKEN_OVER:
    "the direction of a group was asked to turn on a subsystem where the group was not taken over (it still replicates, or rests suspended); `tidemark resync --reverse` exits 1: take the group over first",
  TM_LEASE_HELD:
    "another procedure holds the group's lease (a second RCM, or an RCM that died less than `rcm.leaseMs` ago on another address); the command exits 1 with nothing changed and names the holder and when its lease expires: wait for it, or run the command again once it has expired",
  TM_LEASE:
    "a subsystem answered the RCM's lease request with an error of its own (not another holder, not an absence: a malformed request from mixed versions, or a state file it cannot write); the procedure does not start and the command exits 1 naming the subsystem and its error",
  TM_LEASE_LOST:
    "a procedure step was refused because its lease on the group was taken by another holder (its RCM stalled past `rcm.leaseMs`, or a new RCM took over its address); the procedure stops where it is: the holder's procedure, or a rerun, finishes the group",

  // Payload segments of the journal and the RCR queue.
  TM_SEGMENT_IO:
    "a payload segment (docs/segments.md) took no bytes on append (full disk, I/O error); the commit fails: host writes get an error, or nothing is acknowledged and the primaries resend. Free space or replace the disk",
  TM_SEGMENT_SHORT:
    "a row names a payload past the end of its segment file (the file was cut short or removed by hand); on a secondary the applier retries until an automatic suspension, on a primary replay treats the entry as torn: do not edit the state folder",

  // The replication wire (docs/wire.md).
  TM_FRAME_MAGIC:
    "a replication frame does not start with the magic bytes \"TMRK\" (not a tidemark peer); the receiver logs it and drops that connection, the others go on",
  TM_FRAME_VERSION:
    "a frame of a wire version this side does not speak (docs/wire.md, Versions); as `TM_FRAME_MAGIC`: run the same tidemark version on every subsystem, the RCM and the CLI",
  TM_FRAME_TYPE: "an unknown frame type; as `TM_FRAME_MAGIC`",
  TM_FRAME_FLAGS: "reserved flag bits set; as `TM_FRAME_MAGIC`",
  TM_FRAME_GENERATION:
    "a nonzero generation on a frame type that carries none (only group frames carry one); as `TM_FRAME_MAGIC`",
  TM_FRAME_LENGTH:
    "the declared payload length is above the limit (`FRAME_PAYLOAD_MAX`, or the handshake's smaller one), or wrong for the frame type; as `TM_FRAME_MAGIC`",
  TM_FRAME_CRC: "the CRC32C of a frame does not match: corrupted bytes; as `TM_FRAME_MAGIC`",
  TM_FRAME_PAYLOAD:
    "the payload does not parse as its type says (truncated, trailing bytes, a string over its bound or not UTF-8, a bad field); as `TM_FRAME_MAGIC`",
  TM_FRAME_ENCODE:
    "a value the wire format cannot carry was given to `encodeFrame`: a caller bug, thrown at the sender, never on the wire",
  TM_LINK_CONNECT:
    "the TCP connection to a peer failed; the sender logs \"link connect failed; retrying\" once per distinct error, the link goes to `backoff` and status shows `lastError`",
  TM_LINK_TIMEOUT:
    "the handshake did not complete in time; as `TM_LINK_CONNECT`, and the server side logs and drops the socket",
  TM_LINK_AUTH:
    "the peer's HMAC proof is wrong: it does not hold the cluster key; logged on both sides, the connection dropped and retried: give every subsystem the same `clusterKey`",
  TM_LINK_REFUSED:
    "the peer answered the handshake with an `error` frame (wrong key, role or node id not acceptable); the message has its wire code and text: fix what it names",
  TM_LINK_PROTOCOL:
    "a frame not allowed in the current state (e.g. an RCR before the handshake), or a frame error during the handshake; logged, the connection dropped",
  TM_LINK_CLOSED:
    "the link closed while something waited on it (a send, a handshake); the waiter fails and a sender goes to `backoff` and reconnects",
  TM_LINK_TLS:
    "the TLS handshake of a link or control connection failed (wrong PSK, a certificate the cluster CA did not sign, a plain-TCP peer) or the peer's TLS identity does not name the node its hello claims; logged with the peer's address on the server, the connection dropped and retried: give every process the same cluster key file, or a certificate of the cluster CA with CN `ss<id>`",

  // NBD: tidemark's server and its client (the drill's hosts).
  TM_NBD_ERROR:
    "an export or the server refused an NBD request with an explicit NBD errno (`NbdError.nbdErrno`); the host gets that errno in the reply",
  TM_NBD_STREAM_ENDED:
    "an NBD client closed its socket in the middle of a message; the connection ends with one log line",
  TM_NBD_CONNECTION:
    "tidemark's NBD client: TCP connect failed, the handshake broke or timed out, the connection was lost, or a request got no reply within its timeout (the connection is then dropped); the request fails and the drill's workload reconnects",
  TM_NBD_REFUSED:
    "tidemark's NBD client: the server refused `NBD_OPT_GO` (unknown export, policy); connect fails with the server's text",
  TM_NBD_TLS_CONFIG:
    "the subsystem's `nbdTls` files cannot be used: a certificate, key, CA or PSK file is missing or unreadable, a key or PSK file is readable by group or others (mode & 0o077; `chmod 600` it), a PSK file line is not `username:hexkey`, or the certificate and key do not load; the message names the file and the subsystem does not start",
  TM_NBD_REQUEST:
    "tidemark's NBD client: the server answered a request with an NBD error number (`nbdErrno`), e.g. `EPERM` writing a read-only or taken-over export; that request fails, the connection stays usable",

  // The consistency drill (docs/drill.md, docs/chains.md).
  TM_CHAIN_PLAN:
    "a consistency drill's chain plan is invalid or over its bounds (`PLAN_CHAINS_MAX`, `PLAN_LENGTH_MAX`, `PLAN_BLOCKS_MAX`); the drill exits 1: ask for fewer or shorter chains",
  TM_DRILL_CONFIG:
    "`tidemark drill --config FILE`: the topology has no consistency group, or a group whose primary volumes are all on one primary (causal chains must cross primaries); or `--dir` is not a folder; the drill exits 2 with nothing created",
  TM_DRILL_MOUNT:
    "`tidemark drill --full-disk` where the tmpfs its full-disk round fills cannot be mounted (not root, no `mount`); the message says which and the drill exits 2 with nothing created (or the mount's error, once the folder exists)",
  TM_DRILL_LOOP:
    "`tidemark drill --loop` where loop devices cannot work: not root, no `/dev/loop-control`, no `losetup`; the message says which and the drill exits 2 with nothing created",
  TM_DRILL_HOSTS:
    "`tidemark drill --hosts` where namespaced hosts cannot work: not root, no `ip netns`, veth or bridge links, no libfaketime, 198.18.0.0/24 already routed, or more subsystems than hosts fit; the message says which and the drill exits 2 with nothing created",
  TM_DRILL_PORTS:
    "the drill found too few free TCP ports above the kernel's ephemeral range for its temporary topology; the drill exits 1",
  TM_DRILL_PROCESS:
    "a drill subsystem or RCM did not print its ready line in time, or exited before it; the message names its log, the round fails with this as its violation",
  TM_DRILL_STEP:
    "a drill step that tidemark must be able to do failed: takeover (after retries), resync, quiesce, or a pair that never became paired; the round fails with this as its violation",

  // The disks layer (details and the errno behind each: docs/disks.md).
  TM_VOLUME_LOCKED:
    "another opener holds the volume (flock, or `O_EXCL` on a block device); the subsystem does not start: stop the other opener",
  TM_VOLUME_MISSING:
    "the volume's path does not exist and may not be created; the subsystem does not start: fix the path",
  TM_VOLUME_ACCESS:
    "permission denied, or a read-write open on a read-only file system; the subsystem does not start: fix the permissions or the mount",
  TM_VOLUME_KIND:
    "the path is neither a regular file nor a block device; the subsystem does not start: fix the path",
  TM_VOLUME_SIZE:
    "the size is not a positive multiple of 512 (an empty file left by a cut-short creation); the subsystem does not start: remove or resize the file",
  TM_VOLUME_ALIGN:
    "a request's offset or length is not a multiple of 512; the host gets NBD `EIO` (the NBD server refuses misaligned requests itself with `EINVAL` first)",
  TM_VOLUME_RANGE:
    "a request outside the volume; the host gets NBD `EIO` (the server refuses out-of-range requests first)",
  TM_VOLUME_READONLY: "a write to a volume opened read-only; the host gets NBD `EPERM`",
  TM_VOLUME_CLOSED: "a call after the volume was closed (at stop); the host gets NBD `EIO`",
  TM_VOLUME_IO:
    "the operating system failed the I/O (EIO, ENOSPC, ...); the host gets the NBD errno of the cause (`nbdErrno` reads `sysCode`: `ENOSPC` for a full disk, else `EIO`). On a secondary the applier logs and retries every second and the RCM suspends the group. On a primary, a write or fdatasync that fails with anything but a full disk marks the volume failed: hosts get EIO for every read and write of it until the subsystem restarts, status names it (`primary.volumes[].failed`) and the RCM suspends the group with the volume named; take the group over (its secondaries hold what was acknowledged), replace the disk, then `resync --reverse` (README, When a disk fails)",
  TM_LOOP_ATTACH: "`losetup --find --show` failed; tests and drills skip or fail with the message",
  TM_LOOP_DETACH: "`losetup --detach` failed; tests and drills fail with the message",
} as const satisfies Record<`TM_${string}`, string>;

/** Every code tidemark raises. A string literal typed as this that is not a key above does not compile. */
export type ErrorCode = keyof typeof ERROR_CODES;

/** The codes of one family (`ErrorCodeOf<"TM_LINK_">`): the code type of that family's error class. */
export type ErrorCodeOf<Prefix extends string> = Extract<ErrorCode, `${Prefix}${string}`>;

/**
 * A union of codes that must all be in the registry (`Codes<"TM_A" | "TM_B">`).
 * Unlike Extract, which drops a misspelt member silently, this fails to compile.
 */
export type Codes<C extends ErrorCode> = C;

export function isErrorCode(value: unknown): value is ErrorCode {
  return typeof value === "string" && Object.hasOwn(ERROR_CODES, value);
}

/** The registry's codes that start with `prefix`, in registry order (e.g. a layer's list for its own doc test). */
export function errorCodesWithPrefix<P extends string>(prefix: P): ErrorCodeOf<P>[] {
  return (Object.keys(ERROR_CODES) as ErrorCode[]).filter((c): c is ErrorCodeOf<P> => c.startsWith(prefix));
}

/**
 * A code received from a peer (a control answer). A newer peer may send a code
 * this build does not know, or an errno name (`ENOSPC`) an error of its own
 * carried; it is kept as sent rather than replaced, so the admin sees the real
 * one. Branded so that a bare string literal is not one.
 */
export type PeerErrorCode = string & { readonly __peerErrorCode: true };

/** What a peer's code may look like: upper case, bounded, so a stranger's answer does not fill a log line. */
const PEER_CODE = /^[A-Z][A-Z0-9_]{0,63}$/;

/** The code a peer's error answer carries, or `fallback` when it carries none that looks like one. */
export function peerErrorCode(value: unknown, fallback: ErrorCode): ErrorCode | PeerErrorCode {
  if (isErrorCode(value)) return value;
  if (typeof value === "string" && PEER_CODE.test(value)) return value as PeerErrorCode;
  return fallback;
}

/**
 * Where an error happened, for the log line and the admin: group, subsystem, volume, file, port...
 * No bigint: an error may meet JSON.stringify (a log line, a control answer), which throws on one;
 * give timestamps as decimal strings.
 */
export type ErrorContext = Readonly<Record<string, string | number | boolean | null | undefined>>;

/**
 * An error raised on purpose: a registry code, a message that says what was
 * wrong where, and the same facts as fields (`context`), which pino's error
 * serializer prints beside the message.
 */
export class TidemarkError extends Error {
  readonly code: ErrorCode;
  readonly context: ErrorContext;
  constructor(code: ErrorCode, message: string, context: ErrorContext = {}, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "TidemarkError";
    this.code = code;
    this.context = context;
  }
}

/** Builds (does not throw) a TidemarkError: `throw tmError("TM_NO_GROUP", "...", { group })`. */
export function tmError(code: ErrorCode, message: string, context: ErrorContext = {}, options?: { cause?: unknown }): TidemarkError {
  return new TidemarkError(code, message, context, options);
}

/** The `code` an error carries (a registry code, a peer's, or a Node errno), or `fallback` when it has none. */
export function codeOf(err: unknown, fallback: ErrorCode): string {
  if (typeof err === "object" && err !== null && "code" in err) {
    const code = (err as { code: unknown }).code;
    if (typeof code === "string" && code.length > 0) return code;
  }
  return fallback;
}

/** True if `err` carries one of `codes`; the codes are typed, so a misspelt one does not compile. */
export function hasCode(err: unknown, ...codes: ErrorCode[]): boolean {
  if (typeof err !== "object" || err === null || !("code" in err)) return false;
  const code = (err as { code: unknown }).code;
  return typeof code === "string" && (codes as string[]).includes(code);
}

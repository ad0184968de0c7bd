// The least a Node.js process pays per NBD operation on this machine: a
// server that does nothing but the NBD protocol and the file's pread/pwrite,
// synchronously on the event loop (no journal, no SQLite, no replication, no
// TLS, no promise per request). The bench runs it as the "node floor" target
// (`npm run bench -- --only node-floor,...`) so that tidemark's CPU per
// operation can be read against what the runtime alone costs, beside nbdkit's
// in C. It is a bench instrument, not a product part: it serves one export to
// clients on loopback and closes a connection on anything it does not expect.
//
// With --forward, it is also the floor of replication in Node.js: each write
// is written to the file and sent on, in the same turn of the loop, to a
// second process (--sink) that writes it to its own file and acknowledges.
// No durability, no journal, no ordering rule: what any design pays at least.
//
// With --journal (both sides), each side also keeps what the crash rules
// need before it answers, in the least way: the payload appended to a segment
// file and a row (seq, offset, length, segment position) inserted in SQLite
// (WAL, synchronous NORMAL, as tidemark's state files), one transaction per
// turn of the loop, the replies (host's or acks) only after it commits; the
// server deletes the rows the sink acknowledged and the sink those it wrote to
// its file, one statement per turn. No checksum, no fsync, no TLS, no clock.
//
// With --async-io, the volume file's reads and writes (the server's and the
// sink's) go through libuv's thread pool, as a server must do that cannot let
// a slow disk stall its event loop (tidemark does); the replies of one turn
// leave in one write. The journal's appends stay synchronous (the cheapest).
//
// usage: node --import tsx bench/node-floor.ts [--async-io] [--journal] FILE PORT [--forward SINK_PORT]
//        node --import tsx bench/node-floor.ts [--async-io] [--journal] --sink FILE PORT
import { closeSync, fstatSync, openSync, read, readSync, write, writeSync, fdatasyncSync } from "node:fs";
import net from "node:net";
import Database from "better-sqlite3";
import {
  NBD_CMD_DISC,
  NBD_CMD_FLUSH,
  NBD_CMD_READ,
  NBD_CMD_WRITE,
  NBD_EINVAL,
  NBD_FLAG_HAS_FLAGS,
  NBD_FLAG_SEND_FLUSH,
  NBD_IHAVEOPT,
  NBD_INFO_EXPORT,
  NBD_MAGIC,
  NBD_OPT_ABORT,
  NBD_OPT_EXPORT_NAME,
  NBD_OPT_GO,
  NBD_OPT_INFO,
  NBD_OPTION_REPLY_MAGIC,
  NBD_REP_ACK,
  NBD_REP_ERR_UNSUP,
  NBD_REP_INFO,
  NBD_REQUEST_MAGIC,
  NBD_SIMPLE_REPLY_MAGIC,
} from "../appliance/nbd/protocol.ts"; // the protocol's numbers: the product's own

const args = process.argv.slice(2);
const asyncIo = args[0] === "--async-io";
if (asyncIo) args.shift();
const journaled = args[0] === "--journal";
if (journaled) args.shift();
const sinkMode = args[0] === "--sink";
if (sinkMode) args.shift();
const [file, portArg] = args;
const forwardPort = args[2] === "--forward" ? Number(args[3]) : 0;
if (!file || !portArg || (args.length > 2 && !(forwardPort > 0))) {
  process.stderr.write("usage: node-floor [--async-io] [--journal] FILE PORT [--forward SINK_PORT] | node-floor [--async-io] [--journal] --sink FILE PORT\n");
  process.exit(2);
}
const fd = openSync(file, "r+");
const size = fstatSync(fd).size;
process.on("exit", () => closeSync(fd));

/** Segment bytes before the journal writes from its start again: far past what is in flight unacknowledged (FORWARD_BOUND). */
const SEGMENT_RING = 256 << 20;

/** The least journal: a segment file for payloads, a SQLite row per write, one transaction per turn. */
class Journal {
  private readonly seg = openSync(`${file}.segment`, "w");
  private segAt = 0;
  private readonly db = new Database(`${file}.journal.db`);
  private readonly insert;
  private readonly trim;
  private rows: [number, number, number, number][] = [];
  private trimTo = 0;
  private readonly commit;
  constructor() {
    this.db.pragma("journal_mode = WAL");
    this.db.pragma("synchronous = NORMAL");
    this.db.exec("CREATE TABLE IF NOT EXISTS journal (seq INTEGER PRIMARY KEY, offset INTEGER, length INTEGER, seg_at INTEGER)");
    this.insert = this.db.prepare("INSERT INTO journal VALUES (?, ?, ?, ?)");
    this.trim = this.db.prepare("DELETE FROM journal WHERE seq <= ?");
    this.commit = this.db.transaction(() => {
      for (const r of this.rows) this.insert.run(r);
      if (this.trimTo > 0) this.trim.run(this.trimTo);
    });
  }
  add(seq: number, offset: number, data: Buffer): void {
    // A ring, as a journal that recycles trimmed space: an ever-growing file
    // would fill the page cache and measure the kernel's writeback instead.
    if (this.segAt + data.length > SEGMENT_RING) this.segAt = 0;
    writeSync(this.seg, data, 0, data.length, this.segAt);
    this.rows.push([seq, offset, data.length, this.segAt]);
    this.segAt += data.length;
  }
  acked(seq: number): void {
    this.trimTo = Math.max(this.trimTo, seq);
  }
  /** Commits the turn's rows and trims, when there is anything to commit. */
  flush(): void {
    if (this.rows.length === 0 && this.trimTo === 0) return;
    this.commit();
    this.rows = [];
    this.trimTo = 0;
  }
}
const journal = journaled ? new Journal() : null;
let hostSeq = 0;

const TRANSMISSION_FLAGS = NBD_FLAG_HAS_FLAGS | NBD_FLAG_SEND_FLUSH;
const MAX_PAYLOAD = 32 << 20;
/** Bytes sent on to the sink and not yet taken by the socket, before the host's connection is paused. */
const FORWARD_BOUND = 64 << 20;

/** The bytes received and not yet parsed, as a list of chunks (no copy until a field spans two). */
class Chunks {
  private list: Buffer[] = [];
  private head = 0;
  length = 0;
  push(b: Buffer): void {
    this.list.push(b);
    this.length += b.length;
  }
  /** The next n bytes, copied, left in place. */
  peek(n: number): Buffer {
    const out = Buffer.allocUnsafe(n);
    let at = 0;
    for (let i = 0, from = this.head; at < n; i++, from = 0) {
      const c = this.list[i]!;
      at += c.copy(out, at, from, Math.min(c.length, from + n - at));
    }
    return out;
  }
  /** n bytes, a view when they lie in one chunk, else a copy. */
  take(n: number): Buffer {
    const first = this.list[0]!;
    let out: Buffer;
    if (first.length - this.head >= n) {
      out = first.subarray(this.head, this.head + n);
      this.head += n;
      if (this.head === first.length) {
        this.list.shift();
        this.head = 0;
      }
    } else {
      out = Buffer.allocUnsafe(n);
      let at = 0;
      while (at < n) {
        const c = this.list[0]!;
        const k = Math.min(c.length - this.head, n - at);
        c.copy(out, at, this.head, this.head + k);
        at += k;
        this.head += k;
        if (this.head === c.length) {
          this.list.shift();
          this.head = 0;
        }
      }
    }
    this.length -= n;
    return out;
  }
}

function optReply(opt: number, type: number, data: Buffer = Buffer.alloc(0)): Buffer {
  const h = Buffer.alloc(20);
  h.writeBigUInt64BE(NBD_OPTION_REPLY_MAGIC, 0);
  h.writeUInt32BE(opt, 8);
  h.writeUInt32BE(type, 12);
  h.writeUInt32BE(data.length, 16);
  return Buffer.concat([h, data]);
}

function serve(sock: net.Socket): void {
  sock.setNoDelay(true);
  const greeting = Buffer.alloc(18);
  greeting.writeBigUInt64BE(NBD_MAGIC, 0);
  greeting.writeBigUInt64BE(NBD_IHAVEOPT, 8);
  greeting.writeUInt16BE(3, 16); // fixed newstyle, no zeroes
  sock.write(greeting);
  const input = new Chunks();
  let phase: "flags" | "options" | "transmission" = "flags";
  let noZeroes = false;
  // A write waiting for its payload: its header was parsed, its bytes not yet all here.
  let waiting: { handle: Buffer; offset: number; length: number } | null = null;

  const fail = (why: string): void => {
    process.stderr.write(`node-floor: closing a connection: ${why}\n`);
    sock.destroy();
  };

  // --async-io: replies that complete in the pool's callbacks, written once per turn.
  let later: Buffer[] = [];
  const flushLater = (): void => {
    const parts = later;
    later = [];
    if (parts.length > 0 && !sock.destroyed) sock.write(parts.length === 1 ? parts[0]! : Buffer.concat(parts));
  };
  const replyLater = (handle: Buffer, err: Error | null, data?: Buffer): void => {
    if (later.length === 0) setImmediate(flushLater);
    reply(later, handle, err ? NBD_EINVAL : 0, err ? undefined : data);
  };

  const reply = (out: Buffer[], handle: Buffer, error: number, data?: Buffer): void => {
    const r = Buffer.allocUnsafe(16);
    r.writeUInt32BE(NBD_SIMPLE_REPLY_MAGIC, 0);
    r.writeUInt32BE(error, 4);
    handle.copy(r, 8);
    out.push(r);
    if (data) out.push(data);
  };

  sock.on("data", (chunk: Buffer) => {
    input.push(chunk);
    const out: Buffer[] = [];
    const sent: Buffer[] = [];
    for (;;) {
      if (phase === "flags") {
        if (input.length < 4) break;
        noZeroes = (input.take(4).readUInt32BE(0) & 2) !== 0;
        phase = "options";
      } else if (phase === "options") {
        if (input.length < 16) break;
        // The header is taken only once the option's data is here too.
        const head = input.peek(16);
        const len = head.readUInt32BE(12);
        if (head.readBigUInt64BE(0) !== NBD_IHAVEOPT || len > 4096) return fail("bad option header");
        if (input.length < 16 + len) break;
        const opt = head.readUInt32BE(8);
        input.take(16 + len);
        if (opt === NBD_OPT_EXPORT_NAME) {
          const r = Buffer.alloc(noZeroes ? 10 : 134);
          r.writeBigUInt64BE(BigInt(size), 0);
          r.writeUInt16BE(TRANSMISSION_FLAGS, 8);
          out.push(r);
          phase = "transmission";
        } else if (opt === NBD_OPT_GO || opt === NBD_OPT_INFO) {
          const info = Buffer.alloc(12);
          info.writeUInt16BE(NBD_INFO_EXPORT, 0);
          info.writeBigUInt64BE(BigInt(size), 2);
          info.writeUInt16BE(TRANSMISSION_FLAGS, 10);
          out.push(optReply(opt, NBD_REP_INFO, info), optReply(opt, NBD_REP_ACK));
          if (opt === NBD_OPT_GO) phase = "transmission";
        } else if (opt === NBD_OPT_ABORT) {
          out.push(optReply(opt, NBD_REP_ACK));
          sock.end(Buffer.concat(out));
          return;
        } else {
          out.push(optReply(opt, NBD_REP_ERR_UNSUP));
        }
      } else if (waiting) {
        if (input.length < waiting.length) break;
        const data = input.take(waiting.length);
        if (waiting.offset < 0) reply(out, waiting.handle, NBD_EINVAL);
        else {
          hostSeq++;
          journal?.add(hostSeq, waiting.offset, data);
          if (forward) {
            const h = Buffer.allocUnsafe(16);
            h.writeBigUInt64BE(BigInt(waiting.offset), 0);
            h.writeUInt32BE(data.length, 8);
            h.writeUInt32BE(hostSeq, 12);
            sent.push(h, data);
          }
          if (asyncIo) {
            // Answered in a later turn, so always after this turn's commit below.
            const handle = waiting.handle;
            write(fd, data, 0, data.length, waiting.offset, (err) => replyLater(handle, err));
          } else {
            writeSync(fd, data, 0, data.length, waiting.offset);
            reply(out, waiting.handle, 0);
          }
        }
        waiting = null;
      } else {
        if (input.length < 28) break;
        const h = input.take(28);
        if (h.readUInt32BE(0) !== NBD_REQUEST_MAGIC) return fail("bad request magic");
        const type = h.readUInt16BE(6);
        const handle = Buffer.from(h.subarray(8, 16));
        const offset = Number(h.readBigUInt64BE(16));
        const length = h.readUInt32BE(24);
        const inRange = offset + length <= size && length <= MAX_PAYLOAD;
        if (type === NBD_CMD_WRITE) {
          if (length > MAX_PAYLOAD) return fail("write too long");
          // Out of range: the payload is read and dropped, and the answer is NBD_EINVAL.
          waiting = { handle, offset: inRange ? offset : -1, length };
        } else if (type === NBD_CMD_READ) {
          if (!inRange) reply(out, handle, NBD_EINVAL);
          else if (asyncIo) {
            const data = Buffer.allocUnsafe(length);
            read(fd, data, 0, length, offset, (err) => replyLater(handle, err, data));
          } else {
            const data = Buffer.allocUnsafe(length);
            readSync(fd, data, 0, length, offset);
            reply(out, handle, 0, data);
          }
        } else if (type === NBD_CMD_FLUSH) {
          fdatasyncSync(fd);
          reply(out, handle, 0);
        } else if (type === NBD_CMD_DISC) {
          sock.end(Buffer.concat(out));
          return;
        } else {
          reply(out, handle, NBD_EINVAL);
        }
      }
    }
    // Group commit: the turn's rows are in SQLite before any of its writes is answered or sent.
    journal?.flush();
    if (sent.length > 0 && forward) {
      // One writev for the turn's frames: headers and payload views, no copy.
      forward.cork();
      for (const b of sent) forward.write(b);
      forward.uncork();
      if (forward.writableLength > FORWARD_BOUND) {
        sock.pause();
        forward.once("drain", () => sock.resume());
      }
    }
    if (out.length === 1) sock.write(out[0]!);
    else if (out.length > 1) sock.write(Buffer.concat(out));
  });
  sock.on("error", () => sock.destroy());
}

function applied(err: Error | null): void {
  if (err) {
    process.stderr.write(`node-floor sink: a write to ${file} failed: ${err.message}\n`);
    process.exit(1);
  }
}

/** The sink: frames of (offset u64, length u32, seq u32, payload) written to its file; one ack (the last seq) per turn. */
function sink(sock: net.Socket): void {
  sock.setNoDelay(true);
  const input = new Chunks();
  let head: { offset: number; length: number; seq: number } | null = null;
  sock.on("data", (chunk: Buffer) => {
    input.push(chunk);
    let acked = 0;
    for (;;) {
      if (!head) {
        if (input.length < 16) break;
        const h = input.take(16);
        head = { offset: Number(h.readBigUInt64BE(0)), length: h.readUInt32BE(8), seq: h.readUInt32BE(12) };
        if (head.length > MAX_PAYLOAD || head.offset + head.length > size) {
          process.stderr.write("node-floor sink: closing: a frame out of range\n");
          sock.destroy();
          return;
        }
      }
      if (input.length < head.length) break;
      const data = input.take(head.length);
      journal?.add(head.seq, head.offset, data);
      // The apply; with --async-io through the pool, as the server's own writes.
      if (asyncIo) write(fd, data, 0, data.length, head.offset, applied);
      else writeSync(fd, data, 0, data.length, head.offset);
      acked = head.seq;
      head = null;
    }
    // The sink's rows are durable before it acknowledges; the file writes above
    // stand for the apply, whose rows the next turn's transaction trims.
    if (journal) {
      journal.flush();
      if (acked > 0) journal.acked(acked);
    }
    if (acked > 0) {
      const a = Buffer.allocUnsafe(4);
      a.writeUInt32BE(acked, 0);
      sock.write(a);
    }
  });
  sock.on("error", () => sock.destroy());
}

let forward: net.Socket | null = null;
if (forwardPort > 0) {
  forward = net.connect(forwardPort, "127.0.0.1");
  forward.setNoDelay(true);
  // The acks: the last seq the sink holds, in 4-byte numbers; with a journal they trim it.
  let ackBytes: Buffer = Buffer.alloc(0);
  forward.on("data", (d: Buffer) => {
    if (!journal) return;
    ackBytes = ackBytes.length > 0 ? Buffer.concat([ackBytes, d]) : d;
    const n = ackBytes.length >> 2;
    if (n > 0) journal.acked(ackBytes.readUInt32BE((n - 1) * 4));
    ackBytes = ackBytes.subarray(n * 4);
  });
  forward.on("error", (e) => {
    process.stderr.write(`node-floor: the sink on port ${forwardPort} failed: ${e.message}\n`);
    process.exit(1);
  });
  await new Promise((resolve) => forward!.once("connect", resolve));
}
const server = net.createServer(sinkMode ? sink : serve);
const what = sinkMode ? "sink for" : forward ? `serving and forwarding to port ${forwardPort}` : "serving";
server.listen(Number(portArg), "127.0.0.1", () => process.stdout.write(`node-floor: ${what} ${file} (${size} bytes) on 127.0.0.1:${portArg}\n`));

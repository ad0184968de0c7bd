// Follows the server's side of a whole NBD stream (greeting, option replies,
// then simple replies and structured chunks) without keeping payloads, and
// counts the replies per cookie: for the inputs that end with DISC, the server
// must answer every request before it exactly once, then close (docs/nbd.md).
// Pure: bytes in, a verdict out.

const OPTION_REPLY_MAGIC = 0x0003e889045565a9n;
const SIMPLE_REPLY_MAGIC = 0x67446698;
const STRUCTURED_REPLY_MAGIC = 0x668e33ef;
const OPT_GO = 7;
const REP_ACK = 1;
const REPLY_FLAG_DONE = 1;

export class NbdReplyCheck {
  private phase: "greeting" | "options" | "transmission" = "greeting";
  private head = Buffer.alloc(0);
  private need = 18;
  private skip = 0;
  private readonly answered = new Map<bigint, number>();
  private readonly expected: Map<bigint, number | null>;
  problem: string | null = null;

  constructor(requests: { cookie: bigint; readLength: number | null }[]) {
    this.expected = new Map(requests.map((r) => [r.cookie, r.readLength]));
  }

  push(b: Buffer): void {
    let at = 0;
    while (at < b.length && this.problem === null) {
      if (this.skip > 0) {
        const n = Math.min(this.skip, b.length - at);
        this.skip -= n;
        at += n;
        continue;
      }
      const take = Math.min(this.need - this.head.length, b.length - at);
      this.head = Buffer.concat([this.head, b.subarray(at, at + take)]);
      at += take;
      if (this.head.length === this.need) this.onHead();
    }
  }

  private next(need: number, skip = 0): void {
    this.head = Buffer.alloc(0);
    this.need = need;
    this.skip = skip;
  }

  private onHead(): void {
    const h = this.head;
    if (this.phase === "greeting") {
      this.phase = "options";
      return this.next(20);
    }
    if (this.phase === "options") {
      if (h.readBigUInt64BE(0) !== OPTION_REPLY_MAGIC) {
        this.problem = `option reply with bad magic 0x${h.readBigUInt64BE(0).toString(16)}`;
        return;
      }
      const option = h.readUInt32BE(8);
      const type = h.readUInt32BE(12);
      if (option === OPT_GO && type === REP_ACK) {
        this.phase = "transmission";
        return this.next(4, h.readUInt32BE(16));
      }
      if (option === OPT_GO && type >= 0x80000000) this.problem = `GO of a known export refused with reply type 0x${type.toString(16)}`;
      return this.next(20, h.readUInt32BE(16));
    }
    if (h.length === 4) {
      const magic = h.readUInt32BE(0);
      if (magic === SIMPLE_REPLY_MAGIC) this.need = 16;
      else if (magic === STRUCTURED_REPLY_MAGIC) this.need = 20;
      else this.problem = `reply with bad magic 0x${magic.toString(16)}`;
      return;
    }
    const cookie = h.readBigUInt64BE(8);
    if (!this.expected.has(cookie)) {
      this.problem = `reply for cookie 0x${cookie.toString(16)}, which no request before DISC carried`;
      return;
    }
    if (h.length === 16) {
      const errno = h.readUInt32BE(4);
      const readLength = this.expected.get(cookie);
      this.count(cookie);
      return this.next(4, errno === 0 && readLength !== null && readLength !== undefined ? readLength : 0);
    }
    if ((h.readUInt16BE(4) & REPLY_FLAG_DONE) !== 0) this.count(cookie);
    this.next(4, h.readUInt32BE(16));
  }

  private count(cookie: bigint): void {
    const n = (this.answered.get(cookie) ?? 0) + 1;
    this.answered.set(cookie, n);
    if (n > 1) this.problem = `cookie 0x${cookie.toString(16)} answered ${n} times`;
  }

  /** After the server closed: what is wrong, or null. */
  verdict(): string | null {
    if (this.problem !== null) return this.problem;
    if (this.phase !== "transmission") return `the server closed in the ${this.phase} phase of a whole stream`;
    const missing = [...this.expected.keys()].filter((c) => !this.answered.has(c));
    if (missing.length) return `${missing.length} of ${this.expected.size} requests before DISC got no reply (first cookie 0x${missing[0].toString(16)})`;
    if (this.skip > 0 || this.head.length > 0) return `the server closed inside a reply (${this.skip} data bytes and ${this.need - this.head.length} header bytes missing)`;
    return null;
  }
}

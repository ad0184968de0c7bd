// Pull-based reader over a socket: the owner asks for exactly n bytes when it
// is ready for them. While nobody asks the socket is paused before the bytes
// read ahead could pass readAheadBytesMax, so TCP flow control pushes back on
// the peer. At most one read or skip is outstanding at a time.
import type { Socket } from "node:net";
import { assert } from "../invariant.ts";
import type { ErrorCode } from "../errors/codes.ts";

export class StreamEndedError extends Error {
  readonly code = "TM_NBD_STREAM_ENDED" satisfies ErrorCode;
  constructor(message: string) {
    super(message);
    this.name = "StreamEndedError";
  }
}

interface Want {
  bytes: number;
  discard: boolean;
  resolve: (b: Buffer) => void;
  reject: (e: Error) => void;
}

const EMPTY = Buffer.alloc(0);

/**
 * The largest piece a socket hands out at once: libuv reads a TCP socket into
 * 64 KiB buffers (a TLS socket's pieces are at most 16 KiB).
 */
export const SOCKET_CHUNK_BYTES_MAX = 64 * 1024;

/**
 * What a paused socket may still take into its own buffer: Node reads pieces
 * into it until it holds its readableHighWaterMark, so at most one byte short
 * of that plus one whole piece.
 */
export function socketBufferBytesMax(socket: Socket): number {
  return Math.max(socket.readableHighWaterMark, 1) - 1 + SOCKET_CHUNK_BYTES_MAX;
}

export class ByteReader {
  private chunks: Buffer[] = [];
  private buffered = 0;
  private want: Want | null = null;
  private ended: Error | null = null;
  /** Buffered bytes up to which the socket keeps flowing while nobody asks. */
  private readonly flowWhileAtMost: number;
  private readonly onData = (chunk: Buffer) => {
    this.chunks.push(chunk);
    this.buffered += chunk.length;
    this.onProgress?.();
    this.serve();
  };
  private readonly onEnd = () => this.end(new StreamEndedError("peer closed the connection"));
  private readonly onClose = () => this.end(new StreamEndedError("connection closed"));

  /**
   * readAheadBytesMax bounds what is read from the socket beyond what was
   * asked: bytes here plus those in the paused socket's own buffer. onProgress
   * runs on every chunk received: the owner's stall clock.
   */
  constructor(
    private readonly socket: Socket,
    readAheadBytesMax: number,
    private readonly onProgress?: () => void,
  ) {
    // A piece arriving while the socket flows, then what the socket takes
    // after the pause, must still fit.
    this.flowWhileAtMost = readAheadBytesMax - SOCKET_CHUNK_BYTES_MAX - socketBufferBytesMax(socket);
    socket.on("data", this.onData);
    socket.on("end", this.onEnd);
    socket.on("close", this.onClose);
  }

  /** Bytes received and not yet handed out. */
  bufferedBytes(): number {
    return this.buffered;
  }

  /** True while a read or skip waits for bytes. */
  waiting(): boolean {
    return this.want !== null;
  }

  /**
   * Stops reading the socket (STARTTLS hands it to a TLS layer); the socket is
   * left paused. Only between messages: nothing buffered, nothing asked.
   */
  detach(): void {
    assert(this.want === null && this.buffered === 0, "byte reader: detach with bytes buffered or a read pending");
    this.socket.off("data", this.onData);
    this.socket.off("end", this.onEnd);
    this.socket.off("close", this.onClose);
    this.socket.pause();
  }

  /** Resolves with exactly n bytes; rejects with StreamEndedError if the stream ends first. */
  read(n: number): Promise<Buffer> {
    return this.ask(n, false);
  }

  /**
   * Exactly n bytes if they are already here, else null (then `read`): the
   * request loop parses pipelined requests without a promise per header.
   */
  tryRead(n: number): Buffer | null {
    if (this.want !== null || n === 0 || this.buffered < n) return null;
    const b = this.take(n);
    this.flow();
    return b;
  }

  /** Consumes n bytes without holding them in memory at once. */
  async skip(n: number): Promise<void> {
    await this.ask(n, true);
  }

  /** Ends the stream for the reader: a pending or later read rejects. */
  end(err: Error): void {
    if (this.ended) return;
    this.ended = err;
    const w = this.want;
    this.want = null;
    w?.reject(err);
  }

  private ask(n: number, discard: boolean): Promise<Buffer> {
    assert(this.want === null, "byte reader: one read at a time");
    if (n === 0) return Promise.resolve(EMPTY);
    if (this.ended && this.buffered < n) return Promise.reject(this.ended);
    return new Promise<Buffer>((resolve, reject) => {
      this.want = { bytes: n, discard, resolve, reject };
      this.serve();
    });
  }

  private serve(): void {
    const w = this.want;
    if (w) {
      if (w.discard) {
        w.bytes -= this.drop(Math.min(w.bytes, this.buffered));
        if (w.bytes === 0) {
          this.want = null;
          w.resolve(EMPTY);
        }
      } else if (this.buffered >= w.bytes) {
        this.want = null;
        w.resolve(this.take(w.bytes));
      }
    }
    this.flow();
  }

  private flow(): void {
    // Keep reading while someone waits or read-ahead has room for the next
    // piece and what the socket takes after a pause; otherwise leave the
    // bytes in the kernel.
    if (this.want !== null || this.buffered <= this.flowWhileAtMost) this.socket.resume();
    else this.socket.pause();
  }

  private take(n: number): Buffer {
    const first = this.chunks[0];
    if (first.length >= n) {
      this.consumeFront(n);
      return first.subarray(0, n);
    }
    const out = Buffer.allocUnsafe(n);
    let at = 0;
    while (at < n) {
      const c = this.chunks[0];
      const k = Math.min(c.length, n - at);
      c.copy(out, at, 0, k);
      at += k;
      this.consumeFront(k);
    }
    return out;
  }

  private drop(n: number): number {
    let left = n;
    while (left > 0) {
      const k = Math.min(this.chunks[0].length, left);
      this.consumeFront(k);
      left -= k;
    }
    return n;
  }

  private consumeFront(k: number): void {
    const c = this.chunks[0];
    if (k === c.length) this.chunks.shift();
    else this.chunks[0] = c.subarray(k);
    this.buffered -= k;
  }
}

// The fuzzer's NBD reply counter (test/fuzz/nbd-replies.ts) on byte streams
// built here: every request answered once passes; a lost, repeated or
// unknown reply, or a close inside a reply, is named.
import { describe, expect, it } from "vitest";
import { NbdReplyCheck } from "../fuzz/nbd-replies.ts";

const greeting = Buffer.alloc(18);
function optionReply(option: number, type: number, data = Buffer.alloc(0)): Buffer {
  const h = Buffer.alloc(20);
  h.writeBigUInt64BE(0x0003e889045565a9n, 0);
  h.writeUInt32BE(option, 8);
  h.writeUInt32BE(type, 12);
  h.writeUInt32BE(data.length, 16);
  return Buffer.concat([h, data]);
}
function simple(cookie: bigint, errno = 0, data = Buffer.alloc(0)): Buffer {
  const h = Buffer.alloc(16);
  h.writeUInt32BE(0x67446698, 0);
  h.writeUInt32BE(errno, 4);
  h.writeBigUInt64BE(cookie, 8);
  return Buffer.concat([h, data]);
}
function chunk(cookie: bigint, done: boolean, payload: Buffer): Buffer {
  const h = Buffer.alloc(20);
  h.writeUInt32BE(0x668e33ef, 0);
  h.writeUInt16BE(done ? 1 : 0, 4);
  h.writeUInt16BE(1, 6);
  h.writeBigUInt64BE(cookie, 8);
  h.writeUInt32BE(payload.length, 16);
  return Buffer.concat([h, payload]);
}
const handshake = Buffer.concat([greeting, optionReply(8, 1), optionReply(7, 3, Buffer.alloc(12)), optionReply(7, 1)]);
const requests = [
  { cookie: 1n, readLength: 4096 },
  { cookie: 2n, readLength: null },
  { cookie: 3n, readLength: 512 },
];

/** Feeds the stream in pieces of `step` bytes, as a socket might deliver it. */
function verdict(stream: Buffer, step = 7): string | null {
  const c = new NbdReplyCheck(requests);
  for (let i = 0; i < stream.length; i += step) c.push(stream.subarray(i, i + step));
  return c.verdict();
}

describe("fuzz replies", () => {
  const all = Buffer.concat([handshake, simple(2n), chunk(3n, true, Buffer.alloc(8 + 512)), simple(1n, 0, Buffer.alloc(4096))]);

  it("fuzz replies: every request answered once, out of order, simple and structured, passes in any split", () => {
    for (const step of [1, 7, 1000, all.length]) expect(verdict(all, step)).toBeNull();
    // A failed READ carries no data.
    expect(verdict(Buffer.concat([handshake, simple(1n, 22), simple(2n), simple(3n, 5)]))).toBeNull();
  });

  it("fuzz replies: a lost, repeated or unknown reply, or a close inside one, is named", () => {
    expect(verdict(Buffer.concat([handshake, simple(2n), simple(1n, 0, Buffer.alloc(4096))]))).toMatch(/1 of 3 requests before DISC got no reply/);
    expect(verdict(Buffer.concat([handshake, simple(2n), simple(2n)]))).toMatch(/answered 2 times/);
    expect(verdict(Buffer.concat([handshake, simple(9n)]))).toMatch(/no request before DISC carried/);
    expect(verdict(all.subarray(0, all.length - 100))).toMatch(/closed inside a reply/);
    expect(verdict(Buffer.concat([greeting, optionReply(7, 0x80000006)]))).toMatch(/GO of a known export refused/);
    expect(verdict(Buffer.concat([handshake, Buffer.from("deadbeef", "hex")]))).toMatch(/bad magic/);
    // A chunk without DONE does not answer its request.
    expect(verdict(Buffer.concat([handshake, simple(1n, 0, Buffer.alloc(4096)), simple(2n), chunk(3n, false, Buffer.alloc(8 + 512))]))).toMatch(/got no reply/);
  });
});

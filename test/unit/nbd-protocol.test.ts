// Unit tests of the pure NBD pieces: codec round trips and rejections, the
// errno mapping, request validation, and the handshake state machine (whose
// table must equal the one printed in docs/nbd.md).
import { readFileSync } from "node:fs";
import { describe, expect, it } from "vitest";
import { HANDSHAKE_TRANSITIONS, Handshake, OPTION_DATA_BYTES_MAX } from "../../appliance/nbd/handshake.ts";
import * as p from "../../appliance/nbd/protocol.ts";
import { checkRequest, payloadLimitFor, transmissionFlags, writePayloadFate, PAYLOAD_HARD_CAP_BYTES } from "../../appliance/nbd/transmission.ts";
import type { NbdExport } from "../../appliance/nbd/server.ts";


function fakeExport(name: string, sizeBytes: number, readOnly = false, description?: string): NbdExport {
  const fail = () => Promise.reject(new Error("not used"));
  return { name, sizeBytes, description, isReadOnly: () => readOnly, read: fail, write: fail, writeZeroes: fail, trim: fail, flush: fail };
}

function provider(defaultExport?: string) {
  const list = [fakeExport("disk", 1 << 20, false, "a disk"), fakeExport("ro", 1 << 20, true)];
  return { get: (n: string) => list.find((e) => e.name === n), list: () => list, defaultExport };
}

/** Splits concatenated option replies into {replyType, data}. */
function replies(bufs: Buffer[]) {
  return bufs.map((b) => {
    const h = p.decodeOptionReplyHeader(b.subarray(0, p.OPTION_REPLY_HEADER_BYTES));
    if (!h.ok) throw new Error(h.reason);
    return { option: h.value.option, replyType: h.value.replyType, data: b.subarray(p.OPTION_REPLY_HEADER_BYTES) };
  });
}

function optionsPhase(defaultExport?: string): Handshake {
  const hs = new Handshake({ exports: provider(defaultExport), maxPayloadBytes: 1 << 20, tls: "off" });
  expect(hs.clientFlags(p.encodeClientFlags(p.NBD_FLAG_C_FIXED_NEWSTYLE)).state).toBe("options");
  return hs;
}

describe("nbd: protocol codec", () => {
  it("codec: greeting round trip (fixed newstyle, no zeroes)", () => {
    const g = p.encodeServerGreeting(p.NBD_FLAG_FIXED_NEWSTYLE | p.NBD_FLAG_NO_ZEROES);
    expect(g.length).toBe(18);
    expect(g.subarray(0, 16).toString("latin1")).toBe("NBDMAGICIHAVEOPT");
    expect(p.decodeServerGreeting(g)).toEqual({ ok: true, value: { handshakeFlags: 3 } });
  });

  it("codec: client flags rejected (no fixed newstyle, unknown bit)", () => {
    expect(p.decodeClientFlags(p.encodeClientFlags(0)).ok).toBe(false);
    expect(p.decodeClientFlags(p.encodeClientFlags(p.NBD_FLAG_C_FIXED_NEWSTYLE | 4)).ok).toBe(false);
    expect(p.decodeClientFlags(p.encodeClientFlags(3))).toEqual({ ok: true, value: { noZeroes: true } });
    expect(p.decodeClientFlags(Buffer.alloc(3)).ok).toBe(false);
  });

  it("codec: option header round trip and bad magic", () => {
    const o = p.encodeOption(p.NBD_OPT_GO, Buffer.from("abc"));
    expect(p.decodeOptionHeader(o.subarray(0, 16))).toEqual({ ok: true, value: { option: 7, length: 3 } });
    const bad = Buffer.from(o);
    bad[0] ^= 1;
    expect(p.decodeOptionHeader(bad.subarray(0, 16)).ok).toBe(false);
  });

  it("codec: INFO/GO request round trip and malformed lengths", () => {
    const b = p.encodeInfoRequest("vol-1", [p.NBD_INFO_NAME, p.NBD_INFO_BLOCK_SIZE]);
    expect(p.decodeInfoRequest(b)).toEqual({ ok: true, value: { name: "vol-1", infos: [1, 3] } });
    expect(p.decodeInfoRequest(b.subarray(0, 5)).ok).toBe(false); // shorter than 6
    const longName = Buffer.from(b);
    longName.writeUInt32BE(1000, 0);
    expect(p.decodeInfoRequest(longName).ok).toBe(false); // name runs past data
    expect(p.decodeInfoRequest(Buffer.concat([b, Buffer.alloc(1)])).ok).toBe(false); // count mismatch
    const nul = p.encodeInfoRequest("a\0b", []);
    expect(p.decodeInfoRequest(nul).ok).toBe(false);
  });

  it("codec: info replies round trip (export, block size, name, description, unknown)", () => {
    expect(p.decodeInfoReply(p.encodeInfoExport(2 ** 40, 0x14d))).toEqual({ ok: true, value: { type: 0, sizeBytes: 2 ** 40, transmissionFlags: 0x14d } });
    const bs = { minimum: 512, preferred: 4096, maximum: 1 << 25 };
    expect(p.decodeInfoReply(p.encodeInfoBlockSize(bs))).toEqual({ ok: true, value: { type: 3, blockSize: bs } });
    expect(p.decodeInfoReply(p.encodeInfoString(p.NBD_INFO_NAME, "n"))).toEqual({ ok: true, value: { type: 1, name: "n" } });
    expect(p.decodeInfoReply(p.encodeInfoString(p.NBD_INFO_DESCRIPTION, "d"))).toEqual({ ok: true, value: { type: 2, description: "d" } });
    expect(p.decodeInfoReply(Buffer.from([0, 9]))).toEqual({ ok: true, value: { type: "unknown", infoType: 9 } });
    expect(p.decodeInfoReply(p.encodeInfoExport(1, 1).subarray(0, 11)).ok).toBe(false);
  });

  it("codec: REP_SERVER round trip (name and description)", () => {
    expect(p.decodeRepServer(p.encodeRepServer("a", "desc"))).toEqual({ ok: true, value: { name: "a", description: "desc" } });
    expect(p.decodeRepServer(Buffer.from([0, 0, 0, 9, 1])).ok).toBe(false);
  });

  it("codec: export-name reply has 124 zeroes unless NO_ZEROES", () => {
    expect(p.encodeExportNameReply(4096, 1, false).length).toBe(134);
    const r = p.encodeExportNameReply(4096, 0x123, true);
    expect(r.length).toBe(10);
    expect(r.readBigUInt64BE(0)).toBe(4096n);
    expect(r.readUInt16BE(8)).toBe(0x123);
  });

  it("codec: request header round trip (28 bytes, 64-bit cookie) and bad magic", () => {
    const h = { flags: 1, type: p.NBD_CMD_WRITE, cookie: 0xfedcba9876543210n, offset: 2n ** 41n, length: 65536 };
    const b = p.encodeRequestHeader(h);
    expect(b.length).toBe(28);
    expect(p.decodeRequestHeader(b)).toEqual({ ok: true, value: h });
    expect(p.decodeRequestHeader(p.encodeRequestHeader(h, 0x12345678)).ok).toBe(false);
    expect(p.decodeRequestHeader(b.subarray(0, 27)).ok).toBe(false);
  });

  it("codec: simple reply and structured chunks round trip (data, error, none)", () => {
    expect(p.decodeSimpleReplyHeader(p.encodeSimpleReply(22, 7n))).toEqual({ ok: true, value: { errno: 22, cookie: 7n } });
    const head = p.encodeOffsetDataHead(9n, 4096, 3, true);
    const h = p.decodeChunkHeader(head.subarray(0, 20));
    expect(h).toEqual({ ok: true, value: { flags: p.NBD_REPLY_FLAG_DONE, type: p.NBD_REPLY_TYPE_OFFSET_DATA, cookie: 9n, length: 11 } });
    const payload = Buffer.concat([head.subarray(20), Buffer.from([1, 2, 3])]);
    expect(p.decodeChunkPayload(p.NBD_REPLY_TYPE_OFFSET_DATA, payload)).toEqual({ ok: true, value: { kind: "data", offset: 4096, data: Buffer.from([1, 2, 3]) } });
    const err = p.encodeErrorChunk(5n, p.NBD_EPERM, "read-only");
    const eh = p.decodeChunkHeader(err.subarray(0, 20));
    expect(eh.ok && eh.value.type).toBe(p.NBD_REPLY_TYPE_ERROR);
    expect(p.decodeChunkPayload(p.NBD_REPLY_TYPE_ERROR, err.subarray(20))).toEqual({ ok: true, value: { kind: "error", errno: 1, message: "read-only" } });
    expect(p.decodeChunkPayload(p.NBD_REPLY_TYPE_ERROR, Buffer.from([0, 0, 0, 1, 0, 9])).ok).toBe(false);
    expect(p.decodeChunkPayload(p.NBD_REPLY_TYPE_NONE, p.encodeNoneChunk(1n).subarray(20))).toEqual({ ok: true, value: { kind: "none" } });
  });

  it("errno: mapping of error codes and NbdError (nbdkit's nbd_errno)", () => {
    const e = (code: string) => Object.assign(new Error(code), { code });
    expect(p.nbdErrno(e("EPERM"))).toBe(p.NBD_EPERM);
    expect(p.nbdErrno(e("EROFS"))).toBe(p.NBD_EPERM);
    expect(p.nbdErrno(e("EIO"))).toBe(p.NBD_EIO);
    expect(p.nbdErrno(e("ENOSPC"))).toBe(p.NBD_ENOSPC);
    expect(p.nbdErrno(e("EDQUOT"))).toBe(p.NBD_ENOSPC);
    expect(p.nbdErrno(e("EFBIG"))).toBe(p.NBD_ENOSPC);
    expect(p.nbdErrno(e("EINVAL"))).toBe(p.NBD_EINVAL);
    expect(p.nbdErrno(e("EOVERFLOW"))).toBe(p.NBD_EOVERFLOW);
    expect(p.nbdErrno(new p.NbdError(p.NBD_ESHUTDOWN, "bye"))).toBe(p.NBD_ESHUTDOWN);
    expect(p.nbdErrno(new Error("what"))).toBe(p.NBD_EIO);
    expect(p.nbdErrno("a string")).toBe(p.NBD_EIO);
  });
});

describe("nbd: request validation", () => {
  const limits = { sizeBytes: 1 << 20, readOnly: false, maxPayloadBytes: 65536 };
  const req = (type: number, offset: number | bigint, length: number, flags = 0) => ({ type, offset: BigInt(offset), length, flags, cookie: 1n });
  const errno = (v: ReturnType<typeof checkRequest>) => (v.ok ? 0 : v.errno);

  it("validation: ranges (read past end EINVAL, write past end ENOSPC, trim past end EINVAL)", () => {
    expect(errno(checkRequest(req(p.NBD_CMD_READ, (1 << 20) - 512, 512), limits))).toBe(0);
    expect(errno(checkRequest(req(p.NBD_CMD_READ, 1 << 20, 512), limits))).toBe(p.NBD_EINVAL);
    expect(errno(checkRequest(req(p.NBD_CMD_WRITE, (1 << 20) - 512, 1024), limits))).toBe(p.NBD_ENOSPC);
    expect(errno(checkRequest(req(p.NBD_CMD_WRITE_ZEROES, 1 << 20, 512), limits))).toBe(p.NBD_ENOSPC);
    expect(errno(checkRequest(req(p.NBD_CMD_TRIM, 1 << 20, 512), limits))).toBe(p.NBD_EINVAL);
    expect(errno(checkRequest(req(p.NBD_CMD_READ, 2 ** 60, 512), limits))).toBe(p.NBD_EINVAL);
  });

  it("validation: payload, alignment, flags, unknown command, read-only", () => {
    expect(errno(checkRequest(req(p.NBD_CMD_READ, 0, 65536 + 512), limits))).toBe(p.NBD_EINVAL);
    expect(errno(checkRequest(req(p.NBD_CMD_WRITE_ZEROES, 0, 1 << 20), limits))).toBe(0); // no payload: may exceed max
    expect(errno(checkRequest(req(p.NBD_CMD_READ, 100, 512), limits))).toBe(p.NBD_EINVAL);
    expect(errno(checkRequest(req(p.NBD_CMD_READ, 0, 100), limits))).toBe(p.NBD_EINVAL);
    expect(errno(checkRequest(req(p.NBD_CMD_WRITE_ZEROES, 0, 512, p.NBD_CMD_FLAG_NO_HOLE | p.NBD_CMD_FLAG_FUA), limits))).toBe(0);
    expect(errno(checkRequest(req(p.NBD_CMD_WRITE, 0, 512, p.NBD_CMD_FLAG_NO_HOLE), limits))).toBe(p.NBD_EINVAL);
    expect(errno(checkRequest(req(p.NBD_CMD_READ, 0, 512, p.NBD_CMD_FLAG_DF), limits))).toBe(p.NBD_EINVAL);
    expect(errno(checkRequest(req(p.NBD_CMD_FLUSH, 0, 0), limits))).toBe(0);
    expect(errno(checkRequest(req(p.NBD_CMD_FLUSH, 512, 0), limits))).toBe(p.NBD_EINVAL);
    expect(errno(checkRequest(req(p.NBD_CMD_CACHE, 0, 512), limits))).toBe(p.NBD_EINVAL);
    expect(errno(checkRequest(req(99, 0, 0), limits))).toBe(p.NBD_EINVAL);
    const ro = { ...limits, readOnly: true };
    for (const t of [p.NBD_CMD_WRITE, p.NBD_CMD_TRIM, p.NBD_CMD_WRITE_ZEROES]) expect(errno(checkRequest(req(t, 0, 512), ro))).toBe(p.NBD_EPERM);
    expect(errno(checkRequest(req(p.NBD_CMD_READ, 0, 512), ro))).toBe(0);
  });

  it("validation: offsets at and past 2^53 are checked as 64-bit integers (2^53+1 is unaligned, not past the end)", () => {
    // As a JS number 2^53 + 1 rounds to 2^53: aligned, and a WRITE got ENOSPC.
    expect(errno(checkRequest(req(p.NBD_CMD_WRITE, 2n ** 53n + 1n, 512), limits))).toBe(p.NBD_EINVAL);
    expect(errno(checkRequest(req(p.NBD_CMD_WRITE, 2n ** 53n, 512), limits))).toBe(p.NBD_ENOSPC);
    expect(errno(checkRequest(req(p.NBD_CMD_READ, 2n ** 64n - 512n, 512), limits))).toBe(p.NBD_EINVAL);
    // offset + length wraps past 2^64 in 64-bit unsigned arithmetic; bigint does not.
    expect(errno(checkRequest(req(p.NBD_CMD_WRITE, 2n ** 64n - 512n, 1024), limits))).toBe(p.NBD_ENOSPC);
    const h = p.decodeRequestHeader(p.encodeRequestHeader({ flags: 0, type: p.NBD_CMD_WRITE, cookie: 1n, offset: 2n ** 53n + 1n, length: 512 }));
    expect(h.ok && h.value.offset).toBe(2n ** 53n + 1n);
  });

  it("validation: without negotiated block sizes READ and WRITE may carry up to 32 MiB", () => {
    expect(payloadLimitFor(65536, true)).toBe(65536);
    expect(payloadLimitFor(65536, false)).toBe(32 * 1024 * 1024);
    const big = { sizeBytes: 64 << 20, readOnly: false, maxPayloadBytes: payloadLimitFor(65536, false) };
    expect(errno(checkRequest(req(p.NBD_CMD_WRITE, 0, 32 << 20), big))).toBe(0);
    expect(errno(checkRequest(req(p.NBD_CMD_READ, 0, 17 << 20), big))).toBe(0);
    expect(errno(checkRequest(req(p.NBD_CMD_READ, 0, (32 << 20) + 512), big))).toBe(p.NBD_EINVAL);
  });

  it("validation: an unaligned tail is reachable only when it ends at the export's end (size 1000)", () => {
    const odd = { ...limits, sizeBytes: 1000 };
    expect(errno(checkRequest(req(p.NBD_CMD_READ, 512, 488), odd))).toBe(0);
    expect(errno(checkRequest(req(p.NBD_CMD_READ, 0, 488), odd))).toBe(p.NBD_EINVAL);
  });

  it("validation: WRITE payload is read, discarded, or closes the connection past the hard cap", () => {
    const ok = checkRequest(req(p.NBD_CMD_WRITE, 0, 512), limits);
    const refused = checkRequest(req(p.NBD_CMD_WRITE, 0, 1 << 24), limits);
    expect(writePayloadFate(req(p.NBD_CMD_WRITE, 0, 512), ok)).toBe("read");
    expect(writePayloadFate(req(p.NBD_CMD_WRITE, 0, 1 << 24), refused)).toBe("discard");
    expect(writePayloadFate(req(p.NBD_CMD_WRITE, 0, PAYLOAD_HARD_CAP_BYTES + 1), refused)).toBe("disconnect");
  });

  it("flags: read-write and read-only exports", () => {
    expect(transmissionFlags(false)).toBe(p.NBD_FLAG_HAS_FLAGS | p.NBD_FLAG_SEND_FLUSH | p.NBD_FLAG_SEND_FUA | p.NBD_FLAG_SEND_TRIM | p.NBD_FLAG_SEND_WRITE_ZEROES | p.NBD_FLAG_CAN_MULTI_CONN);
    expect(transmissionFlags(true)).toBe(p.NBD_FLAG_HAS_FLAGS | p.NBD_FLAG_READ_ONLY | p.NBD_FLAG_SEND_FLUSH | p.NBD_FLAG_CAN_MULTI_CONN);
  });
});

describe("nbd: handshake state machine", () => {
  it("handshake: client without fixed newstyle is closed", () => {
    const hs = new Handshake({ exports: provider(), maxPayloadBytes: 1 << 20, tls: "off" });
    const s = hs.clientFlags(p.encodeClientFlags(0));
    expect(s.state).toBe("closed");
    expect(s.send).toEqual([]);
  });

  it("handshake: GO on a known export sends EXPORT, BLOCK_SIZE, NAME, DESCRIPTION each in its own reply, then ACK", () => {
    const hs = optionsPhase();
    const data = p.encodeInfoRequest("disk", [p.NBD_INFO_NAME, p.NBD_INFO_DESCRIPTION]);
    const s = hs.option({ option: p.NBD_OPT_GO, length: data.length }, data);
    expect(s.state).toBe("transmission");
    const r = replies(s.send);
    expect(r.map((x) => x.replyType)).toEqual([p.NBD_REP_INFO, p.NBD_REP_INFO, p.NBD_REP_INFO, p.NBD_REP_INFO, p.NBD_REP_ACK]);
    const infos = r.slice(0, 4).map((x) => p.decodeInfoReply(x.data)).map((d) => (d.ok ? d.value : null));
    expect(infos).toEqual([
      { type: 0, sizeBytes: 1 << 20, transmissionFlags: transmissionFlags(false) },
      { type: 3, blockSize: { minimum: 512, preferred: 4096, maximum: 1 << 20 } },
      { type: 1, name: "disk" },
      { type: 2, description: "a disk" },
    ]);
    expect(s.negotiated?.export.name).toBe("disk");
  });

  it("handshake: unknown export and empty name without default get ERR_UNKNOWN with a message and stay in options", () => {
    const hs = optionsPhase();
    for (const name of ["nope", ""]) {
      const data = p.encodeInfoRequest(name, []);
      const s = hs.option({ option: p.NBD_OPT_INFO, length: data.length }, data);
      expect(s.state).toBe("options");
      const [r] = replies(s.send);
      expect(r.replyType).toBe(p.NBD_REP_ERR_UNKNOWN);
      expect(r.data.toString()).toMatch(name === "" ? /default export/ : /nope/);
    }
  });

  it("handshake: empty name selects the default export", () => {
    const hs = optionsPhase("ro");
    const data = p.encodeInfoRequest("", []);
    const s = hs.option({ option: p.NBD_OPT_GO, length: data.length }, data);
    expect(s.negotiated?.export.name).toBe("ro");
    expect((s.negotiated?.transmissionFlags ?? 0) & p.NBD_FLAG_READ_ONLY).toBeTruthy();
  });

  it("handshake: LIST, STRUCTURED_REPLY, unknown option, bad data, ABORT", () => {
    const hs = optionsPhase();
    const list = replies(hs.option({ option: p.NBD_OPT_LIST, length: 0 }, Buffer.alloc(0)).send);
    expect(list.map((r) => r.replyType)).toEqual([p.NBD_REP_SERVER, p.NBD_REP_SERVER, p.NBD_REP_ACK]);
    expect(replies(hs.option({ option: p.NBD_OPT_LIST, length: 1 }, Buffer.alloc(1)).send)[0].replyType).toBe(p.NBD_REP_ERR_INVALID);
    expect(replies(hs.option({ option: p.NBD_OPT_STRUCTURED_REPLY, length: 0 }, Buffer.alloc(0)).send)[0].replyType).toBe(p.NBD_REP_ACK);
    expect(replies(hs.option({ option: p.NBD_OPT_STARTTLS, length: 0 }, Buffer.alloc(0)).send)[0].replyType).toBe(p.NBD_REP_ERR_POLICY);
    expect(replies(hs.option({ option: 0xdead, length: 0 }, Buffer.alloc(0)).send)[0].replyType).toBe(p.NBD_REP_ERR_UNSUP);
    expect(replies(hs.option({ option: p.NBD_OPT_GO, length: 2 }, Buffer.alloc(2)).send)[0].replyType).toBe(p.NBD_REP_ERR_INVALID);
    const a = hs.option({ option: p.NBD_OPT_ABORT, length: 0 }, Buffer.alloc(0));
    expect(a.state).toBe("closed");
    expect(replies(a.send)[0].replyType).toBe(p.NBD_REP_ACK);
  });

  it("handshake: EXPORT_NAME known (no zeroes) enters transmission, unknown closes", () => {
    const hs = new Handshake({ exports: provider(), maxPayloadBytes: 1 << 20, tls: "off" });
    hs.clientFlags(p.encodeClientFlags(p.NBD_FLAG_C_FIXED_NEWSTYLE | p.NBD_FLAG_C_NO_ZEROES));
    const s = hs.option({ option: p.NBD_OPT_EXPORT_NAME, length: 4 }, Buffer.from("disk"));
    expect(s.state).toBe("transmission");
    expect(s.send[0].length).toBe(10);
    const hs2 = optionsPhase();
    expect(hs2.option({ option: p.NBD_OPT_EXPORT_NAME, length: 1 }, Buffer.from("x")).state).toBe("closed");
  });

  it("handshake: option header with bad magic or oversized data closes", () => {
    const hs = optionsPhase();
    const big = p.encodeOption(p.NBD_OPT_GO).subarray(0, 16);
    big.writeUInt32BE(OPTION_DATA_BYTES_MAX + 1, 12);
    const r = hs.optionHeader(big);
    expect(r.ok).toBe(false);
    expect(!r.ok && r.step.state).toBe("closed");
    const hs2 = optionsPhase();
    expect(hs2.optionHeader(Buffer.alloc(16)).ok).toBe(false);
  });

  const none = Buffer.alloc(0);
  function tlsPhase(tls: "on" | "require", reserveExport?: (name: string) => string | undefined): Handshake {
    const hs = new Handshake({ exports: provider("disk"), maxPayloadBytes: 1 << 20, tls, reserveExport });
    hs.clientFlags(p.encodeClientFlags(p.NBD_FLAG_C_FIXED_NEWSTYLE));
    return hs;
  }

  it("handshake: tls require reveals nothing before STARTTLS (LIST, INFO, GO, STRUCTURED_REPLY, unknown: ERR_TLS_REQD; EXPORT_NAME closes)", () => {
    const hs = tlsPhase("require");
    const go = p.encodeInfoRequest("disk", [p.NBD_INFO_NAME, p.NBD_INFO_DESCRIPTION]);
    const cases: [number, Buffer][] = [
      [p.NBD_OPT_LIST, none],
      [p.NBD_OPT_INFO, go],
      [p.NBD_OPT_GO, go],
      [p.NBD_OPT_STRUCTURED_REPLY, none],
      [0xdead, none],
    ];
    for (const [option, data] of cases) {
      const s = hs.option({ option, length: data.length }, data);
      expect(s.state).toBe("options");
      expect(s.send).toHaveLength(1);
      const [r] = replies(s.send);
      expect(r.replyType).toBe(p.NBD_REP_ERR_TLS_REQD);
      // Nothing of the exports in the message: no name, no size, no description.
      expect(r.data.toString()).not.toMatch(/disk|a disk|1048576/);
    }
    const en = hs.option({ option: p.NBD_OPT_EXPORT_NAME, length: 4 }, Buffer.from("disk"));
    expect(en.state).toBe("closed");
    expect(en.send).toEqual([]);
    // ABORT is still answered.
    const hs2 = tlsPhase("require");
    expect(hs2.option({ option: p.NBD_OPT_ABORT, length: 0 }, none).state).toBe("closed");
  });

  it("handshake: STARTTLS is acked once; after TLS, options work and structured replies must be asked again", () => {
    const hs = tlsPhase("require");
    expect(replies(hs.option({ option: p.NBD_OPT_STARTTLS, length: 1 }, Buffer.alloc(1)).send)[0].replyType).toBe(p.NBD_REP_ERR_INVALID);
    hs.option({ option: p.NBD_OPT_STRUCTURED_REPLY, length: 0 }, none);
    const st = hs.option({ option: p.NBD_OPT_STARTTLS, length: 0 }, none);
    expect(st.event).toBe("starttls");
    expect(replies(st.send)[0].replyType).toBe(p.NBD_REP_ACK);
    hs.tlsEstablished();
    expect(replies(hs.option({ option: p.NBD_OPT_STARTTLS, length: 0 }, none).send)[0].replyType).toBe(p.NBD_REP_ERR_INVALID);
    const list = replies(hs.option({ option: p.NBD_OPT_LIST, length: 0 }, none).send);
    expect(list.map((r) => r.replyType)).toEqual([p.NBD_REP_SERVER, p.NBD_REP_SERVER, p.NBD_REP_ACK]);
    const go = p.encodeInfoRequest("disk", []);
    const s = hs.option({ option: p.NBD_OPT_GO, length: go.length }, go);
    expect(s.negotiated?.structuredReplies).toBe(false);
    expect(s.negotiated?.clientAskedBlockSize).toBe(false);
  });

  it("handshake: tls on serves cleartext clients too", () => {
    const hs = tlsPhase("on");
    const go = p.encodeInfoRequest("disk", [p.NBD_INFO_BLOCK_SIZE]);
    const s = hs.option({ option: p.NBD_OPT_GO, length: go.length }, go);
    expect(s.state).toBe("transmission");
    expect(s.negotiated?.clientAskedBlockSize).toBe(true);
  });

  it("handshake: the export connection limit refuses GO with ERR_POLICY and closes EXPORT_NAME", () => {
    const asked: string[] = [];
    const hs = tlsPhase("on", (name) => (asked.push(name), "export full"));
    const go = p.encodeInfoRequest("disk", []);
    const s = hs.option({ option: p.NBD_OPT_GO, length: go.length }, go);
    expect(s.state).toBe("options");
    expect(replies(s.send)[0]).toMatchObject({ replyType: p.NBD_REP_ERR_POLICY });
    expect(replies(s.send)[0].data.toString()).toBe("export full");
    // INFO does not count a connection.
    hs.option({ option: p.NBD_OPT_INFO, length: go.length }, go);
    expect(hs.option({ option: p.NBD_OPT_EXPORT_NAME, length: 4 }, Buffer.from("disk")).state).toBe("closed");
    expect(asked).toEqual(["disk", "disk"]);
  });

  it("handshake: export names are decoded exactly: a leading BOM is kept, invalid UTF-8 refused", () => {
    const bom = p.decodeExportName(Buffer.from([0xef, 0xbb, 0xbf, ...Buffer.from("disk")]));
    expect(bom).toEqual({ ok: true, value: "\ufeffdisk" });
    const hs = optionsPhase();
    const data = Buffer.concat([Buffer.alloc(4), Buffer.alloc(2)]);
    const withBom = p.encodeInfoRequest("\ufeffdisk", []);
    expect(replies(hs.option({ option: p.NBD_OPT_GO, length: withBom.length }, withBom).send)[0].replyType).toBe(p.NBD_REP_ERR_UNKNOWN);
    expect(data.length).toBe(6);
    const bad = Buffer.from([0, 0, 0, 2, 0xc3, 0x28, 0, 0]);
    const r = replies(hs.option({ option: p.NBD_OPT_GO, length: bad.length }, bad).send)[0];
    expect(r.replyType).toBe(p.NBD_REP_ERR_INVALID);
    expect(r.data.toString()).toMatch(/not valid UTF-8/);
  });

  it("handshake: docs/nbd.md prints exactly the code's transition table", () => {
    const doc = readFileSync(new URL("../../docs/nbd.md", import.meta.url), "utf8");
    const rows = doc
      .split("\n")
      .filter((l) => /^\| `(awaitClientFlags|options)` \|/.test(l))
      .map((l) => l.split("|").slice(1, -1).map((c) => c.trim().replace(/`/g, "")));
    expect(rows).toEqual(HANDSHAKE_TRANSITIONS.map((t) => [t.from, t.event, t.to, t.send]));
  });
});

// The pieces of issue 18 that need no cluster: which errors mean a full disk,
// and the log destination on a device that is always full (/dev/full answers
// every write with ENOSPC): it must drop and count, never throw or wait.
import { describe, expect, it } from "vitest";
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { diskFullCause, fileSystemOf, stateIoCause } from "../../appliance/state/disk-guard.ts";
import { LogFile } from "../../appliance/logging/log-file.ts";
import { nbdErrno, NBD_ENOSPC } from "../../appliance/nbd/protocol.ts";
import { DiskFullError } from "../../appliance/state/disk-guard.ts";

describe("disk-full", () => {
  it("disk-full: ENOSPC, EDQUOT, EFBIG and SQLITE_FULL are a full disk, by code, sysCode or cause; EIO and others are not", () => {
    expect(diskFullCause(Object.assign(new Error("x"), { code: "ENOSPC" }))).toBe("ENOSPC");
    expect(diskFullCause(Object.assign(new Error("x"), { code: "TM_SEGMENT_IO", sysCode: "EDQUOT" }))).toBe("EDQUOT");
    expect(diskFullCause(Object.assign(new Error("x"), { code: "SQLITE_FULL" }))).toBe("ENOSPC");
    expect(diskFullCause(new Error("wrapped", { cause: Object.assign(new Error("x"), { code: "EFBIG" }) }))).toBe("EFBIG");
    expect(diskFullCause(Object.assign(new Error("x"), { code: "EIO" }))).toBeNull();
    expect(diskFullCause(Object.assign(new Error("x"), { code: "SQLITE_IOERR" }))).toBeNull();
    expect(diskFullCause("ENOSPC")).toBeNull();
  });

  it("disk-full: EIO, EROFS and SQLITE_IOERR_* on a state file are I/O errors the state cannot survive; a full disk and others are not", () => {
    expect(stateIoCause(Object.assign(new Error("x"), { code: "EIO" }))).toBe("EIO");
    expect(stateIoCause(Object.assign(new Error("x"), { code: "TM_SEGMENT_IO", sysCode: "EROFS" }))).toBe("EROFS");
    expect(stateIoCause(Object.assign(new Error("disk I/O error"), { code: "SQLITE_IOERR_FSYNC" }))).toBe("SQLITE_IOERR_FSYNC");
    expect(stateIoCause(Object.assign(new Error("x"), { code: "ENOSPC" }))).toBeNull();
    expect(stateIoCause(Object.assign(new Error("x"), { code: "SQLITE_FULL" }))).toBeNull();
    expect(stateIoCause(Object.assign(new Error("x"), { code: "SQLITE_BUSY" }))).toBeNull();
  });

  it("disk-full: a DiskFullError reaches hosts as NBD ENOSPC whatever the cause, and names the file and file system", () => {
    const full = { file: "/x/ss1/state.db", fileSystem: "/x (tmpfs)", cause: "EDQUOT" as const, sinceMs: 0, reason: "state disk full: EDQUOT writing /x/ss1/state.db on /x (tmpfs)" };
    const err = new DiskFullError(`volume p1a: host write refused: ${full.reason}`, full);
    expect(nbdErrno(err)).toBe(NBD_ENOSPC);
    expect(err.code).toBe("TM_STATE_DISK_FULL");
    expect(err.message).toMatch(/p1a.*EDQUOT writing \/x\/ss1\/state.db on \/x \(tmpfs\)/);
  });

  it("disk-full: the file system of a path is its mount point and type", () => {
    expect(fileSystemOf("/proc/self/status")).toBe("/proc (proc)");
    // A file that does not exist yet is on its folder's file system.
    expect(fileSystemOf("/proc/no/such/file")).toBe("/proc (proc)");
  });

  it.skipIf(!existsSync("/dev/full"))("log: on a device that is always full, lines past the bound are dropped and counted; write and flushSync never throw or wait", async () => {
    const log = new LogFile("/dev/full", 4096, 50);
    const line = `${JSON.stringify({ level: 30, msg: "x".repeat(100) })}\n`;
    const t0 = performance.now();
    let taken = 0;
    for (let i = 0; i < 1000; i++) if (log.write(line)) taken++;
    expect(performance.now() - t0).toBeLessThan(200);
    expect(taken).toBeLessThanOrEqual(Math.floor(4096 / line.length));
    expect(log.stats().droppedLines).toBe(1000 - taken);
    await new Promise((r) => setTimeout(r, 120));
    expect(log.stats().lastError).toBe("ENOSPC");
    expect(log.stats().bufferedBytes).toBeLessThanOrEqual(4096);
    // On the way out: one bounded attempt, no retry loop (sonic-boom's flushSync spun here forever).
    const t1 = performance.now();
    log.flushSync();
    expect(performance.now() - t1).toBeLessThan(500);
    log.close();
  });

  it("log: on a healthy disk every line reaches the file once, in order, whether drained or flushed on the way out with a write in flight", async () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), "tidemark-logfile-"));
    try {
      for (const exit of ["drain", "flushSync"] as const) {
        const file = path.join(dir, `${exit}.log`);
        const log = new LogFile(file);
        for (let i = 0; i < 2000; i++) log.write(`{"n":${i}}\n`);
        if (exit === "drain") await log.drain(5000);
        else log.flushSync();
        const lines = readFileSync(file, "utf8").trim().split("\n");
        expect(lines.map((l) => (JSON.parse(l) as { n: number }).n)).toEqual([...Array(2000).keys()]);
        expect(log.stats().droppedLines).toBe(0);
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

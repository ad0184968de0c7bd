// Typed errors of the disks layer. Every failure a caller may see carries a
// TM_VOLUME_* or TM_LOOP_* code of the registry (appliance/errors/codes.ts,
// a leaf module with no imports; docs/disks.md details them, checked by a
// test) and the volume, path and byte range it concerns, so a log line alone
// says what went wrong where. The NBD edge maps them to NBD errnos via sysCode.
import { errorCodesWithPrefix, type ErrorCodeOf } from "../appliance/errors/codes.ts";

export type VolumeErrorCode = ErrorCodeOf<"TM_VOLUME_">;
export const VOLUME_ERROR_CODES: readonly VolumeErrorCode[] = errorCodesWithPrefix("TM_VOLUME_");

export interface VolumeErrorContext {
  volume: string;
  path: string;
  offset?: number;
  length?: number;
  /** The operating system's error code (EIO, ENOSPC, EACCES, ...) when one caused this. */
  sysCode?: string;
  cause?: unknown;
}

export class VolumeError extends Error {
  override readonly name = "VolumeError";
  readonly code: VolumeErrorCode;
  readonly volume: string;
  readonly path: string;
  readonly offset: number | undefined;
  readonly length: number | undefined;
  /** Original errno name, e.g. "ENOSPC"; the NBD layer maps it to NBD_ENOSPC / NBD_EIO. */
  readonly sysCode: string | undefined;

  constructor(code: VolumeErrorCode, message: string, ctx: VolumeErrorContext) {
    super(`${code}: ${message}`, ctx.cause === undefined ? undefined : { cause: ctx.cause });
    this.code = code;
    this.volume = ctx.volume;
    this.path = ctx.path;
    this.offset = ctx.offset;
    this.length = ctx.length;
    this.sysCode = ctx.sysCode;
  }
}

export type LoopErrorCode = ErrorCodeOf<"TM_LOOP_">;
export const LOOP_ERROR_CODES: readonly LoopErrorCode[] = errorCodesWithPrefix("TM_LOOP_");

export class LoopDeviceError extends Error {
  override readonly name = "LoopDeviceError";
  readonly code: LoopErrorCode;
  /** The backing file (attach) or the loop device (detach). */
  readonly path: string;
  /** losetup's stderr, trimmed, when it ran. */
  readonly stderr: string | undefined;

  constructor(code: LoopErrorCode, message: string, path: string, stderr?: string, cause?: unknown) {
    super(`${code}: ${message}`, cause === undefined ? undefined : { cause });
    this.code = code;
    this.path = path;
    this.stderr = stderr;
  }
}

/** The errno name of a Node system error, or undefined for anything else. */
export function sysCodeOf(err: unknown): string | undefined {
  if (typeof err === "object" && err !== null && "code" in err) {
    const code = (err as { code: unknown }).code;
    if (typeof code === "string") return code;
  }
  return undefined;
}

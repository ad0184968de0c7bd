// Native modules that modules on the CLI's paths import but call only on some paths: the frame
// codec (which every command talking to a subsystem loads) needs CRC32C only once a frame is
// encoded or decoded, the host clock needs CRC32C and flock only when it reads or writes a clock
// file. Loading a native module (the package's loader, dlopen, the binding's setup) is a few ms of
// a start that should take 0.2 s (docs/benchmarks.md, CLI start), so these load on first call.
// require(), not import(): the callers are synchronous, and both packages ship CommonJS.
import { createRequire } from "node:module";
import type * as Crc32 from "@node-rs/crc32";
import type * as FsExt from "fs-ext";

const requireCjs = createRequire(import.meta.url);

let crc32cFn: typeof Crc32.crc32c | undefined;
let fsExtModule: typeof FsExt | undefined;

/** @node-rs/crc32's crc32c, loaded on the first call. */
export function crc32c(input: Uint8Array | string, initialState?: number): number {
  crc32cFn ??= (requireCjs("@node-rs/crc32") as typeof Crc32).crc32c;
  return crc32cFn(input, initialState);
}

/** fs-ext's flockSync, loaded on the first call. */
export function flockSync(fd: number, flags: "sh" | "ex" | "shnb" | "exnb" | "un"): void {
  fsExtModule ??= requireCjs("fs-ext") as typeof FsExt;
  fsExtModule.flockSync(fd, flags);
}

// Where bin/tidemark is, for the code that starts tidemark processes (`tidemark up`, a drill's
// CLI calls). Found by walking up from this module to the directory that holds package.json, so
// the same code works from the sources (appliance/cli/) and from the build (a chunk in dist/cli/),
// which sit at different depths. Runs once per process, at import: at most a few stat calls.
import { existsSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { assert } from "../invariant.ts";

/** appliance/cli/ and dist/cli/ are two levels under the root; a bound, not a search. */
const PARENT_DIRS_MAX = 3;

function packageRoot(): string {
  let dir = path.dirname(fileURLToPath(import.meta.url));
  for (let up = 0; up <= PARENT_DIRS_MAX; up++) {
    if (existsSync(path.join(dir, "package.json"))) return dir;
    dir = path.dirname(dir);
  }
  assert(false, `no package.json within ${PARENT_DIRS_MAX} directories above ${fileURLToPath(import.meta.url)}`);
}

/** The `tidemark` entry point; spawn it with process.execPath. */
export const TIDEMARK_BIN = path.join(packageRoot(), "bin", "tidemark");

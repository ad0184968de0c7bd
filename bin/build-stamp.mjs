// The build stamp: whether dist/ (the compiled JavaScript) may run in place of the TypeScript
// sources. scripts/build.mjs writes the stamp, under a partial name, into its work dir before the
// compiler reads any source, renames it when the compiler has finished, and only then swaps the
// work dir in as dist/. So a stamp exists only for a finished build, and its mtime is the moment
// the build started (a rename keeps the mtime). The build is fresh when no input (a compiled
// directory, a .ts file under one, a tsconfig) has a ctime at or after the stamp's mtime:
// - the ctime, not the mtime: it moves with every write and cannot be set back, so a copy that
//   keeps old mtimes (cp -p, tar, rsync -a) still counts as a change;
// - at or after: a source saved while the compiler runs counts as newer;
// - directories too: a directory's times move when a file in it is added, removed or renamed.
// Plain JavaScript: bin/tidemark reads it before any TypeScript can run. Sync fs only, so it uses
// none of libuv's thread pool.
import { readdirSync, readFileSync, statSync } from "node:fs";
import path from "node:path";

/** The stamp's name, in dist/. */
export const STAMP_NAME = ".build-stamp.json";

/** Why dist/ under root must not run (a sentence), or null when it is fresh. */
export function buildStaleness(root) {
  const file = path.join(root, "dist", STAMP_NAME);
  let stampNs;
  let inputs;
  try {
    stampNs = statSync(file, { bigint: true }).mtimeNs;
    inputs = JSON.parse(readFileSync(file, "utf8")).inputs;
  } catch {
    return "no finished build: dist/.build-stamp.json is missing or unreadable";
  }
  if (!Array.isArray(inputs) || inputs.length === 0) return "the build stamp lists no inputs";
  for (const input of inputs) {
    const newer = firstNewer(path.join(root, input), stampNs);
    if (newer) return `${path.relative(root, newer) || newer} changed after the build`;
  }
  return null;
}

/** The first path under p (p included) changed at or after stampNs; null if none. */
function firstNewer(p, stampNs) {
  const st = statSync(p, { bigint: true, throwIfNoEntry: false });
  if (!st) return p; // an input removed since the build
  if (st.ctimeNs >= stampNs) return p;
  if (!st.isDirectory()) return null;
  for (const e of readdirSync(p, { withFileTypes: true })) {
    // Only what the compiler reads: .ts files and the directories that hold them. A config
    // file edited next to the sources (config/default.json) changes no compiled code.
    if (!e.isDirectory() && !e.name.endsWith(".ts")) continue;
    const hit = firstNewer(path.join(p, e.name), stampNs);
    if (hit) return hit;
  }
  return null;
}

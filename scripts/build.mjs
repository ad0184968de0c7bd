// Compiles the product (tsconfig.build.json's include: appliance/, disks/, config/) to dist/, which
// bin/tidemark runs instead of the TypeScript sources while no source is newer than the build
// (bin/build-stamp.mjs says how that is judged).
//   node scripts/build.mjs                   # npm run build
//   node scripts/build.mjs --if-stale        # npm test: only when dist/ is missing or older than a source
//   node scripts/build.mjs --if-typescript   # npm's prepare: skip, and say so, where typescript is not
//                                            # installed (npm ci --omit=dev); bin/tidemark then uses tsx
// Emits with --noCheck: type checking is `npm run typecheck`'s job (npm test runs it first), the
// emitted files are the same, and the build takes about half the time (7 s against 13 s).
// Compiles into dist.next-PID/ and swaps it in with two renames at the end, so tidemark processes
// started during a build run the old build or the sources, never a half-written dist/.
// The product reads no file relative to its own modules but package.json (appliance/cli/bin-path.ts),
// and imports no JSON, so there are no assets to copy.
import { spawnSync } from "node:child_process";
import { mkdirSync, readdirSync, readFileSync, renameSync, rmSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { buildStaleness, STAMP_NAME } from "../bin/build-stamp.mjs";

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const CONFIG = "tsconfig.build.json";
const DIST = path.join(ROOT, "dist");
const NEXT = path.join(ROOT, `dist.next-${process.pid}`);
const OLD = path.join(ROOT, `dist.old-${process.pid}`);
const args = new Set(process.argv.slice(2));

if (args.has("--if-stale")) {
  const why = buildStaleness(ROOT);
  if (why === null) {
    console.log("build: dist/ is up to date");
    process.exit(0);
  }
  console.log(`build: ${why}`);
}

let tsc;
try {
  tsc = createRequire(import.meta.url).resolve("typescript/bin/tsc");
} catch {
  if (!args.has("--if-typescript")) {
    console.error("build: typescript is not installed (npm ci installs it)");
    process.exit(1);
  }
  console.log("build: typescript is not installed; no dist/, bin/tidemark will run the sources through tsx");
  process.exit(0);
}

// What a build interrupted by a signal left behind; another build's dirs carry a live pid.
for (const e of readdirSync(ROOT)) {
  const pid = /^dist\.(?:next|old)-(\d+)$/.exec(e)?.[1];
  if (pid !== undefined && !isAlive(Number(pid))) rmSync(path.join(ROOT, e), { recursive: true, force: true });
}

// The inputs whose change makes the build stale: the compiled directories and the configs that
// shape the output.
const include = JSON.parse(readFileSync(path.join(ROOT, CONFIG), "utf8")).include;
const inputs = [...include, "tsconfig.json", CONFIG];

const started = Date.now();
mkdirSync(NEXT);
// Created before the compiler reads any source, so its mtime is the build's start (a rename
// keeps it): a source saved while tsc runs is newer than the stamp.
writeFileSync(path.join(NEXT, `${STAMP_NAME}.partial`), `${JSON.stringify({ inputs, started: new Date(started).toISOString() }, null, 2)}\n`);
const r = spawnSync(process.execPath, [tsc, "-p", CONFIG, "--noCheck", "--outDir", NEXT], { cwd: ROOT, stdio: "inherit" });
if (r.status !== 0) {
  rmSync(NEXT, { recursive: true, force: true });
  console.error(`build: tsc -p ${CONFIG} failed (exit ${r.status ?? r.signal}); dist/ is left as it was`);
  process.exit(1);
}
renameSync(path.join(NEXT, `${STAMP_NAME}.partial`), path.join(NEXT, STAMP_NAME));
try {
  renameSync(DIST, OLD);
} catch (err) {
  if (err.code !== "ENOENT") throw err;
}
renameSync(NEXT, DIST);
rmSync(OLD, { recursive: true, force: true });
console.log(`build: dist/ from ${include.join(", ")} in ${((Date.now() - started) / 1000).toFixed(1)} s`);

function isAlive(pid) {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return err.code === "EPERM";
  }
}

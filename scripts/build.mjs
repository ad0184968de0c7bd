// Builds the product (tsconfig.build.json's include: appliance/, disks/, config/) into dist/, which
// bin/tidemark runs instead of the TypeScript sources while no source is newer than the build
// (bin/build-stamp.mjs says how that is judged).
//   node scripts/build.mjs                   # npm run build
//   node scripts/build.mjs --if-stale        # npm test: only when dist/ is missing or older than a source
//   node scripts/build.mjs --if-esbuild      # npm's prepare: skip, and say so, where esbuild is not
//                                            # installed; bin/tidemark then uses tsx
// dist/ is an esbuild bundle of the CLI (appliance/cli/main.ts), split at its dynamic imports into
// chunks (dist/cli/): a short command loads a dozen files, not the 140 modules it reaches, and
// Node's ESM loader costs about as much per module as a small module's code (docs/benchmarks.md,
// CLI start). Each command's action imports its own modules, so each command loads its own chunks.
// Bundled: our sources and the pure-JavaScript packages every start needs (commander, zod). Left
// to node_modules: native modules (they cannot be bundled), pino (its transports load files by
// path) and everything else, loaded as before. esbuild strips the types without checking them:
// type checking is `npm run typecheck`'s job (npm test runs it first). A build takes about 1 s.
// Builds into dist.next-PID/ and swaps it in with two renames at the end, so tidemark processes
// started during a build run the old build or the sources, never a half-written dist/.
// The product reads no file relative to its own modules but package.json (appliance/cli/bin-path.ts),
// and imports no JSON, so there are no assets to copy.
import { mkdirSync, readdirSync, readFileSync, renameSync, rmSync, writeFileSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { buildStaleness, STAMP_NAME } from "../bin/build-stamp.mjs";

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const CONFIG = "tsconfig.build.json";
const ENTRY = "appliance/cli/main.ts";
/** Packages bundled into dist/; every other import of a package stays an import from node_modules. */
const BUNDLED_PACKAGES = new Set(["commander", "zod"]);
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

let esbuild;
try {
  esbuild = await import("esbuild");
} catch {
  if (!args.has("--if-esbuild")) {
    console.error("build: esbuild is not installed (npm ci installs it)");
    process.exit(1);
  }
  console.log("build: esbuild is not installed; no dist/, bin/tidemark will run the sources through tsx");
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
// Created before esbuild reads any source, so its mtime is the build's start (a rename
// keeps it): a source saved while esbuild runs is newer than the stamp.
writeFileSync(path.join(NEXT, `${STAMP_NAME}.partial`), `${JSON.stringify({ inputs, started: new Date(started).toISOString() }, null, 2)}\n`);
try {
  await esbuild.build({
    absWorkingDir: ROOT,
    entryPoints: [ENTRY],
    outdir: path.join(NEXT, "cli"),
    tsconfig: CONFIG,
    bundle: true,
    splitting: true,
    format: "esm",
    platform: "node",
    target: "node20",
    sourcemap: true,
    logLevel: "warning",
    // commander is CommonJS: its require() calls (node:events, ...) need a require in ESM output.
    banner: { js: 'import { createRequire as __tidemarkCreateRequire } from "node:module"; const require = __tidemarkCreateRequire(import.meta.url);' },
    plugins: [
      {
        name: "node_modules-outside",
        setup(build) {
          build.onResolve({ filter: /^[^./]/ }, (a) => {
            const pkg = a.path.startsWith("@") ? a.path.split("/").slice(0, 2).join("/") : a.path.split("/")[0];
            return BUNDLED_PACKAGES.has(pkg) ? undefined : { path: a.path, external: true };
          });
        },
      },
    ],
  });
} catch (err) {
  rmSync(NEXT, { recursive: true, force: true });
  console.error(`build: esbuild ${ENTRY} failed (${err.message.split("\n")[0]}); dist/ is left as it was`);
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

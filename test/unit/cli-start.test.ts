// What the short commands load. A start of `tidemark --help` or `tidemark status` is mostly module
// loading (docs/benchmarks.md, "CLI start"): one static import of a heavy module in main.ts, or in
// a module `status` reaches, puts it back on every call. The real bin/tidemark runs with a module
// hook (node --import) that writes every URL it resolves, and every file require() loads, to a
// file; the test reads which packages and which of our modules were loaded. It holds whichever
// entry bin picks: the build (dist/cli/, an esbuild bundle split into chunks: a chunk's source map
// names the modules and packages bundled into it) or the sources through tsx (the packages bin's
// own loader brings, tsx and esbuild, are left out of the check).
import { spawnSync } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
const RUN_TIMEOUT_MS = 60_000;
/** bin's loader for the TypeScript sources, when dist/ is stale: not the CLI's own imports. */
const LOADER_PACKAGES = new Set(["tsx", "esbuild", "get-tsconfig", "resolve-pkg-maps"]);

let dir: string;

beforeAll(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), "tm-cli-start-"));
  fs.writeFileSync(
    path.join(dir, "hooks.mjs"),
    [
      'import { appendFileSync } from "node:fs";',
      "export async function resolve(specifier, context, next) {",
      "  const r = await next(specifier, context);",
      '  appendFileSync(process.env.TM_LOADED_LOG, r.url + "\\n");',
      "  return r;",
      "}",
      "",
    ].join("\n"),
  );
  // require() (the native modules' loaders, CommonJS packages) is not seen by the resolve hook.
  fs.writeFileSync(
    path.join(dir, "register.mjs"),
    [
      'import { appendFileSync } from "node:fs";',
      'import Module, { register } from "node:module";',
      'import { pathToFileURL } from "node:url";',
      `register(${JSON.stringify(pathToFileURL(path.join(dir, "hooks.mjs")).href)});`,
      "const resolveFilename = Module._resolveFilename;",
      "Module._resolveFilename = function (...args) {",
      "  const file = resolveFilename.apply(this, args);",
      '  if (file.startsWith("/")) appendFileSync(process.env.TM_LOADED_LOG, pathToFileURL(file).href + "\\n");',
      "  return file;",
      "};",
      "",
    ].join("\n"),
  );
});

afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

/** What one file loaded brings: itself, or, for a chunk of the build, the files its source map names. */
function sourcesOf(file: string): string[] {
  if (!file.startsWith(path.join(ROOT, "dist") + path.sep)) return [file];
  const map = JSON.parse(fs.readFileSync(`${file}.map`, "utf8")) as { sources: string[] };
  return map.sources.map((s) => path.resolve(path.dirname(file), s));
}

/** The packages, their files, and our own modules (paths under appliance/, config/, disks/) one command loads. */
function loaded(args: string[]): { built: boolean; packages: Set<string>; packageFiles: Set<string>; ours: Set<string> } {
  const log = path.join(dir, `loaded-${args[0]}.log`);
  fs.rmSync(log, { force: true });
  const r = spawnSync(process.execPath, ["--import", pathToFileURL(path.join(dir, "register.mjs")).href, path.join(ROOT, "bin/tidemark"), ...args], {
    encoding: "utf8",
    timeout: RUN_TIMEOUT_MS,
    cwd: ROOT,
    env: { ...process.env, TM_LOADED_LOG: log, TIDEMARK_DEBUG_LOADER: "1" },
  });
  const built = /^tidemark: loader dist /m.test(r.stderr);
  const urls = fs.readFileSync(log, "utf8").split("\n").filter((u) => u.startsWith("file:"));
  const packages = new Set<string>();
  const packageFiles = new Set<string>();
  const ours = new Set<string>();
  for (const file of new Set(urls.map((u) => fileURLToPath(u)).flatMap(sourcesOf))) {
    const m = /node_modules\/((?:@[^/]+\/)?[^/]+)\/(.*)$/.exec(file);
    if (m !== null) {
      if (!LOADER_PACKAGES.has(m[1])) {
        packages.add(m[1]);
        packageFiles.add(`${m[1]}/${m[2]}`);
      }
      continue;
    }
    const rel = path.relative(ROOT, file);
    if (/^(appliance|config|disks)\//.test(rel)) ours.add(rel);
  }
  return { built, packages, packageFiles, ours };
}

describe("CLI start: what a short command loads", () => {
  it("--help loads commander and nothing else of ours or of npm's but the drill's option defaults", () => {
    const { packages, ours } = loaded(["--help"]);
    expect([...packages]).toEqual(["commander"]);
    // main.ts, and drill.ts for the drill command's options (its defaults and the error codes' registry).
    expect(ours.has("appliance/cli/main.ts")).toBe(true);
    for (const m of ours) expect(["appliance/cli/main.ts", "appliance/cli/drill.ts", "appliance/drill/defaults.ts", "appliance/errors/codes.ts"], `--help loaded ${m}`).toContain(m);
  });

  it("status loads the config, the control client and its views, and none of the processes, procedures, logs, bars or SQLite", () => {
    // Nothing listens on config/default.json's ports here, or it answers: either way the imports are the same.
    const { built, packages, packageFiles, ours } = loaded(["status", "--config", "config/default.json"]);
    expect(packages.has("zod")).toBe(true);
    const zodFiles = [...packageFiles].filter((f) => f.startsWith("zod/"));
    expect(zodFiles.filter((f) => /^zod\/(v4\/classic|index\.|v4\/index\.)/.test(f)), "classic zod").toEqual([]);
    // From the build: zod's mini build with its English messages alone (config/zod-messages.ts). A
    // namespace import of zod, or a re-export of one, brings every locale back into the bundle. The
    // sources through tsx load zod/mini's index, which imports them all: nothing to hold there.
    if (built) expect(zodFiles.filter((f) => /^zod\/v4\/locales\//.test(f))).toEqual(["zod/v4/locales/en.js"]);
    expect(ours.has("appliance/cli/control-client.ts")).toBe(true);
    for (const heavy of ["pino", "pino-pretty", "cli-progress", "better-sqlite3", "prom-client"]) expect(packages.has(heavy), `status loaded ${heavy}`).toBe(false);
    for (const m of ours) {
      // The drill's option defaults come with every command's definitions (main.ts); the drill itself does not.
      const drill = m.startsWith("appliance/drill/") && m !== "appliance/drill/defaults.ts";
      expect(m.startsWith("appliance/subsystem/") || m.startsWith("appliance/secondary/") || drill, `status loaded ${m}`).toBe(false);
      expect(["appliance/rcm/procedure.ts", "appliance/rcm/resync.ts", "appliance/rcm/failback.ts", "appliance/rcm/verify.ts", "appliance/cli/up.ts"], `status loaded ${m}`).not.toContain(m);
    }
  });
});

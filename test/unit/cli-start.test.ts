// What the short commands load. A start of `tidemark --help` or `tidemark status` is mostly module
// loading (docs/benchmarks.md, "CLI start"): one static import of a heavy module in main.ts, or in
// a module `status` reaches, puts it back on every call. The real bin/tidemark runs with a module
// hook (node --import) that writes every URL it resolves to a file; the test reads which packages
// and which of our modules were loaded. It holds whichever entry bin picks (dist/ or the sources
// through tsx): the packages bin's own loader brings (tsx, esbuild) are left out of the check.
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
  fs.writeFileSync(path.join(dir, "register.mjs"), `import { register } from "node:module";\nregister(${JSON.stringify(pathToFileURL(path.join(dir, "hooks.mjs")).href)});\n`);
});

afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

/** The packages and our own modules (paths under appliance/, config/, disks/) one command loads. */
function loaded(args: string[]): { packages: Set<string>; ours: Set<string> } {
  const log = path.join(dir, `loaded-${args[0]}.log`);
  fs.rmSync(log, { force: true });
  spawnSync(process.execPath, ["--import", pathToFileURL(path.join(dir, "register.mjs")).href, path.join(ROOT, "bin/tidemark"), ...args], {
    encoding: "utf8",
    timeout: RUN_TIMEOUT_MS,
    cwd: ROOT,
    env: { ...process.env, TM_LOADED_LOG: log },
  });
  const urls = fs.readFileSync(log, "utf8").split("\n").filter((u) => u.startsWith("file:"));
  const packages = new Set<string>();
  const ours = new Set<string>();
  for (const u of urls) {
    const file = fileURLToPath(u);
    const pkg = /node_modules\/((?:@[^/]+\/)?[^/]+)\//.exec(file)?.[1];
    if (pkg !== undefined) {
      if (!LOADER_PACKAGES.has(pkg)) packages.add(pkg);
      continue;
    }
    const rel = path.relative(ROOT, file).replace(/^dist\//, "").replace(/\.js$/, ".ts");
    if (/^(appliance|config|disks)\//.test(rel)) ours.add(rel);
  }
  return { packages, ours };
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
    const { packages, ours } = loaded(["status", "--config", "config/default.json"]);
    expect(packages.has("zod")).toBe(true);
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

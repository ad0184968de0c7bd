// bin/tidemark runs the built dist/ while no source is newer than the build, and the TypeScript
// sources through tsx otherwise (bin/build-stamp.mjs, scripts/build.mjs). These tests run the real
// bin/tidemark, build-stamp module, build script, tsconfigs and package.json in a copy of the
// repository's layout under a temp dir, with small sources of their own, so they never rebuild or
// touch the repository's dist/ while other tests start processes from it.
// TIDEMARK_DEBUG_LOADER=1 makes bin say on stderr which entry it ran and why.
import { spawnSync } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
const RUN_TIMEOUT_MS = 60_000;

/** The repository's files the mechanism is made of, copied as they are. */
const REAL_FILES = ["bin/tidemark", "bin/build-stamp.mjs", "scripts/build.mjs", "tsconfig.json", "tsconfig.build.json", "package.json", "appliance/cli/bin-path.ts", "appliance/invariant.ts", "appliance/errors/codes.ts"];

/** Sources of the temp repository: a static import across directories, a dynamic one, and the bin's path. */
const SOURCES: Record<string, string> = {
  "appliance/cli/main.ts": [
    'import { diskWord } from "../../disks/word.ts";',
    'import { configWord } from "../../config/word.ts";',
    'import { TIDEMARK_BIN } from "./bin-path.ts";',
    'const { lateWord } = await import("./late.ts");',
    "process.stdout.write(`${diskWord} ${configWord} ${lateWord} ${TIDEMARK_BIN}\\n`);",
    "",
  ].join("\n"),
  "appliance/cli/late.ts": 'export const lateWord: string = "late";\n',
  "disks/word.ts": 'export const diskWord: string = "disk";\n',
  "config/word.ts": 'export const configWord: string = "config";\n',
};

let dir: string;

function write(rel: string, text: string): void {
  fs.mkdirSync(path.dirname(path.join(dir, rel)), { recursive: true });
  fs.writeFileSync(path.join(dir, rel), text);
}

function tidemark(): { loader: string; stdout: string } {
  const r = spawnSync(process.execPath, [path.join(dir, "bin/tidemark")], { encoding: "utf8", timeout: RUN_TIMEOUT_MS, env: { ...process.env, TIDEMARK_DEBUG_LOADER: "1" } });
  expect(r.status, r.stderr).toBe(0);
  const loader = /^tidemark: loader (.*)$/m.exec(r.stderr)?.[1];
  expect(loader, r.stderr).toBeDefined();
  return { loader: loader!, stdout: r.stdout };
}

function build(...args: string[]): { status: number | null; out: string } {
  const r = spawnSync(process.execPath, [path.join(dir, "scripts/build.mjs"), ...args], { encoding: "utf8", timeout: RUN_TIMEOUT_MS });
  return { status: r.status, out: r.stdout + r.stderr };
}

const stampMtimeNs = () => fs.statSync(path.join(dir, "dist/.build-stamp.json"), { bigint: true }).mtimeNs;

/** A file saved now: its mtime is after any build that finished before this call. */
function touch(rel: string): void {
  const now = new Date();
  fs.utimesSync(path.join(dir, rel), now, now);
}

describe("bin/tidemark and the build", () => {
  beforeAll(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), "tidemark-bin-build-"));
    for (const f of REAL_FILES) write(f, fs.readFileSync(path.join(ROOT, f), "utf8"));
    fs.chmodSync(path.join(dir, "bin/tidemark"), 0o755);
    for (const [f, text] of Object.entries(SOURCES)) write(f, text);
    fs.symlinkSync(fs.realpathSync(path.join(ROOT, "node_modules")), path.join(dir, "node_modules"));
  });
  afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

  it("bin: with no build, runs the sources through tsx and says why", () => {
    const r = tidemark();
    expect(r.loader).toMatch(/^tsx \(no finished build/);
    expect(r.stdout).toBe(`disk config late ${path.join(dir, "bin/tidemark")}\n`);
  });

  it("bin: after a build, runs dist/, the bundle, whose dynamic import loads a chunk of its own", () => {
    const b = build();
    expect(b.status, b.out).toBe(0);
    const late = fs.readdirSync(path.join(dir, "dist/cli")).filter((f) => /^late-\w+\.js$/.test(f));
    expect(late).toHaveLength(1);
    expect(fs.readFileSync(path.join(dir, "dist/cli/main.js"), "utf8")).toContain(`import("./${late[0]}")`);
    const r = tidemark();
    expect(r.loader).toBe("dist (dist/cli/main.js)");
    // bin-path.ts finds bin/ from dist/cli/ as it does from appliance/cli/.
    expect(r.stdout).toBe(`disk config late ${path.join(dir, "bin/tidemark")}\n`);
    expect(fs.readdirSync(dir).filter((e) => e.startsWith("dist."))).toEqual([]);
  });

  it("bin: a source saved after the build sends it back to tsx, naming the file; build --if-stale rebuilds", () => {
    touch("config/word.ts");
    expect(tidemark().loader).toBe("tsx (config/word.ts changed after the build)");
    const b = build("--if-stale");
    expect(b.status, b.out).toBe(0);
    expect(b.out).toContain("config/word.ts changed after the build");
    expect(tidemark().loader).toMatch(/^dist /);
  });

  it("build: --if-stale leaves a fresh dist/ as it is", () => {
    const before = stampMtimeNs();
    const b = build("--if-stale");
    expect(b.status, b.out).toBe(0);
    expect(b.out).toContain("dist/ is up to date");
    expect(stampMtimeNs()).toBe(before);
  });

  it("bin: a source added to or removed from a compiled directory makes the build stale (the directory's times)", () => {
    write("disks/extra.ts", "export const extra = 1;\n");
    // The new file's own mtime would do as well; bin names the first newer path it meets.
    expect(tidemark().loader).toMatch(/^tsx \(disks(\/extra\.ts)? changed after the build\)$/);
    expect(build().status).toBe(0);
    expect(tidemark().loader).toMatch(/^dist /);
    fs.rmSync(path.join(dir, "disks/extra.ts"));
    expect(tidemark().loader).toBe("tsx (disks changed after the build)");
  });

  it("bin: an edited tsconfig, or a source copied in with its old mtime (cp -p), makes the build stale; a non-TypeScript file beside the sources does not", () => {
    write("config/default.json", "{}\n");
    // Writing a new file moves config/'s mtime (and the last test left a source removed): rebuild,
    // then edit the file only.
    expect(build().status).toBe(0);
    touch("config/default.json");
    expect(tidemark().loader).toMatch(/^dist /);
    touch("tsconfig.json");
    expect(tidemark().loader).toBe("tsx (tsconfig.json changed after the build)");
    // Setting an mtime back moves the ctime forward; bin walks disks/ before tsconfig.json.
    fs.utimesSync(path.join(dir, "disks/word.ts"), new Date(0), new Date(0));
    expect(tidemark().loader).toBe("tsx (disks/word.ts changed after the build)");
  });

  it("build: a compile that fails leaves the previous dist/ and its stamp, and no work dir", () => {
    const before = stampMtimeNs();
    write("appliance/cli/late.ts", "export const lateWord: string = ;\n");
    const b = build();
    expect(b.status).not.toBe(0);
    expect(b.out).toContain("dist/ is left as it was");
    expect(stampMtimeNs()).toBe(before);
    expect(fs.readdirSync(dir).filter((e) => e.startsWith("dist."))).toEqual([]);
    // The broken source is newer than the build: bin runs the sources (and so fails loudly).
    const r = spawnSync(process.execPath, [path.join(dir, "bin/tidemark")], { encoding: "utf8", timeout: RUN_TIMEOUT_MS, env: { ...process.env, TIDEMARK_DEBUG_LOADER: "1" } });
    expect(r.stderr).toContain("tidemark: loader tsx (appliance/cli/late.ts changed after the build)");
    expect(r.status).not.toBe(0);
  });
});

describe("the build's inputs", () => {
  // tsc compiles whatever the included sources import, wherever it lies; the freshness check
  // watches only the included directories. An import that leaves them (product code importing
  // test/ or bench/) would let dist/ run a stale copy of that file.
  it("build: every relative import under tsconfig.build.json's include stays inside it", () => {
    const include: string[] = JSON.parse(fs.readFileSync(path.join(ROOT, "tsconfig.build.json"), "utf8")).include;
    const outside: string[] = [];
    const walk = (d: string): void => {
      for (const e of fs.readdirSync(d, { withFileTypes: true })) {
        const p = path.join(d, e.name);
        if (e.isDirectory()) walk(p);
        else if (e.name.endsWith(".ts")) {
          const text = fs.readFileSync(p, "utf8");
          for (const m of text.matchAll(/(?:from|import)\s*\(?\s*"(\.{1,2}\/[^"]+)"/g)) {
            const top = path.relative(ROOT, path.resolve(path.dirname(p), m[1])).split(path.sep)[0];
            if (!include.includes(top)) outside.push(`${path.relative(ROOT, p)} imports ${m[1]}`);
          }
        }
      }
    };
    for (const d of include) walk(path.join(ROOT, d));
    expect(outside).toEqual([]);
  });
});

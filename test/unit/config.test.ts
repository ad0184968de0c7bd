// The topology file: config/schema.ts (shape and topology checks) and
// config/load.ts (reading the file). Every refusal is a ConfigError whose
// message names the file and the field, never a stack trace; the CLI turns it
// into one line on stderr and exit code 2.
import { spawnSync } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { loadConfig } from "../../config/load.ts";
import { ConfigError, parseConfig } from "../../config/schema.ts";

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
const DEFAULT_CONFIG = path.join(ROOT, "config/default.json");
const FILE = "topo.json";

/* eslint-disable @typescript-eslint/no-explicit-any -- the tests build deliberately malformed JSON */
type Raw = any;

/** A small valid topology: #1 primary, #2 and #3 secondaries, one group. */
function base(): Raw {
  return {
    clusterKey: "a-cluster-key-of-enough-length",
    subsystems: [
      { id: 1, replicationPort: 7101, nbdPort: 10801, volumes: [{ name: "p1a", sizeMiB: 8 }, { name: "p1b", sizeMiB: 8 }, { name: "p1c", sizeMiB: 8 }] },
      { id: 2, replicationPort: 7102, nbdPort: 10802, volumes: [{ name: "s2a", sizeMiB: 8 }, { name: "s2b", sizeMiB: 8 }] },
      { id: 3, replicationPort: 7103, nbdPort: 10803, volumes: [{ name: "s3a", sizeMiB: 8 }] },
    ],
    groups: [
      {
        name: "C1",
        pairs: [
          { primary: "p1a", secondary: "s2a" },
          { primary: "p1b", secondary: "s2b" },
          { primary: "p1c", secondary: "s3a" },
        ],
      },
    ],
  };
}
/* eslint-enable @typescript-eslint/no-explicit-any */

/** The problems of a config that must be refused; fails the test if it is accepted. */
function problems(raw: Raw, file = FILE): string[] {
  try {
    parseConfig(raw, file);
  } catch (err) {
    expect(err).toBeInstanceOf(ConfigError);
    const e = err as ConfigError;
    expect(e.code).toBe("TM_CONFIG");
    expect(e.file).toBe(file);
    expect(e.message.startsWith(`${file}: `)).toBe(true);
    expect(e.message).not.toMatch(/\n\s+at /);
    return e.problems;
  }
  throw new Error("config was accepted");
}

function refused(mutate: (c: Raw) => void): string[] {
  const c = base();
  mutate(c);
  return problems(c);
}

describe("config: topology refusals", () => {
  it("config: the base topology is accepted (3 subsystems, 1 group)", () => {
    const t = parseConfig(base(), FILE);
    expect(t.groups.get("C1")).toMatchObject({ primaries: [1], secondaries: [2, 3] });
    expect(t.pairs).toHaveLength(3);
  });

  it("config: a pair names an unknown volume (secondary 'x')", () => {
    expect(refused((c) => (c.groups[0].pairs[2].secondary = "x"))).toContain("C1.pairs[2].secondary: volume 'x' is not defined");
  });

  it("config: a pair names an unknown volume (primary 'nope')", () => {
    expect(refused((c) => (c.groups[0].pairs[0].primary = "nope"))).toContain("C1.pairs[0].primary: volume 'nope' is not defined");
  });

  it("config: a volume used twice (as the secondary of two pairs)", () => {
    const p = refused((c) => (c.groups[0].pairs[1].secondary = "s2a"));
    expect(p).toContain("C1.pairs[1].secondary: volume 's2a' is already used by C1.pairs[0].secondary");
  });

  it("config: a volume used twice (in two groups)", () => {
    const p = refused((c) => c.groups.push({ name: "C2", pairs: [{ primary: "p1a", secondary: "s3a" }] }));
    expect(p).toContain("C2.pairs[0].primary: volume 'p1a' is already used by C1.pairs[0].primary");
    expect(p).toContain("C2.pairs[0].secondary: volume 's3a' is already used by C1.pairs[2].secondary");
  });

  it("config: a volume used twice (secondary of one pair, primary of another)", () => {
    const p = refused((c) => {
      c.subsystems[2].volumes.push({ name: "s3b", sizeMiB: 8 });
      c.groups[0].pairs.push({ primary: "s2a", secondary: "s3b" });
    });
    expect(p).toContain("C1.pairs[3].primary: volume 's2a' is already used by C1.pairs[0].secondary");
  });

  it("config: a volume defined twice (on two subsystems)", () => {
    const p = refused((c) => c.subsystems[2].volumes.push({ name: "p1a", sizeMiB: 8 }));
    expect(p).toContain("subsystem#3.volumes[1]: volume 'p1a' is defined twice (names are unique across the config)");
  });

  it("config: a group with no pairs has no primary", () => {
    const p = refused((c) => c.groups.push({ name: "C2", pairs: [] }));
    expect(p).toEqual(["C2.pairs: a consistency group needs at least one pair (it has no primary)"]);
  });

  it("config: primary and secondary on the same subsystem (#1)", () => {
    const p = refused((c) => {
      c.subsystems[0].volumes.push({ name: "p1d", sizeMiB: 8 });
      c.groups[0].pairs[0].secondary = "p1d";
    });
    expect(p).toEqual(["C1.pairs[0]: primary 'p1a' and secondary 'p1d' are on the same subsystem #1"]);
  });

  it("config: a subsystem both primary and secondary of one group (#2)", () => {
    const p = refused((c) => {
      c.subsystems[1].volumes.push({ name: "p2x", sizeMiB: 8 });
      c.subsystems[2].volumes.push({ name: "s3x", sizeMiB: 8 });
      c.groups[0].pairs.push({ primary: "p2x", secondary: "s3x" });
    });
    expect(p).toEqual(["C1: subsystem #2 is both a primary and a secondary of the group"]);
  });

  it("config: a subsystem may be primary in one group and secondary in another", () => {
    const c = base();
    c.subsystems[1].volumes.push({ name: "p2x", sizeMiB: 8 });
    c.subsystems[2].volumes.push({ name: "s3x", sizeMiB: 8 });
    c.groups.push({ name: "C2", pairs: [{ primary: "p2x", secondary: "s3x" }] });
    expect(parseConfig(c, FILE).groups.get("C2")).toMatchObject({ primaries: [2], secondaries: [3] });
  });

  it("config: a pair's volumes differ in size (8 MiB vs 16 MiB)", () => {
    const p = refused((c) => (c.subsystems[2].volumes[0].sizeMiB = 16));
    expect(p).toEqual(["C1.pairs[2]: primary 'p1c' is 8 MiB but secondary 's3a' is 16 MiB; a pair's volumes have one size"]);
  });

  it("config: duplicate ports (two subsystems on one host:port)", () => {
    const p = refused((c) => (c.subsystems[2].nbdPort = 7101));
    expect(p).toEqual(["subsystem#3.nbdPort: 127.0.0.1:7101 is already taken by subsystem#1.replicationPort"]);
  });

  it("config: duplicate ports (replicationPort equals nbdPort of one subsystem)", () => {
    const p = refused((c) => (c.subsystems[0].nbdPort = 7101));
    expect(p).toEqual(["subsystem#1.nbdPort: 127.0.0.1:7101 is already taken by subsystem#1.replicationPort"]);
  });

  it("config: duplicate ports (the RCM's port taken by a subsystem)", () => {
    const p = refused((c) => (c.rcm = { port: 10802 }));
    expect(p).toEqual(["rcm.port: 127.0.0.1:10802 is already taken by subsystem#2.nbdPort"]);
  });

  it("config: the same port on different hosts is allowed", () => {
    const c = base();
    c.subsystems[2].host = "10.0.0.3";
    c.subsystems[2].nbdPort = 7101;
    expect(() => parseConfig(c, FILE)).not.toThrow();
  });

  it("config: duplicate subsystem ids (#2 twice)", () => {
    const p = refused((c) => (c.subsystems[2].id = 2));
    expect(p).toContain("subsystem#2: subsystem id 2 is used twice");
  });

  it("config: clusterKey and clusterKeyFile both set", () => {
    expect(refused((c) => (c.clusterKeyFile = "k.key"))).toEqual(["clusterKeyFile: and clusterKey are both set: keep only clusterKeyFile"]);
  });

  it("config: linkTls mode x509 without its files names each missing field", () => {
    expect(refused((c) => (c.linkTls = { mode: "x509", caFile: "ca.pem" }))).toEqual([
      'linkTls.certFile: is required with mode "x509"',
      'linkTls.keyFile: is required with mode "x509"',
    ]);
  });

  it("config: clusterKey missing", () => {
    expect(refused((c) => delete c.clusterKey)).toEqual(["clusterKeyFile: is missing: name the cluster key file (create one with `tidemark keygen FILE`)"]);
  });

  it("config: clusterKey too short (5 characters)", () => {
    expect(refused((c) => (c.clusterKey = "short"))).toEqual(["clusterKey: clusterKey must be at least 16 characters"]);
  });

  it("config: unknown fields are refused at every level (strict)", () => {
    const p = refused((c) => {
      c.syncIntervalMS = 5;
      c.subsystems[0].colour = "red";
      c.subsystems[1].volumes[0].sizeMB = 8;
      c.groups[0].pairs[1].mode = "sync";
    });
    expect(p).toHaveLength(4);
    expect(p).toContain('(top level): Unrecognized key: "syncIntervalMS"');
    expect(p).toContain('subsystem#1: Unrecognized key: "colour"');
    expect(p).toContain('subsystem#2.volumes[0]: Unrecognized key: "sizeMB"');
    expect(p).toContain('C1.pairs[1]: Unrecognized key: "mode"');
  });

  it("config: wrong types name each field (port as string, fractional interval, number as volume name)", () => {
    const p = refused((c) => {
      c.subsystems[1].nbdPort = "10802";
      c.syncIntervalMs = 1.5;
      c.groups[0].pairs[2].secondary = 5;
      c.clock = "sundial";
    });
    expect(p).toHaveLength(4);
    expect(p).toContain("subsystem#2.nbdPort: Invalid input: expected number, received string");
    expect(p).toContain("syncIntervalMs: Invalid input: expected int, received number");
    expect(p).toContain("C1.pairs[2].secondary: Invalid input: expected string, received number");
    expect(p.some((x) => x.startsWith("clock: "))).toBe(true);
  });

  it("config: out-of-range values (port 0, port 70000, negative size)", () => {
    const p = refused((c) => {
      c.subsystems[0].replicationPort = 0;
      c.subsystems[1].nbdPort = 70000;
      c.subsystems[2].volumes[0].sizeMiB = -1;
    });
    expect(p.map((x) => x.split(":")[0]).sort()).toEqual(["subsystem#1.replicationPort", "subsystem#2.nbdPort", "subsystem#3.volumes[0].sizeMiB"]);
  });

  it("config: the top level is not an object (an array)", () => {
    expect(problems([])[0]).toMatch(/^\(top level\): /);
  });

  it("config: defaultExport names a volume of another subsystem", () => {
    const p = refused((c) => (c.subsystems[0].defaultExport = "s2a"));
    expect(p).toEqual(["subsystem#1.defaultExport: volume 's2a' is not on this subsystem"]);
  });

  it("config: sizeMiB missing for a volume file (and not needed for /dev/)", () => {
    const p = refused((c) => delete c.subsystems[2].volumes[0].sizeMiB);
    expect(p).toEqual(["subsystem#3.volumes[0] (s3a): sizeMiB is required for a volume file"]);
    const c = base();
    delete c.subsystems[2].volumes[0].sizeMiB;
    c.subsystems[2].volumes[0].path = "/dev/loop7";
    expect(() => parseConfig(c, FILE)).not.toThrow();
  });

  it("config: every problem is reported at once (3 problems)", () => {
    const p = refused((c) => {
      c.subsystems[2].id = 2;
      c.groups[0].pairs[0].primary = "zz";
      c.subsystems[0].defaultExport = "s3a";
    });
    expect(p).toHaveLength(3);
  });

  it("config: clock realtime refuses maxClockOffsetMs below 1 ms (0 explicit, 0 by default, 0.5), naming the field", () => {
    for (const offset of [0, undefined, 0.5]) {
      const p = refused((c) => {
        c.clock = "realtime";
        if (offset !== undefined) c.maxClockOffsetMs = offset;
      });
      expect(p).toHaveLength(1);
      expect(p[0]).toMatch(/^maxClockOffsetMs: is [0-9.]+.* clock "realtime" needs at least 1 ms/);
    }
  });

  it("config: clock realtime with maxClockOffsetMs 1 is accepted; monotonic keeps its default 0", () => {
    const rt = base();
    rt.clock = "realtime";
    rt.maxClockOffsetMs = 1;
    expect(parseConfig(rt, FILE).config).toMatchObject({ clock: "realtime", maxClockOffsetMs: 1 });
    expect(parseConfig(base(), FILE).config).toMatchObject({ clock: "monotonic", maxClockOffsetMs: 0 });
  });
});

describe("config: loading files", () => {
  let dir: string;
  beforeAll(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), "tidemark-config-"));
  });
  afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

  const write = (name: string, text: string) => {
    const f = path.join(dir, name);
    fs.writeFileSync(f, text);
    return f;
  };

  const loadError = (file: string): ConfigError => {
    try {
      loadConfig(file);
    } catch (err) {
      expect(err).toBeInstanceOf(ConfigError);
      return err as ConfigError;
    }
    throw new Error("config was accepted");
  };

  it("config: bad JSON names the file (trailing comma)", () => {
    const f = write("bad.json", '{ "clusterKey": "0123456789abcdef", }');
    const e = loadError(f);
    expect(e.file).toBe(f);
    expect(e.message.startsWith(`${f}: not valid JSON: `)).toBe(true);
    expect(e.message).not.toMatch(/\n\s+at /);
  });

  it("config: a missing file names the file and ENOENT", () => {
    const f = path.join(dir, "missing.json");
    const e = loadError(f);
    expect(e.message).toBe(`${f}: cannot read the config file: ENOENT`);
  });

  it("config: a topology error from a file names the file and the field", () => {
    const c = base();
    c.groups[0].pairs[2].secondary = "x";
    const f = write("unknown-volume.json", JSON.stringify(c));
    expect(loadError(f).message).toBe(`${f}: C1.pairs[2].secondary: volume 'x' is not defined`);
  });

  it("config: dataDir is resolved against the config file's folder (default ../var/default)", () => {
    const f = write("ok.json", JSON.stringify(base()));
    expect(loadConfig(f).dataDir).toBe(path.resolve(dir, "../var/default"));
    const c = base();
    c.dataDir = "state";
    expect(loadConfig(write("ok2.json", JSON.stringify(c))).dataDir).toBe(path.join(dir, "state"));
  });
});

describe("config: the shipped default topology", () => {
  it("config: config/default.json is the seed's Fig. 1 (primaries #1 #2, secondaries #3 #4 #5, group C1)", () => {
    const t = loadConfig(DEFAULT_CONFIG);
    expect(t.config.subsystems.map((s) => s.id)).toEqual([1, 2, 3, 4, 5]);
    expect([...t.groups.keys()]).toEqual(["C1"]);
    const c1 = t.groups.get("C1")!;
    expect(c1.primaries).toEqual([1, 2]);
    expect(c1.secondaries).toEqual([3, 4, 5]);
    // Per secondary subsystem: the primaries it receives from.
    const feeds = new Map<number, Set<number>>();
    for (const p of c1.pairs) {
      if (!feeds.has(p.secondary.subsystemId)) feeds.set(p.secondary.subsystemId, new Set());
      feeds.get(p.secondary.subsystemId)!.add(p.primary.subsystemId);
    }
    for (const s of [3, 4, 5]) expect(feeds.get(s)?.size ?? 0).toBeGreaterThanOrEqual(1);
    expect([...feeds.values()].some((f) => f.has(1) && f.has(2))).toBe(true);
    // Every primary subsystem feeds some secondary.
    expect(new Set(c1.pairs.map((p) => p.primary.subsystemId))).toEqual(new Set([1, 2]));
  });
});

describe("config: the CLI end", () => {
  let dir: string;
  beforeAll(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), "tidemark-config-cli-"));
  });
  afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

  const status = (file: string) =>
    spawnSync(process.execPath, [path.join(ROOT, "bin/tidemark"), "status", "--config", file], { encoding: "utf8", timeout: 60_000 });

  it("config: `tidemark status` on a bad topology exits 2 with one line naming the file and the field", () => {
    const c = base();
    c.groups[0].pairs[2].secondary = "x";
    const f = path.join(dir, "bad-topology.json");
    fs.writeFileSync(f, JSON.stringify(c));
    const r = status(f);
    expect(r.status).toBe(2);
    expect(r.stdout).toBe("");
    const lines = r.stderr.trimEnd().split("\n");
    expect(lines).toEqual([`tidemark: config error in ${f}: C1.pairs[2].secondary: volume 'x' is not defined`]);
    expect(r.stderr).not.toMatch(/\bat .*\.ts:\d+/);
  });

  it("config: `tidemark status` on bad JSON exits 2 with one line naming the file", () => {
    const f = path.join(dir, "bad.json");
    fs.writeFileSync(f, "{ not json");
    const r = status(f);
    expect(r.status).toBe(2);
    const lines = r.stderr.trimEnd().split("\n");
    expect(lines).toHaveLength(1);
    expect(lines[0].startsWith(`tidemark: config error in ${f}: not valid JSON`)).toBe(true);
  });
});

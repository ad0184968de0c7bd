// The drill's temporary topology (appliance/drill/topology.ts) and its port range
// (appliance/drill/ports.ts): a shape becomes a config the product's own schema accepts, with
// every secondary's links routed through a proxy; shapes the drill cannot test are refused
// with the reason.
import path from "node:path";
import { fileURLToPath } from "node:url";
import { describe, expect, it } from "vitest";
import { loadConfig } from "../../config/load.ts";
import { parseConfig } from "../../config/schema.ts";
import { drillPortRange } from "../../appliance/drill/ports.ts";
import { DEFAULT_SHAPE, DrillConfigError, checkShape, drillConfig, portsNeeded, secondaryIds, shapeOf, type DrillShape } from "../../appliance/drill/topology.ts";

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
const ports = (n: number) => Array.from({ length: n }, (_, i) => 61000 + i);

function build(shape: DrillShape, devices?: Map<string, string>) {
  return drillConfig({ shape, host: "127.0.0.1", ports: ports(portsNeeded(shape)), clusterKeyFile: "/tmp/drill-x/cluster.key", dataDir: "/tmp/drill-x/data", volumeMiB: 16, devices });
}

describe("drill topology", () => {
  it("drill topology: the default shape is the shipped config/default.json's (Fig. 1)", () => {
    expect(shapeOf(loadConfig(path.join(ROOT, "config/default.json")))).toEqual(DEFAULT_SHAPE);
  });

  it("drill topology: Fig. 1 becomes a valid config: 14 distinct ports, an RCM, a proxy per secondary (#3, #4, #5), 16 MiB volume files", () => {
    expect(portsNeeded(DEFAULT_SHAPE)).toBe(2 * 5 + 3 + 1);
    const { config, proxies } = build(DEFAULT_SHAPE);
    const topo = parseConfig(config, "drill.json");
    expect(topo.pairs).toHaveLength(4);
    expect(topo.groups.get("C1")!.primaries).toEqual([1, 2]);
    expect(topo.config.rcm).toMatchObject({ autoSuspend: true });
    expect(proxies.map((p) => p.secondary)).toEqual([3, 4, 5]);
    for (const p of proxies) {
      const ss = topo.config.subsystems.find((s) => s.id === p.secondary)!;
      expect(ss.linkEndpoint).toEqual({ host: "127.0.0.1", port: p.listenPort });
      expect(p.targetPort).toBe(ss.replicationPort);
    }
    for (const id of [1, 2]) expect(topo.config.subsystems.find((s) => s.id === id)!.linkEndpoint).toBeUndefined();
    const used = [...topo.config.subsystems.flatMap((s) => [s.replicationPort, s.nbdPort]), ...proxies.map((p) => p.listenPort), topo.config.rcm!.port];
    expect(new Set(used).size).toBe(14);
    expect([...topo.volumes.values()].every((v) => v.sizeMiB === 16 && v.path === undefined)).toBe(true);
  });

  it("drill topology: with --loop devices, each volume's path is its device and it has no size of its own", () => {
    const devices = new Map(DEFAULT_SHAPE.subsystems.flatMap((s) => s.volumes).map((v, i) => [v, `/dev/loop${i + 10}`]));
    const topo = parseConfig(build(DEFAULT_SHAPE, devices).config, "drill.json");
    for (const v of topo.volumes.values()) {
      expect(v.path).toBe(devices.get(v.name));
      expect(v.sizeMiB).toBeUndefined();
    }
  });

  it("drill topology: a user's shape keeps its ids, volumes and groups (two groups, secondaries shared)", () => {
    const shape: DrillShape = {
      subsystems: [
        { id: 10, volumes: ["a", "b"] },
        { id: 20, volumes: ["c"] },
        { id: 30, volumes: ["a2", "b2", "c2"] },
      ],
      groups: [
        { name: "db", pairs: [{ primary: "a", secondary: "a2" }, { primary: "c", secondary: "c2" }] },
        { name: "logs", pairs: [{ primary: "b", secondary: "b2" }] },
      ],
    };
    expect(secondaryIds(shape)).toEqual([30]);
    expect(() => checkShape(shape, "mine.json")).toThrow("mine.json: group logs has its primary volumes on one primary (#10); causal chains must cross at least two primaries");
    shape.groups[1].pairs.push({ primary: "c3", secondary: "x" });
    shape.subsystems[1].volumes.push("c3");
    shape.subsystems[2].volumes.push("x");
    checkShape(shape, "mine.json");
    const topo = parseConfig(build(shape).config, "drill.json");
    expect([...topo.groups.keys()]).toEqual(["db", "logs"]);
    expect(topo.config.subsystems.map((s) => s.id)).toEqual([10, 20, 30]);
  });

  it("drill topology: refuses a config without groups, and too few ports", () => {
    expect(() => checkShape({ subsystems: [{ id: 1, volumes: ["a"] }], groups: [] }, "x.json")).toThrow(DrillConfigError);
    expect(() => checkShape({ subsystems: [{ id: 1, volumes: ["a"] }], groups: [] }, "x.json")).toThrow(/no consistency group/);
    expect(() => drillConfig({ shape: DEFAULT_SHAPE, host: "h", ports: ports(5), clusterKeyFile: "/tmp/drill-x/cluster.key", dataDir: "/d", volumeMiB: 16 })).toThrow(/needs 14 distinct ports, got 5/);
  });

  it("drill ports: the range lies outside the kernel's ephemeral range", () => {
    expect(drillPortRange([32768, 60999])).toEqual([61000, 65535]);
    expect(drillPortRange([40000, 65000])).toEqual([10000, 39999]);
    const [lo, hi] = drillPortRange();
    expect(hi - lo).toBeGreaterThan(1000);
  });
});

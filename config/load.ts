// Reads a topology file and resolves its relative paths. Errors name the file
// and the field, never a stack trace.
import { readFileSync } from "node:fs";
import path from "node:path";
import { ConfigError, parseConfig, type Topology, type ResolvedVolume } from "./schema.ts";

export interface LoadedTopology extends Topology {
  file: string;
  /** Absolute runtime folder. */
  dataDir: string;
}

export function loadConfig(file: string): LoadedTopology {
  const abs = path.resolve(file);
  let text: string;
  try {
    text = readFileSync(abs, "utf8");
  } catch (err) {
    throw new ConfigError(file, [`cannot read the config file: ${(err as NodeJS.ErrnoException).code ?? String(err)}`]);
  }
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (err) {
    throw new ConfigError(file, [`not valid JSON: ${(err as Error).message}`]);
  }
  const topo = parseConfig(raw, file);
  const dataDir = path.resolve(path.dirname(abs), topo.config.dataDir);
  return { ...topo, file: abs, dataDir };
}

/** Folder of one subsystem's state file, logs and default volume images. */
export function subsystemDir(topo: LoadedTopology, id: number): string {
  return path.join(topo.dataDir, `ss${id}`);
}

export function volumePath(topo: LoadedTopology, v: ResolvedVolume): string {
  if (v.path === undefined) return path.join(subsystemDir(topo, v.subsystemId), `${v.name}.img`);
  return path.isAbsolute(v.path) ? v.path : path.join(subsystemDir(topo, v.subsystemId), v.path);
}

export function subsystemConfig(topo: Topology, id: number) {
  const ss = topo.config.subsystems.find((s) => s.id === id);
  if (!ss) throw new ConfigError("config", [`subsystem #${id} is not defined (defined: ${topo.config.subsystems.map((s) => s.id).join(", ")})`]);
  return ss;
}

// `tidemark up`: runs every subsystem of a config as a child process, prints
// where each listens, stays in the foreground, and stops them all on Ctrl-C
// or SIGTERM. A child that dies is reported on stderr at once, with its log.
import { spawn, type ChildProcess } from "node:child_process";
import { createInterface } from "node:readline";
import path from "node:path";
import { TIDEMARK_BIN as BIN } from "./bin-path.ts";
import type { LoadedTopology } from "../../config/load.ts";
import { subsystemDir } from "../../config/load.ts";

const STOP_GRACE_MS = 10_000;

interface Child {
  id: number;
  proc: ChildProcess;
  log: string;
  ready: boolean;
  exited: boolean;
}

export function spawnSubsystem(configFile: string, id: number, log: string, wrap: (argv: string[]) => string[] = (a) => a): ChildProcess {
  const args = id === RCM_ID ? ["rcm", "--config", configFile, "--log", log] : ["subsystem", "--config", configFile, "--id", String(id), "--log", log];
  const [cmd, ...rest] = wrap([process.execPath, BIN, ...args]);
  return spawn(cmd, rest, { stdio: ["ignore", "pipe", "pipe"] });
}

/** The RCM runs as a child like the subsystems; this id names it among them. */
const RCM_ID = 0;
const nameOf = (id: number) => (id === RCM_ID ? "the RCM" : `subsystem #${id}`);

export async function up(topo: LoadedTopology, out: NodeJS.WritableStream, err: NodeJS.WritableStream): Promise<number> {
  const children: Child[] = [];
  let stopping = false;
  const stopAll = async () => {
    stopping = true;
    await Promise.all(
      children.map(
        (c) =>
          new Promise<void>((resolve) => {
            if (c.exited) return resolve();
            const kill = setTimeout(() => c.proc.kill("SIGKILL"), STOP_GRACE_MS);
            c.proc.once("exit", () => {
              clearTimeout(kill);
              resolve();
            });
            c.proc.kill("SIGTERM");
          }),
      ),
    );
  };

  const members = [...topo.config.subsystems.map((s) => s.id), ...(topo.config.rcm ? [RCM_ID] : [])];
  const readyAll = members.map(
    (id) =>
      new Promise<void>((resolve, reject) => {
        const s = { id };
        const log = id === RCM_ID ? path.join(topo.dataDir, "rcm.log") : path.join(subsystemDir(topo, s.id), "subsystem.log");
        const proc = spawnSubsystem(topo.file, s.id, log);
        const c: Child = { id: s.id, proc, log, ready: false, exited: false };
        children.push(c);
        let stderr = "";
        proc.stderr!.on("data", (d: Buffer) => {
          stderr += d.toString();
          if (c.ready) err.write(`[#${s.id}] ${d}`);
        });
        createInterface({ input: proc.stdout! }).on("line", (line) => {
          if (!c.ready && line.includes('"ready":true')) {
            c.ready = true;
            resolve();
          }
        });
        proc.on("exit", (code, signal) => {
          c.exited = true;
          if (!c.ready) {
            reject(new Error(`${nameOf(s.id)} failed to start (${signal ?? `exit ${code}`}): ${stderr.trim() || `see ${log}`}`));
          } else if (!stopping) {
            err.write(
              `\n*** tidemark up: ${nameOf(s.id)} (pid ${proc.pid}) DIED: ${signal ? `killed by ${signal}` : `exit code ${code}`}; its log: ${log}\n` +
                (s.id === RCM_ID
                  ? `*** no automatic suspension or takeover until it runs again: tidemark rcm --config ${topo.file}\n`
                  : `*** its volumes are not served and its links are down; restart it with: tidemark subsystem --config ${topo.file} --id ${s.id}\n`),
            );
          }
        });
      }),
  );
  try {
    await Promise.all(readyAll);
  } catch (e) {
    err.write(`tidemark up: ${(e as Error).message}\n`);
    await stopAll();
    return 1;
  }
  out.write(`tidemark up: ${topo.config.subsystems.length} subsystems of ${topo.file} are serving (data in ${topo.dataDir})\n`);
  for (const s of topo.config.subsystems) {
    const c = children.find((x) => x.id === s.id)!;
    const vols = s.volumes.map((v) => `nbd://${s.host}:${s.nbdPort}/${v.name}`).join(" ");
    out.write(`  #${s.id}  pid ${c.proc.pid}  replication ${s.host}:${s.replicationPort}  ${vols}\n`);
  }
  if (topo.config.rcm) {
    const c = children.find((x) => x.id === RCM_ID)!;
    out.write(`  RCM pid ${c.proc.pid}  control ${topo.config.rcm.host}:${topo.config.rcm.port}  log ${c.log}\n`);
  }
  out.write(`Ctrl-C stops them all. Status: tidemark status --config ${path.relative(process.cwd(), topo.file) || topo.file}\n`);

  await new Promise<void>((resolve) => {
    const onSignal = () => resolve();
    process.once("SIGINT", onSignal);
    process.once("SIGTERM", onSignal);
  });
  out.write("tidemark up: stopping every subsystem\n");
  await stopAll();
  return 0;
}

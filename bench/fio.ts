// fio as the benchmarks run it: one time-based job, its JSON report read back.
import { spawn, type ChildProcess } from "node:child_process";

const MiB = 1024 * 1024;

export interface FioResult {
  iops: number;
  mibps: number;
  p50us: number;
  p99us: number;
  error: number;
}

/**
 * One fio run, time-based, read from its JSON report (the first job, the
 * side that did I/O). `track` registers the child with the caller's cleanup.
 */
export function runFio(args: string[], seconds: number, cwd: string, env: NodeJS.ProcessEnv, track: (p: ChildProcess) => ChildProcess): Promise<FioResult> {
  const full = [...args, `--runtime=${seconds}`, "--time_based", "--output-format=json", "--group_reporting"];
  return new Promise((resolve, reject) => {
    const p = track(spawn("fio", full, { cwd, env, stdio: ["ignore", "pipe", "pipe"] }));
    let out = "";
    let err = "";
    p.stdout!.on("data", (d) => (out += d));
    p.stderr!.on("data", (d) => (err += d));
    p.once("exit", (code, sig) => {
      const start = out.indexOf("{");
      if (code !== 0 || start < 0) return reject(new Error(`fio ${full.join(" ")} failed (${sig ?? code}): ${err.trim() || out.trim()}`));
      try {
        const j = JSON.parse(out.slice(start)) as {
          jobs: {
            error: number;
            read: { iops: number; bw_bytes: number; clat_ns: { percentile?: Record<string, number> } };
            write: { iops: number; bw_bytes: number; clat_ns: { percentile?: Record<string, number> } };
          }[];
        };
        const job = j.jobs[0];
        const side = job.write.iops > 0 ? job.write : job.read;
        const pct = side.clat_ns.percentile ?? {};
        resolve({
          iops: side.iops,
          mibps: side.bw_bytes / MiB,
          p50us: (pct["50.000000"] ?? NaN) / 1000,
          p99us: (pct["99.000000"] ?? NaN) / 1000,
          error: job.error,
        });
      } catch (e) {
        reject(new Error(`fio output unreadable: ${(e as Error).message}`));
      }
    });
  });
}

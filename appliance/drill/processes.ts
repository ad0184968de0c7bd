// The drill's processes: one `tidemark subsystem` per subsystem and `tidemark rcm`, started,
// killed (-9) and restarted the way an operator's host would see them crash. A death the drill
// did not cause (an invariant stop, a crash) is recorded with the end of the process's stderr
// and log, because that is a finding of the drill, not noise.
// Invariants: at most one process per id at a time; kill() returns only once the process is gone.
import type { ChildProcess } from "node:child_process";
import { readFileSync } from "node:fs";
import path from "node:path";
import { createInterface } from "node:readline";
import { spawnSubsystem } from "../cli/up.ts";
import { RCM_ID } from "./schedule.ts";
import type { ErrorCode } from "../errors/codes.ts";

/** A process that prints no ready line in this long is stuck (a busy 2-core host starts one in about a second). */
export const START_TIMEOUT_MS = 60_000;
/** Grace between SIGTERM and SIGKILL at the end of a drill. */
export const STOP_GRACE_MS = 5_000;
/** How much of a dead process's stderr and log goes into the report. */
const TAIL_BYTES = 2048;

export class DrillProcessError extends Error {
  readonly code = "TM_DRILL_PROCESS" satisfies ErrorCode;
  constructor(message: string) {
    super(message);
    this.name = "DrillProcessError";
  }
}

export interface Death {
  id: number;
  pid: number;
  how: string;
  stderr: string;
  logTail: string;
}

interface Proc {
  child: ChildProcess;
  /** Set before the drill signals it, so its exit is not taken for a crash. */
  expected: boolean;
  exited: Promise<void>;
  stderr: string;
}

export const processName = (id: number) => (id === RCM_ID ? "the RCM" : `subsystem #${id}`);

function tail(s: string): string {
  return s.length > TAIL_BYTES ? "..." + s.slice(-TAIL_BYTES) : s;
}

export class DrillProcesses {
  private readonly procs = new Map<number, Proc>();
  private readonly deaths: Death[] = [];
  /** How many times each id was killed with -9 by the drill. */
  readonly kills = new Map<number, number>();

  constructor(
    private readonly configFile: string,
    private readonly logDir: string,
    /** Subsystem ids, and RCM_ID when the config has an RCM. */
    readonly ids: number[],
    /** The command that runs `argv` as process `id` (--hosts: inside its host's namespace, under its clock); it must exec in place, so the pid is the process's own. */
    private readonly launch: (id: number, argv: string[]) => string[] = (_id, argv) => argv,
  ) {}

  logOf(id: number): string {
    return path.join(this.logDir, id === RCM_ID ? "rcm.log" : `ss${id}.log`);
  }

  alive(id: number): boolean {
    const p = this.procs.get(id);
    return !!p && p.child.exitCode === null && p.child.signalCode === null;
  }

  pid(id: number): number | undefined {
    return this.alive(id) ? this.procs.get(id)!.child.pid : undefined;
  }

  /** Starts the process of `id` and waits for its ready line. */
  async start(id: number): Promise<void> {
    if (this.alive(id)) throw new DrillProcessError(`${processName(id)} is already running (pid ${this.pid(id)})`);
    const log = this.logOf(id);
    const child = spawnSubsystem(this.configFile, id, log, (argv) => this.launch(id, argv));
    const p: Proc = { child, expected: false, stderr: "", exited: new Promise((r) => child.once("exit", () => r())) };
    this.procs.set(id, p);
    child.stderr!.on("data", (d: Buffer) => (p.stderr = tail(p.stderr + d.toString())));
    child.once("exit", (code, signal) => {
      if (p.expected) return;
      this.deaths.push({ id, pid: child.pid ?? -1, how: signal ? `killed by ${signal}` : `exit code ${code}`, stderr: p.stderr.trim(), logTail: readTail(log) });
    });
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => {
        p.expected = true;
        child.kill("SIGKILL");
        reject(new DrillProcessError(`${processName(id)} printed no ready line within ${START_TIMEOUT_MS} ms; its log: ${log}`));
      }, START_TIMEOUT_MS);
      createInterface({ input: child.stdout! }).on("line", (l) => {
        if (l.includes('"ready":true')) {
          clearTimeout(timer);
          resolve();
        }
      });
      child.once("exit", (code, signal) => {
        clearTimeout(timer);
        reject(new DrillProcessError(`${processName(id)} exited (${signal ?? `exit ${code}`}) before it was ready: ${p.stderr.trim() || `see ${log}`}`));
      });
    });
  }

  /**
   * The subsystems first, then the RCM: an RCM up before a subsystem that is slow to start
   * (eight loop devices on a loaded machine took 8 s) counts it unreachable from its first
   * check and suspends the group before the round has begun.
   */
  async startAll(): Promise<void> {
    await Promise.all(this.ids.filter((id) => id !== RCM_ID).map((id) => this.start(id)));
    if (this.ids.includes(RCM_ID)) await this.start(RCM_ID);
  }

  /** kill -9, and wait until it is gone. */
  async kill(id: number): Promise<void> {
    const p = this.procs.get(id);
    if (!p || !this.alive(id)) return;
    p.expected = true;
    p.child.kill("SIGKILL");
    await p.exited;
    this.kills.set(id, (this.kills.get(id) ?? 0) + 1);
  }

  /** Deaths the drill did not cause, oldest first; each is reported once. */
  takeDeaths(): Death[] {
    return this.deaths.splice(0);
  }

  /** SIGTERM everything, SIGKILL what is still there after the grace period. */
  async stopAll(): Promise<void> {
    await Promise.all(
      [...this.procs.entries()].map(async ([id, p]) => {
        if (!this.alive(id)) return;
        p.expected = true;
        const timer = setTimeout(() => p.child.kill("SIGKILL"), STOP_GRACE_MS);
        p.child.kill("SIGTERM");
        await p.exited;
        clearTimeout(timer);
      }),
    );
  }

  /** For Ctrl-C: kill -9 whatever runs, at once. */
  async killAll(): Promise<void> {
    await Promise.all(
      [...this.procs.entries()].map(async ([id, p]) => {
        if (!this.alive(id)) return;
        p.expected = true;
        p.child.kill("SIGKILL");
        await p.exited;
      }),
    );
  }
}

function readTail(file: string): string {
  try {
    const text = readFileSync(file, "utf8");
    return tail(text).trim();
  } catch {
    return "";
  }
}

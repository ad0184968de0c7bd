// The RCM's verify schedules (docs/verify.md, Schedules): per group with
// `verify.cron` in the config, node-cron starts an online verify of the whole
// group at its rate and follows it to the end. A run never overlaps the
// previous one of the same group (a slow verify delays the next). Each
// schedule keeps its last run (start, end, result) and node-cron's next run,
// which `tidemark status` shows. In memory: an RCM restart shows no last run
// until the next one.
import cron, { type ScheduledTask } from "node-cron";
import type { Logger } from "pino";
import type { LoadedTopology } from "../../config/load.ts";
import { liveTopology } from "../cli/live-topology.ts";
import { startVerify, watchVerify } from "./verify.ts";
import type { VerifyEvents } from "../resync/verify-events.ts";

export interface ScheduleRun {
  startedAt: string;
  finishedAt: string | null;
  /** running; ok (no block differs); mismatch (blocks differ: they are in the secondaries' bitmaps); failed (the verify could not start or follow). */
  result: "running" | "ok" | "mismatch" | "failed";
  blocks: number;
  mismatchedBlocks: number;
  error: string | null;
}

export interface ScheduleStatus {
  group: string;
  kind: "verify";
  cron: string;
  rateMiBps: number;
  runs: number;
  /** The last run that finished, with its result. */
  lastRun: ScheduleRun | null;
  /** The run under way, if any. */
  running: ScheduleRun | null;
  nextRun: string | null;
}

interface Schedule {
  group: string;
  cron: string;
  rateMiBps: number;
  task: ScheduledTask;
  runs: number;
  last: ScheduleRun | null;
  current: ScheduleRun | null;
}

export class VerifySchedules {
  private readonly schedules: Schedule[] = [];

  constructor(
    private readonly topo: LoadedTopology,
    private readonly logger: Logger,
    /** Told of each scheduled run's start and end (an event stream may subscribe). */
    private readonly onRun?: (s: ScheduleStatus) => void,
    readonly events?: VerifyEvents,
  ) {}

  start(): void {
    for (const g of this.topo.config.groups) {
      const v = g.verify;
      if (!v?.cron) continue;
      const s: Schedule = { group: g.name, cron: v.cron, rateMiBps: v.rateMiBps, runs: 0, last: null, current: null, task: null as unknown as ScheduledTask };
      s.task = cron.schedule(v.cron, () => this.run(s), { name: `verify ${g.name}`, noOverlap: true });
      this.schedules.push(s);
      this.logger.info({ group: g.name, cron: v.cron, rateMiBps: v.rateMiBps, nextRun: s.task.getNextRun()?.toISOString() ?? null }, "verify schedule set");
    }
  }

  async stop(): Promise<void> {
    await Promise.all(this.schedules.map((s) => s.task.destroy()));
  }

  /** One scheduled verify of the whole group, to its end. */
  private async run(s: Schedule): Promise<void> {
    if (s.current) return;
    s.runs++;
    const last: ScheduleRun = { startedAt: new Date().toISOString(), finishedAt: null, result: "running", blocks: 0, mismatchedBlocks: 0, error: null };
    s.current = last;
    this.onRun?.(this.statusOf(s));
    try {
      const topo = await liveTopology(this.topo);
      const start = await startVerify(topo, s.group, { rateMiBps: s.rateMiBps });
      this.logger.info({ group: s.group, pairs: start.runs.length, rateMiBps: s.rateMiBps }, "scheduled verify started");
      const final = await watchVerify(topo, start, () => {});
      last.blocks = final.doneBlocks;
      last.mismatchedBlocks = final.mismatchedBlocks;
      last.result = final.mismatchedBlocks > 0 ? "mismatch" : "ok";
      const log = { group: s.group, blocks: final.doneBlocks, mismatchedBlocks: final.mismatchedBlocks };
      if (final.mismatchedBlocks > 0) this.logger.error(log, "scheduled verify: blocks differ; they are in the secondaries' bitmaps for the next resync");
      else this.logger.info(log, "scheduled verify: no block differs");
    } catch (err) {
      last.result = "failed";
      last.error = (err as Error).message;
      this.logger.error({ group: s.group, err: last.error }, "scheduled verify failed");
    } finally {
      last.finishedAt = new Date().toISOString();
      s.current = null;
      s.last = last;
      this.onRun?.(this.statusOf(s));
    }
  }

  private statusOf(s: Schedule): ScheduleStatus {
    return { group: s.group, kind: "verify", cron: s.cron, rateMiBps: s.rateMiBps, runs: s.runs, lastRun: s.last ? { ...s.last } : null, running: s.current ? { ...s.current } : null, nextRun: s.task.getNextRun()?.toISOString() ?? null };
  }

  status(): ScheduleStatus[] {
    return this.schedules.map((s) => this.statusOf(s));
  }
}

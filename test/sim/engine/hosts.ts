// Simulated hosts: each writes one block or two at a time through a
// primary's NBD export (the export object the NBD server calls), waits for
// the answer, then writes again, to another primary when there is one, so
// consecutive writes of a host are dependent writes across primaries
// (DESIGN.md's causal chains). No two hosts write one block at once: each
// block's writes are then totally ordered, and the oracle knows that order.
import type { Scheduler } from "./scheduler.ts";
import type { SimCluster } from "./cluster.ts";
import { SIM_BLOCK_BYTES } from "./cluster.ts";
import type { Oracle } from "./oracle.ts";

export interface HostVolume {
  primary: number;
  volume: string;
}

export interface HostsOptions {
  hosts: number;
  blocks: number;
  /** Share of writes sent with FUA. */
  fuaShare: number;
  gapMaxMs: number;
}

export class SimHosts {
  private running = false;
  private readonly busy = new Set<string>();
  issued = 0;
  acked = 0;
  failed = 0;
  /** Host loops still running: stop() waits for them to finish their write. */
  private active = 0;

  constructor(
    private readonly sched: Scheduler,
    private readonly cluster: SimCluster,
    private readonly oracle: Oracle,
    private readonly volumes: () => HostVolume[],
    private readonly o: HostsOptions,
  ) {}

  start(): void {
    if (this.running) return;
    this.running = true;
    for (let h = 0; h < this.o.hosts; h++) this.sched.at(this.sched.int(0, 5), () => void this.loop());
  }

  stop(): void {
    this.running = false;
  }

  /** True once every host has its last write answered. */
  get idle(): boolean {
    return this.active === 0;
  }

  private async loop(): Promise<void> {
    this.active++;
    let last = -1;
    try {
      while (this.running) {
        const vols = this.volumes();
        if (vols.length === 0) break;
        const others = vols.filter((v) => v.primary !== last);
        const v = this.sched.pick(others.length > 0 ? others : vols);
        last = v.primary;
        const blocks = this.sched.chance(0.3) && this.o.blocks > 1 ? 2 : 1;
        const first = this.sched.int(0, this.o.blocks - blocks);
        const keys = Array.from({ length: blocks }, (_, i) => `${v.volume}:${first + i}`);
        if (keys.some((k) => this.busy.has(k)) || !this.cluster.isUp(v.primary)) {
          await this.pause(this.sched.int(1, 10));
          continue;
        }
        for (const k of keys) this.busy.add(k);
        const fua = this.sched.chance(this.o.fuaShare);
        const w = this.oracle.issue(v.primary, v.volume, first, blocks, fua);
        this.issued++;
        try {
          await this.cluster.hostCall(v.primary, (core) => core.exports.get(v.volume)!.write(first * SIM_BLOCK_BYTES, w.data!, fua));
          this.oracle.acked(w);
          this.acked++;
        } catch {
          this.failed++;
          // A refused or reset host backs off before it tries again.
          await this.pause(this.sched.int(2, 20));
        } finally {
          for (const k of keys) this.busy.delete(k);
        }
        // At least the NBD round trip: simulated time moves between a host's writes.
        await this.pause(this.sched.int(1, 1 + this.o.gapMaxMs));
      }
    } finally {
      this.active--;
    }
  }

  private pause(ms: number): Promise<void> {
    return new Promise((r) => void this.sched.at(ms, r));
  }
}

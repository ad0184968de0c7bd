// Drives a chain plan over NBD: each chain writes position i, awaits its acknowledgement, then
// writes i+1; many chains run at once. Invariants: `issued` is raised before a write is sent and
// `acked` only after its reply, so acked <= issued <= acked + 1 for every chain at every moment.
import { encodeChainBlock, volumeTag, CHAIN_BLOCK_BYTES } from "./chain-block.ts";
import type { ChainPlan } from "./chain-plan.ts";

/** What the workload needs of a connection to one volume; test/support's NbdClient fits as is. */
export interface ChainWriter {
  write(offset: number, data: Buffer): Promise<void>;
  close(): Promise<void>;
}

export interface ChainRecord {
  chain: number;
  /** Positions 0..acked-1 were acknowledged. */
  acked: number;
  /** Positions 0..issued-1 were sent (issued = acked, or acked + 1 when a write failed or was cut off). */
  issued: number;
  reconnects: number;
  /** Why the chain stopped early, when it did. */
  error?: string;
}

export interface ChainWorkloadOptions {
  plan: ChainPlan;
  /** Opens a connection to a volume of the plan (its primary name). One connection per volume is shared by all chains. */
  connect: (volume: string) => Promise<ChainWriter>;
  /** Checked before every write: true stops every chain (no write is left in flight). */
  until?: () => boolean;
  /** Chains writing at once (default: all of them). */
  chainsInFlightMax?: number;
  /** After a failed connect or write, reconnect and retry the same position up to this many times (default 0: the chain stops). */
  reconnectAttemptsMax?: number;
  reconnectPauseMs?: number;
  /** Injected so tests can run without real time. */
  sleep?: (ms: number) => Promise<void>;
  onError?: (chain: number, pos: number, err: Error) => void;
}

export const CHAINS_IN_FLIGHT_DEFAULT_MAX = 4096;
export const RECONNECT_PAUSE_DEFAULT_MS = 100;

/** One shared connection per volume; a failed one is replaced once, however many chains saw it fail. */
class Connections {
  private readonly open = new Map<string, Promise<ChainWriter>>();
  constructor(private readonly connect: (volume: string) => Promise<ChainWriter>) {}

  get(volume: string): Promise<ChainWriter> {
    let p = this.open.get(volume);
    if (!p) {
      p = this.connect(volume);
      // A rejected connect must not stay cached: the next attempt connects again.
      p.catch(() => {
        if (this.open.get(volume) === p) this.open.delete(volume);
      });
      this.open.set(volume, p);
    }
    return p;
  }

  async drop(volume: string, failed: ChainWriter): Promise<void> {
    const p = this.open.get(volume);
    if (!p) return;
    const current = await p.catch(() => null);
    if (current !== failed) return;
    if (this.open.get(volume) === p) this.open.delete(volume);
    await failed.close().catch(() => undefined);
  }

  async closeAll(): Promise<void> {
    const all = [...this.open.values()];
    this.open.clear();
    await Promise.all(all.map((p) => p.then((w) => w.close()).catch(() => undefined)));
  }
}

function asError(e: unknown): Error {
  return e instanceof Error ? e : new Error(String(e));
}

export async function runChainWorkload(o: ChainWorkloadOptions): Promise<ChainRecord[]> {
  const { plan } = o;
  const until = o.until ?? (() => false);
  const retriesMax = o.reconnectAttemptsMax ?? 0;
  const pauseMs = o.reconnectPauseMs ?? RECONNECT_PAUSE_DEFAULT_MS;
  const sleep = o.sleep ?? ((ms: number) => new Promise<void>((r) => setTimeout(r, ms)));
  const conns = new Connections(o.connect);
  const tags = new Map(plan.volumes.map((v) => [v.name, volumeTag(v.name)]));
  const records: ChainRecord[] = plan.steps.map((_, chain) => ({ chain, acked: 0, issued: 0, reconnects: 0 }));

  const runChain = async (rec: ChainRecord): Promise<void> => {
    const steps = plan.steps[rec.chain];
    for (let pos = 0; pos < steps.length; pos++) {
      const { volume, blockIndex } = steps[pos];
      const block = encodeChainBlock({ run: plan.run, chain: rec.chain, pos, volumeTag: tags.get(volume)!, blockIndex });
      for (let attempt = 0; ; attempt++) {
        if (until()) return;
        let writer: ChainWriter | null = null;
        try {
          writer = await conns.get(volume);
          rec.issued = Math.max(rec.issued, pos + 1);
          await writer.write(blockIndex * CHAIN_BLOCK_BYTES, block);
          rec.acked = pos + 1;
          break;
        } catch (e) {
          const err = asError(e);
          o.onError?.(rec.chain, pos, err);
          if (writer) await conns.drop(volume, writer);
          if (attempt >= retriesMax) {
            rec.error = `pos ${pos} on ${volume} block ${blockIndex}: ${err.message}`;
            return;
          }
          rec.reconnects++;
          await sleep(pauseMs);
        }
      }
    }
  };

  // A fixed pool of workers takes chains in order, so at most chainsInFlightMax writes are outstanding.
  const workers = Math.max(1, Math.min(o.chainsInFlightMax ?? CHAINS_IN_FLIGHT_DEFAULT_MAX, records.length));
  let next = 0;
  try {
    await Promise.all(
      Array.from({ length: workers }, async () => {
        while (next < records.length) await runChain(records[next++]);
      }),
    );
  } finally {
    await conns.closeAll();
  }
  return records;
}

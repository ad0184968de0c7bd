// Seeded draws for the fuzzer's generators, over the project's one PRNG
// (appliance/drill/prng.ts), so an input is a pure function of its seed and a
// printed seed replays the same bytes. Pure: no I/O, no Math.random.
import { prng } from "../../appliance/drill/prng.ts";

export class Draw {
  private readonly next: () => number;
  constructor(readonly seed: number) {
    this.next = prng(seed);
  }

  /** 0 ..= max, uniformly. */
  int(max: number): number {
    return Math.floor(this.next() * (max + 1));
  }

  /** true with probability p. */
  chance(p: number): boolean {
    return this.next() < p;
  }

  pick<T>(items: readonly T[]): T {
    return items[this.int(items.length - 1)];
  }

  /** One of the entries, drawn in proportion to its weight. */
  weighted<T>(entries: readonly (readonly [number, T])[]): T {
    const total = entries.reduce((s, [w]) => s + w, 0);
    let at = this.next() * total;
    for (const [w, v] of entries) {
      if (at < w) return v;
      at -= w;
    }
    return entries[entries.length - 1][1];
  }

  u16(): number {
    return this.int(0xffff);
  }

  u32(): number {
    return this.int(0xffffffff) >>> 0;
  }

  u64(): bigint {
    return (BigInt(this.u32()) << 32n) | BigInt(this.u32());
  }

  bytes(n: number): Buffer {
    const b = Buffer.alloc(n);
    for (let i = 0; i < n; i++) b[i] = this.int(255);
    return b;
  }

  /**
   * A payload of n bytes that costs O(1) draws: a repeated drawn byte, or a
   * short drawn pattern repeated (drawing every byte of a MiB would make the
   * generator, not the server, the bottleneck).
   */
  fill(n: number): Buffer {
    if (n <= 64) return this.bytes(n);
    return Buffer.alloc(n, this.bytes(1 + this.int(15)));
  }
}

export function u16be(n: number): Buffer {
  const b = Buffer.alloc(2);
  b.writeUInt16BE(n & 0xffff, 0);
  return b;
}

export function u32be(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(n >>> 0, 0);
  return b;
}

export function u64be(n: bigint | number): Buffer {
  const b = Buffer.alloc(8);
  b.writeBigUInt64BE(BigInt.asUintN(64, BigInt(n)), 0);
  return b;
}

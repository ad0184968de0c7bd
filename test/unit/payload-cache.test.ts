// The payload cache (appliance/state/payload-cache.ts) that the primary's
// journal and the secondary's receiver share: a byte bound that drops the
// oldest first, take that reads each payload once, and clear.
import { describe, expect, it } from "vitest";
import { PayloadCache } from "../../appliance/state/payload-cache.ts";

const buf = (n: number, fill = 1) => Buffer.alloc(n, fill);

describe("payload cache", () => {
  it("payload cache: take returns what was added once, then nothing", () => {
    const c = new PayloadCache<number>(100);
    const a = buf(10, 7);
    c.add(1, a);
    expect(c.bytes).toBe(10);
    expect(c.take(1)).toBe(a);
    expect(c.bytes).toBe(0);
    expect(c.take(1)).toBeUndefined();
    expect(c.take(2)).toBeUndefined();
  });

  it("payload cache: over the bound the oldest go first (bound 100, adds of 40)", () => {
    const c = new PayloadCache<number>(100);
    for (let k = 1; k <= 3; k++) c.add(k, buf(40));
    // 120 bytes would exceed 100: key 1, the oldest, went.
    expect(c.bytes).toBe(80);
    expect(c.take(1)).toBeUndefined();
    c.add(4, buf(40));
    expect(c.bytes).toBe(80);
    expect(c.take(2)).toBeUndefined();
    expect(c.take(3)?.length).toBe(40);
    expect(c.take(4)?.length).toBe(40);
    expect(c.bytes).toBe(0);
  });

  it("payload cache: exactly at the bound nothing goes (bound 100, 60 + 40)", () => {
    const c = new PayloadCache<number>(100);
    c.add(1, buf(60));
    c.add(2, buf(40));
    expect(c.bytes).toBe(100);
    expect(c.take(1)?.length).toBe(60);
  });

  it("payload cache: a payload larger than the bound is not kept, and empties the cache (bound 100, 150)", () => {
    const c = new PayloadCache<bigint>(100);
    c.add(1n, buf(30));
    c.add(2n, buf(150));
    expect(c.bytes).toBe(0);
    expect(c.take(1n)).toBeUndefined();
    expect(c.take(2n)).toBeUndefined();
  });

  it("payload cache: a taken payload frees its bytes for newer ones (bound 100)", () => {
    const c = new PayloadCache<number>(100);
    c.add(1, buf(50));
    c.add(2, buf(50));
    c.take(1);
    c.add(3, buf(50));
    expect(c.bytes).toBe(100);
    expect(c.take(2)?.length).toBe(50);
    expect(c.take(3)?.length).toBe(50);
  });

  it("payload cache: a key added again counts once and becomes the newest", () => {
    const c = new PayloadCache<number>(100);
    c.add(1, buf(40, 1));
    c.add(2, buf(40, 2));
    c.add(1, buf(40, 3));
    expect(c.bytes).toBe(80);
    c.add(4, buf(40, 4));
    // Key 2 is now the oldest, so it is the one that goes.
    expect(c.take(2)).toBeUndefined();
    expect(c.take(1)?.[0]).toBe(3);
  });

  it("payload cache: clear forgets everything", () => {
    const c = new PayloadCache<number>(100);
    c.add(1, buf(10));
    c.add(2, buf(20));
    c.clear();
    expect(c.bytes).toBe(0);
    expect(c.take(1)).toBeUndefined();
    c.add(1, buf(5, 9));
    expect(c.take(1)?.[0]).toBe(9);
  });

  it("payload cache: empty payloads are held and taken like any other", () => {
    const c = new PayloadCache<number>(0);
    const empty = buf(0);
    c.add(1, empty);
    expect(c.bytes).toBe(0);
    expect(c.take(1)).toBe(empty);
  });
});

// The host clock (appliance/primary/clock-source.ts, docs/clock.md): one epoch
// per boot for every process of the host, fixed in a file; stamps of a later
// boot above those of an earlier one whatever the wall clock does. The clocks
// are injected (createHostClock), so nothing here changes the machine's
// clock; the child-process tests run the real module in real processes with
// the real boot id and CLOCK_MONOTONIC, and an injected wall-clock step.
import { spawn, spawnSync } from "node:child_process";
import { randomUUID } from "node:crypto";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import { afterAll, afterEach, describe, expect, it } from "vitest";
import {
  ClockFileError,
  EPOCH_FILE_BYTES,
  HW_RAISE_NS,
  clockReader,
  createHostClock,
  decodeEpoch,
  encodeEpoch,
  hostClock,
  monotonicNs,
  realtimeNs,
  type HostClock,
} from "../../appliance/primary/clock-source.ts";

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
const MODULE_URL = pathToFileURL(path.join(ROOT, "appliance/primary/clock-source.ts")).href;
const S = 1_000_000_000n;
/** Some wall clock in 2023, in ns, with a fractional second. */
const WALL0 = 1_700_000_000n * S + 300_000_000n;

/** A seeded PRNG (mulberry32), so a failure replays. */
let seed = 0x7d3a11;
function rnd(): number {
  seed = (seed + 0x6d2b79f5) | 0;
  let t = seed;
  t = Math.imul(t ^ (t >>> 15), t | 1);
  t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
  return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
}

const dirs: string[] = [];
const clocks: HostClock[] = [];
function tmpDir(): string {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), "tm-clock-test-"));
  dirs.push(d);
  return d;
}
afterEach(() => {
  for (const c of clocks.splice(0)) c.close();
});
afterAll(() => {
  for (const d of dirs) fs.rmSync(d, { recursive: true, force: true });
});

/** The machine a "process" runs on: a wall clock and a monotonic clock that the test moves. */
interface Machine {
  bootId: string;
  wall: bigint;
  mono: bigint;
}

function boot(wall: bigint, mono = 7n * S): Machine {
  return { bootId: randomUUID(), wall, mono };
}

/** Time passes: both clocks advance alike. */
function advance(m: Machine, ns: bigint): void {
  m.wall += ns;
  m.mono += ns;
}

/** A "process" of that machine: a host clock reading the machine's clocks. */
function proc(dir: string, m: Machine, warnings: string[] = []): HostClock {
  const c = createHostClock({ dir, bootId: () => m.bootId, wallNs: () => m.wall, monoNs: () => m.mono, syncIntervalMs: 0, warn: (w) => warnings.push(w) });
  clocks.push(c);
  return c;
}

/** What every process computed before: /proc/stat btime (whole seconds of wall - uptime) + CLOCK_MONOTONIC. */
function btimeEpoch(wall: bigint, mono: bigint): bigint {
  return ((wall - mono) / S) * S;
}

function clockFiles(dir: string): string[] {
  return fs.readdirSync(dir).sort();
}

interface ChildOut {
  epoch: bigint;
  reading: bigint;
  bootId: string;
  btimeStyle: bigint;
}

// A child process: imports the real module under tsx, waits for START_AT (so
// many children race for the creation), reads the clock once and prints it.
// MODE=default uses the exported clockReader() (TIDEMARK_CLOCK_DIR, real
// clocks); otherwise createHostClock() with the wall clock stepped by STEP_NS.
const CHILD = `
const m = await import(process.env.CLOCK_MODULE);
const step = BigInt(process.env.STEP_NS || "0");
const startAt = Number(process.env.START_AT || "0");
while (Date.now() < startAt) { /* line up with the other children */ }
const wallNs = () => BigInt(Date.now()) * 1000000n + step;
let epoch, reading;
try {
  if (process.env.MODE === "default") {
    const read = m.clockReader("monotonic");
    reading = read();
    epoch = m.hostClock().epochNs();
  } else {
    const c = m.createHostClock({ wallNs });
    epoch = c.epochNs();
    reading = c.monotonicNs();
    c.close();
  }
} catch (err) {
  console.log(JSON.stringify({ error: { code: err.code, message: err.message } }));
  process.exit(0);
}
const mono = process.hrtime.bigint();
const btimeStyle = ((wallNs() - mono) / 1000000000n) * 1000000000n;
console.log(JSON.stringify({ epoch: String(epoch), reading: String(reading), bootId: m.hostClock().bootId, btimeStyle: String(btimeStyle) }));
`;

function childEnv(dir: string, extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  return { ...process.env, TIDEMARK_CLOCK_DIR: dir, CLOCK_MODULE: MODULE_URL, ...extra };
}

const CHILD_ARGS = ["--import", "tsx", "--input-type=module", "-e", CHILD];

function parseChild(stdout: string, stderr: string): ChildOut {
  const line = stdout.trim().split("\n").pop() ?? "";
  let j: Record<string, string>;
  try {
    j = JSON.parse(line) as Record<string, string>;
  } catch {
    throw new Error(`child printed no JSON: stdout=${stdout} stderr=${stderr}`);
  }
  if (j.error) throw new Error(`child failed: ${JSON.stringify(j.error)}`);
  return { epoch: BigInt(j.epoch), reading: BigInt(j.reading), bootId: j.bootId, btimeStyle: BigInt(j.btimeStyle) };
}

function runChild(dir: string, extra: Record<string, string> = {}): ChildOut {
  const r = spawnSync(process.execPath, CHILD_ARGS, { cwd: ROOT, env: childEnv(dir, extra), encoding: "utf8", timeout: 60_000 });
  expect(r.status, r.stderr).toBe(0);
  return parseChild(r.stdout, r.stderr);
}

function runChildAsync(dir: string, extra: Record<string, string>): Promise<ChildOut> {
  return new Promise((resolve, reject) => {
    const p = spawn(process.execPath, CHILD_ARGS, { cwd: ROOT, env: childEnv(dir, extra) });
    let out = "";
    let err = "";
    p.stdout.on("data", (d: Buffer) => (out += d.toString()));
    p.stderr.on("data", (d: Buffer) => (err += d.toString()));
    p.on("error", reject);
    p.on("close", (code) => {
      if (code !== 0) return reject(new Error(`child exit ${code}: ${err}`));
      try {
        resolve(parseChild(out, err));
      } catch (e) {
        reject(e as Error);
      }
    });
  });
}

const realBootId = fs.existsSync("/proc/sys/kernel/random/boot_id");

describe("clock-source: one epoch per boot, whatever the wall clock does", () => {
  for (const step of [5n * S, -5n * S]) {
    it(`clock-source: two processes started either side of a wall-clock step of ${step / S} s get the identical epoch`, () => {
      const dir = tmpDir();
      const m = boot(WALL0, 600n * S);
      const a = proc(dir, m);
      const ea = a.epochNs();
      advance(m, 200_000_000n);
      m.wall += step; // NTP makestep, a manual set, a VM resume
      advance(m, 300_000_000n);
      const b = proc(dir, m);
      expect(b.epochNs()).toBe(ea);
      // Dependent writes alternating between them keep their order.
      let last = 0n;
      for (let i = 0; i < 100; i++) {
        advance(m, 1000n);
        const r = (i % 2 === 0 ? a : b).monotonicNs();
        expect(r).toBeGreaterThan(last);
        last = r;
      }
      expect(clockFiles(dir)).toEqual([`${m.bootId}.epoch`, `${m.bootId}.hw`]);
    });
  }

  it("clock-source: a wall-clock step after the epoch is fixed changes no reading", () => {
    const dir = tmpDir();
    const m = boot(WALL0, 50n * S);
    const a = proc(dir, m);
    const r0 = a.monotonicNs();
    m.wall -= 3600n * S;
    m.mono += 10n;
    expect(a.monotonicNs()).toBe(r0 + 10n);
    m.wall += 7200n * S;
    m.mono += 10n;
    expect(a.monotonicNs()).toBe(r0 + 20n);
    expect(proc(dir, m).monotonicNs()).toBe(r0 + 20n);
  });

  it("clock-source: the old btime formula gives the two processes epochs a whole step apart, and inverts dependent writes", () => {
    for (const step of [5n * S, -5n * S]) {
      const m = boot(WALL0, 600n * S);
      const oldA = btimeEpoch(m.wall, m.mono); // process A reads btime at its start
      advance(m, 200_000_000n);
      m.wall += step;
      advance(m, 300_000_000n);
      const oldB = btimeEpoch(m.wall, m.mono); // process B, after the step
      expect(oldB - oldA).toBe(step);
      // w1 acknowledged by the process with the later epoch, then w2 on the other one: w2 < w1.
      const [later, earlier] = oldB > oldA ? [oldB, oldA] : [oldA, oldB];
      const w1 = later + m.mono;
      advance(m, 1_000_000n);
      const w2 = earlier + m.mono;
      expect(w2).toBeLessThan(w1); // the takeover would keep w2 and drop w1
    }
    // Without any step: wall - uptime just below a whole second, and a
    // slew of 2 ms (NTP) between two process starts: btime flips by 1 s.
    const m = boot(1_700_000_000n * S + 999_999_000n, 0n);
    const a = btimeEpoch(m.wall, m.mono);
    advance(m, S);
    m.wall += 2_000_000n;
    expect(btimeEpoch(m.wall, m.mono) - a).toBe(S);
  });

  it.skipIf(!realBootId)("clock-source: real child processes either side of a ±5 s wall step (injected), and the default wiring, read one epoch", () => {
    const dir = tmpDir();
    const first = runChild(dir, { STEP_NS: "0" });
    const ahead = runChild(dir, { STEP_NS: String(5n * S) });
    const behind = runChild(dir, { STEP_NS: String(-5n * S) });
    const dflt = runChild(dir, { MODE: "default" });
    for (const c of [ahead, behind, dflt]) {
      expect(c.epoch).toBe(first.epoch);
      expect(c.bootId).toBe(first.bootId);
    }
    // They ran one after the other: their readings are in that order.
    expect(first.reading).toBeLessThan(ahead.reading);
    expect(ahead.reading).toBeLessThan(behind.reading);
    expect(behind.reading).toBeLessThan(dflt.reading);
    // This process, with the same folder, reads the same clock too.
    const here = proc(dir, { bootId: first.bootId, wall: 0n, mono: 0n });
    const local = createHostClock({ dir, syncIntervalMs: 0 });
    clocks.push(local);
    expect(here.epochNs()).toBe(first.epoch);
    expect(local.monotonicNs()).toBeGreaterThan(dflt.reading);
    // The btime-style epochs those children would have used differ by the step.
    expect(ahead.btimeStyle - behind.btimeStyle).toBeGreaterThanOrEqual(9n * S);
    expect(fs.readdirSync(dir).filter((f) => f.endsWith(".epoch"))).toEqual([`${first.bootId}.epoch`]);
  });
});

describe("clock-source: concurrent creation yields one epoch", () => {
  it("clock-source: a creator that loses the link() race reads the winner's epoch", () => {
    const dir = tmpDir();
    const m = boot(WALL0, 100n * S);
    let winner: HostClock | undefined;
    let calls = 0;
    // A reads its wall clock while choosing, and right then B (whose wall is
    // 5 s ahead) creates the file first. B's high-water file is put aside so
    // that A does not just restore B's epoch from it: A's own choice (5 s
    // lower) meets B's file at link().
    const loser = createHostClock({
      dir,
      bootId: m.bootId,
      monoNs: () => m.mono,
      syncIntervalMs: 0,
      wallNs: () => {
        if (calls++ === 0) {
          winner = proc(dir, { ...m, wall: m.wall + 5n * S });
          winner.epochNs();
          fs.rmSync(path.join(dir, `${m.bootId}.hw`));
        }
        return m.wall;
      },
    });
    clocks.push(loser);
    const e = loser.epochNs();
    expect(winner).toBeDefined();
    expect(e).toBe(winner!.epochNs());
    // The winner's choice: its wall clock (5 s ahead) is the bound.
    expect(e + m.mono).toBe(m.wall + 5n * S + 1n);
    expect(clockFiles(dir)).toEqual([`${m.bootId}.epoch`, `${m.bootId}.hw`]);
  });

  it("clock-source: 30 processes with wall clocks scattered over ±1 h read the first one's epoch", () => {
    const dir = tmpDir();
    const m = boot(WALL0, 100n * S);
    const first = proc(dir, m).epochNs();
    for (let i = 0; i < 30; i++) {
      const skew = BigInt(Math.floor((rnd() * 2 - 1) * 3600)) * S;
      expect(proc(dir, { ...m, wall: m.wall + skew }).epochNs()).toBe(first);
    }
  });

  it.skipIf(!realBootId)("clock-source: 8 real child processes racing to create the file (wall steps ±5 s) get one epoch", async () => {
    const dir = tmpDir();
    const startAt = String(Date.now() + 4000);
    const steps = [0n, 5n, -5n, 3n, -3n, 1n, -1n, 0n].map((x) => x * S);
    const outs = await Promise.all(steps.map((s, i) => runChildAsync(dir, { STEP_NS: String(s), START_AT: startAt, MODE: i === 7 ? "default" : "" })));
    const epochs = new Set(outs.map((o) => o.epoch));
    expect(epochs.size).toBe(1);
    const files = clockFiles(dir);
    expect(files).toEqual([`${outs[0].bootId}.epoch`, `${outs[0].bootId}.hw`]); // no temporary file left behind
  });
});

describe("clock-source: a later boot reads above every reading of an earlier one", () => {
  /** Readings of two processes over `seconds` of a boot, with random wall-clock steps of up to ±10 s unless `steady`; returns the highest. */
  function run(dir: string, m: Machine, seconds: number, steady = false): bigint {
    const ps = [proc(dir, m), proc(dir, m)];
    let hi = 0n;
    for (let t = 0; t < seconds; t++) {
      advance(m, BigInt(Math.floor(rnd() * 1e9)));
      if (!steady && rnd() < 0.01) m.wall += BigInt(Math.floor((rnd() * 2 - 1) * 10)) * S; // steps during the boot
      const r = ps[t % 2].monotonicNs();
      hi = r > hi ? r : hi;
    }
    return hi;
  }

  for (const [what, across] of [
    ["the wall clock moving on by the downtime", 30n * S],
    ["the wall clock stepped back a day across the reboot", -86_400n * S],
    ["the wall clock stepped back 10 s", -10n * S],
  ] as const) {
    it(`clock-source: reboot with ${what}`, () => {
      const dir = tmpDir();
      const a = boot(WALL0, 12n * S);
      const hiA = run(dir, a, 2000);
      // Reboot: a new boot id, the monotonic clock restarts near 0.
      const b = boot(a.wall + across, 3n * S);
      const pb = proc(dir, b);
      const first = pb.monotonicNs();
      expect(first).toBeGreaterThan(hiA);
      // The earlier boot's files are folded into the new epoch file and removed.
      expect(clockFiles(dir)).toEqual([`${b.bootId}.epoch`, `${b.bootId}.hw`]);
      // And again one boot later.
      const hiB = run(dir, b, 500);
      const c = boot(b.wall + across, 2n * S);
      expect(proc(dir, c).monotonicNs()).toBeGreaterThan(hiB);
    });
  }

  it("clock-source: a reading just below the next raise of the high-water record is still covered", () => {
    const dir = tmpDir();
    const a = boot(WALL0, 12n * S);
    const p = proc(dir, a);
    p.monotonicNs(); // raises the record to this reading
    advance(a, HW_RAISE_NS - 1n);
    const hi = p.monotonicNs(); // not recorded: below record + HW_RAISE_NS
    const b = boot(a.wall - 86_400n * S, 1n * S);
    expect(proc(dir, b).monotonicNs()).toBeGreaterThan(hi);
  });

  it("clock-source: the high-water record lost to a power cut: the lead kept in the epoch file still covers the earlier boot", () => {
    const dir = tmpDir();
    const a = boot(WALL0, 12n * S);
    run(dir, a, 100);
    const b = boot(a.wall - 3600n * S, 2n * S); // stepped back: b's epoch leads the wall clock by ~1 h
    const hiB = run(dir, b, 300, true); // the lead bound assumes no step after b's epoch was fixed
    fs.rmSync(path.join(dir, `${b.bootId}.hw`)); // the power cut took it
    const c = boot(b.wall + 5n * S, 2n * S); // the wall clock runs true across this reboot
    expect(proc(dir, c).monotonicNs()).toBeGreaterThan(hiB);
  });

  it("clock-source: this boot's epoch file removed while processes run (a /tmp cleaner): the epoch is restored from the high-water record", () => {
    const dir = tmpDir();
    const m = boot(WALL0, 12n * S);
    const a = proc(dir, m);
    const e = a.epochNs();
    a.monotonicNs();
    fs.rmSync(path.join(dir, `${m.bootId}.epoch`));
    advance(m, 5n * S);
    m.wall += 60n * S;
    const b = proc(dir, m);
    expect(b.epochNs()).toBe(e);
    expect(fs.existsSync(path.join(dir, `${m.bootId}.epoch`))).toBe(true);
  });
});

describe("clock-source: bad files are refused, naming the file", () => {
  function refusal(fn: () => unknown): ClockFileError {
    try {
      fn();
    } catch (err) {
      expect(err).toBeInstanceOf(ClockFileError);
      const e = err as ClockFileError;
      expect(e.code).toBe("TM_CLOCK");
      expect(e.message).toContain(e.file);
      return e;
    }
    throw new Error("accepted");
  }

  it("clock-source: a corrupt epoch file (garbage, truncated, one bit flipped, another boot's content)", () => {
    const dir = tmpDir();
    const m = boot(WALL0);
    const file = path.join(dir, `${m.bootId}.epoch`);
    fs.writeFileSync(file, Buffer.alloc(EPOCH_FILE_BYTES, 0x5a));
    let e = refusal(() => proc(dir, m).epochNs());
    expect(e.file).toBe(file);
    expect(e.message).toMatch(/bad magic/);

    fs.writeFileSync(file, "TMEPOCH\0xx");
    e = refusal(() => proc(dir, m).monotonicNs());
    expect(e.message).toMatch(/10 bytes, expected 64/);

    const good = encodeEpoch({ bootId: m.bootId, epochNs: 5n * S, createdWallNs: WALL0, createdMonoNs: S, floorNs: WALL0 });
    expect(decodeEpoch(good, m.bootId, file).epochNs).toBe(5n * S);
    const flipped = Buffer.from(good);
    flipped[35] ^= 0x01;
    fs.writeFileSync(file, flipped);
    e = refusal(() => proc(dir, m).reader("monotonic"));
    expect(e.message).toMatch(/CRC32C mismatch/);

    fs.writeFileSync(file, encodeEpoch({ bootId: randomUUID(), epochNs: 1n, createdWallNs: 1n, createdMonoNs: 1n, floorNs: 1n }));
    e = refusal(() => proc(dir, m).epochNs());
    expect(e.message).toMatch(/holds boot id .* but its name says/);
  });

  it("clock-source: an unreadable epoch file, and a clock folder that is not a folder", () => {
    const dir = tmpDir();
    const m = boot(WALL0);
    const file = path.join(dir, `${m.bootId}.epoch`);
    fs.mkdirSync(file); // read() fails with EISDIR, even as root
    let e = refusal(() => proc(dir, m).epochNs());
    expect(e.file).toBe(file);
    expect(e.message).toMatch(/cannot read it: .*EISDIR/);

    const notADir = path.join(dir, "plain-file");
    fs.writeFileSync(notADir, "x");
    e = refusal(() => proc(notADir, m).epochNs());
    expect(e.file).toBe(notADir);
  });

  it("clock-source: a corrupt epoch file of an earlier boot is refused; a torn high-water file of an earlier boot only warns", () => {
    const dir = tmpDir();
    const old = boot(WALL0);
    const oldEpoch = path.join(dir, `${old.bootId}.epoch`);
    fs.writeFileSync(oldEpoch, "not an epoch");
    const m = boot(WALL0 + 60n * S);
    const e = refusal(() => proc(dir, m).epochNs());
    expect(e.file).toBe(oldEpoch);

    fs.rmSync(oldEpoch);
    fs.writeFileSync(path.join(dir, `${old.bootId}.hw`), Buffer.alloc(48, 0));
    const warnings: string[] = [];
    expect(proc(dir, m, warnings).monotonicNs()).toBeGreaterThan(m.wall);
    expect(warnings.join("\n")).toContain(path.join(dir, `${old.bootId}.hw`));
  });

  it("clock-source: this boot's high-water file corrupt is refused", () => {
    const dir = tmpDir();
    const m = boot(WALL0);
    proc(dir, m).monotonicNs();
    const hw = path.join(dir, `${m.bootId}.hw`);
    fs.writeFileSync(hw, Buffer.alloc(48, 0x33));
    const e = refusal(() => proc(dir, m).epochNs());
    expect(e.file).toBe(hw);
  });

  it.skipIf(!realBootId)("clock-source: the default wiring (a child process) reports a corrupt epoch file with its name and TM_CLOCK", () => {
    const dir = tmpDir();
    const bootId = fs.readFileSync("/proc/sys/kernel/random/boot_id", "utf8").trim();
    const file = path.join(dir, `${bootId}.epoch`);
    fs.writeFileSync(file, "garbage");
    const r = spawnSync(process.execPath, CHILD_ARGS, { cwd: ROOT, env: childEnv(dir, { MODE: "default" }), encoding: "utf8", timeout: 60_000 });
    const out = JSON.parse(r.stdout.trim().split("\n").pop() ?? "{}") as { error?: { code: string; message: string } };
    expect(out.error?.code).toBe("TM_CLOCK");
    expect(out.error?.message).toContain(file);
  });
});

describe("clock-source: the exported API and the realtime clock", () => {
  it("clock-source: clockReader/monotonicNs/realtimeNs keep working, on TIDEMARK_CLOCK_DIR", () => {
    const dir = tmpDir();
    const before = process.env.TIDEMARK_CLOCK_DIR;
    process.env.TIDEMARK_CLOCK_DIR = dir;
    try {
      const read = clockReader("monotonic");
      const r1 = read();
      const r2 = monotonicNs();
      expect(r2).toBeGreaterThan(r1);
      expect(hostClock().dir).toBe(dir);
      expect(r1 - hostClock().epochNs()).toBeLessThanOrEqual(process.hrtime.bigint());
      if (realBootId) expect(fs.existsSync(hostClock().epochFile)).toBe(true);
      const w = BigInt(Date.now()) * 1_000_000n;
      const rt = clockReader("realtime")();
      expect(rt >= w && rt - w < 1_000_000_000n).toBe(true);
      expect(realtimeNs() >= rt).toBe(true);
    } finally {
      if (before === undefined) delete process.env.TIDEMARK_CLOCK_DIR;
      else process.env.TIDEMARK_CLOCK_DIR = before;
    }
  });

  it("clock-source: realtime follows the wall clock at every reading (no origin frozen at process start)", () => {
    const dir = tmpDir();
    const m = boot(WALL0);
    const a = proc(dir, m);
    const read = a.reader("realtime");
    expect(read()).toBe(WALL0);
    m.wall += 5n * S; // a process started before the step reads as one started after it
    expect(read()).toBe(WALL0 + 5n * S);
    expect(proc(dir, m).reader("realtime")()).toBe(read());
    expect(fs.readdirSync(dir)).toEqual([]); // the realtime clock needs no file
  });
});

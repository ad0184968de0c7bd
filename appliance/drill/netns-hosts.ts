// Hosts on one machine, for `tidemark drill --hosts` and the tests: one network
// namespace per "host", each with its own address on a veth pair to a bridge
// that lives in a namespace of the run's own, and a veth from the root
// namespace (where the drill or the test, its CLI calls and its NBD clients
// run) into the same bridge. Processes run inside a
// host with `ip netns exec`, optionally with a real-time clock offset of that
// host's own (libfaketime). Link faults: a host's interface down/up, and a
// partition of one set of hosts from another.
//
//   root ns: test process, NBD clients ── <root veth> 198.18.0.(B+14)/28
//                                               │
//   bridge ns "<tag>-br":  br0 ── rootp, h1, h2, ...   (no address; only switches)
//                                       │    │
//   host ns "<tag>-ss1": eth0 198.18.0.(B+1)/28 ... one per host
//
// Addresses. 198.18.0.0/24 (RFC 2544's benchmarking range, never a real
// network here; create() refuses to run if the root namespace already routes
// any of it other than through its own veths) is cut into 16 slots of /28.
// Each run takes a free slot under a lock (flock on LOCK_FILE): its hosts get
// .B+1 to .B+13, the root veth .B+14. Two vitest files running at once thus
// get different /28s and never share a route in the root namespace. Names:
// namespaces "tmh<pid>x<hex4>-<host>", the root veth "tmh<pid>x<hex4>"
// (IFNAMSIZ: at most 15 characters), all unique per run; interface names
// inside a namespace (br0, eth0, h<n>) need no uniqueness.
//
// Removal. destroy() kills every process started in a host (and any other
// `ip netns pids` finds there), then deletes the namespaces; deleting the
// bridge namespace deletes the bridge ends of every veth and with them their
// peers, the root veth included. It runs on success and on failure (the test's
// afterEach/afterAll), on process exit, and on SIGINT/SIGTERM (a handler that
// cleans up synchronously and re-raises the signal). A run killed with -9 can
// clean nothing: the next create() removes namespaces whose pid is gone.
//
// Link faults, and why these mechanisms. This machine's kernel has neither
// sch_netem nor tc classifier/action modules ("Specified qdisc kind is
// unknown", "TC classifier not found"), and neither nft nor iptables is
// installed, so no packet filter is used:
// - linkDown(host)/linkUp(host): `ip link set eth0 down` inside the host's
//   namespace, a pulled cable. Peers' packets to it vanish silently (their ARP
//   entries stay; the bridge has no live port for it): a connect() from
//   elsewhere times out, it is not refused.
// - partition(a, b): every host of `a` gets a permanent neighbour entry for
//   every address of `b` pointing at a MAC nobody owns (UNOWNED_MAC), and vice
//   versa. Frames between the two sides go to that MAC: the bridge floods
//   them, no interface accepts them, so TCP between the sides sees silence
//   (a hung network), existing connections included, while each side still
//   reaches its own members, the root namespace and other hosts. Healing
//   deletes the entries a partition alone wanted; ARP resolves again. `ip neigh` is in every iproute2.
//
// Clocks (verified on this machine, Node 20.20, libfaketime 0.9.10; the
// numbers are from measureClock(), which ping-pongs Date.now() and
// process.hrtime with a process in the host 400 times):
// - The `faketime` program forks and waits for its child, so a signal sent to
//   the pid we spawned would hit the wrapper, not node. We preload the
//   library ourselves instead (LD_PRELOAD + FAKETIME="+0.004"), through `env`
//   after `ip netns exec`, both of which exec in place: the pid we hold is
//   node's, and `ip` itself runs unfaked.
// - FAKETIME="+S.fff" (fractional seconds with '.', any locale here) moves
//   Date.now(): +0.004 measured +3.98 ms, -0.0025 measured -2.49 ms, +12
//   measured +11999.96 ms. Beware: "+4ms" means four MINUTES (m is minutes).
// - FAKETIME_DONT_FAKE_MONOTONIC=1 leaves CLOCK_MONOTONIC alone:
//   process.hrtime moved by 0.00 ms. Without it this libfaketime replaces
//   CLOCK_MONOTONIC by the faked wall clock (process.hrtime jumped by
//   ~1.8e12 ms, i.e. to the epoch time), which would break libuv's timers'
//   reference, clock "monotonic" and every timeout; so it is always set.
// - libfaketime.so.1 adds ~25 ns per Date.now() (95 vs 70 ns);
//   libfaketimeMT.so.1 costs ~2.6 us per call, so the plain one is used, as
//   `faketime` does by default. The offset is fixed for the life of a
//   process: to step a host's clock, restart its processes with a new
//   offset. (FAKETIME_TIMESTAMP_FILE with FAKETIME_CACHE_DURATION=1 does
//   change it at run time, within a second, but re-reads the file from
//   whichever thread calls the clock; not used until a test needs it.)
import { spawn, execFileSync, spawnSync, type ChildProcess, type SpawnOptions } from "node:child_process";
import { closeSync, existsSync, openSync, readdirSync, readFileSync } from "node:fs";
import { randomBytes } from "node:crypto";
import os from "node:os";
import path from "node:path";
import fsExt from "fs-ext";

export const SUBNET = "198.18.0";
const SLOT_SIZE = 16;
const SLOTS = 256 / SLOT_SIZE;
/** Hosts per run: .1 to .13 of the slot; .14 is the root namespace's end. */
export const MAX_HOSTS = SLOT_SIZE - 3;
const ROOT_HOST = SLOT_SIZE - 2;
const PREFIX_LEN = 28;
const LOCK_FILE = path.join(os.tmpdir(), "tidemark-netns.lock");
/** A locally administered MAC no interface has: frames sent to it are flooded and dropped. */
export const UNOWNED_MAC = "02:00:5e:00:de:ad";
const NAME_RE = /^tmh(\d+)x[0-9a-f]{4}-/;

export interface HostOptions {
  /** The host's real-time clock offset in ms (libfaketime); absent: the machine's clock, no preload. */
  clockOffsetMs?: number;
}

export interface NetnsHost {
  name: string;
  /** Network namespace: `ip netns exec <netns> ...`. */
  netns: string;
  address: string;
  /** Its end in the bridge namespace (h<n>); its own end is eth0. */
  bridgePort: string;
  clockOffsetMs: number | undefined;
}

function ip(args: string[]): string {
  return execFileSync("ip", args, { encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] });
}

function quiet(f: () => unknown): void {
  try {
    f();
  } catch {
    /* best effort: already gone */
  }
}

function pidAlive(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    // A zombie has left its namespaces already.
    return stat.slice(stat.lastIndexOf(")") + 2, stat.lastIndexOf(")") + 3) !== "Z";
  } catch {
    return false;
  }
}

function netnsPids(netns: string): number[] {
  try {
    return ip(["netns", "pids", netns])
      .split(/\s+/)
      .filter(Boolean)
      .map(Number);
  } catch {
    return [];
  }
}

function sleepSync(ms: number): void {
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
}

/** Kills every process of the namespaces with SIGKILL and waits (up to 3 s) until they are gone. */
function killAllIn(namespaces: string[], extraPids: number[] = []): void {
  const pids = new Set<number>(extraPids);
  for (const ns of namespaces) for (const p of netnsPids(ns)) pids.add(p);
  for (const p of pids) quiet(() => process.kill(p, "SIGKILL"));
  const until = Date.now() + 3000;
  while ([...pids].some(pidAlive) && Date.now() < until) sleepSync(20);
}

/** The libfaketime library to preload, or null when the faketime package is missing. */
export function libfaketimePath(): string | null {
  const dirs = ["/usr/lib/faketime", "/usr/local/lib/faketime"];
  try {
    for (const d of readdirSync("/usr/lib")) if (d.endsWith("-linux-gnu")) dirs.unshift(path.join("/usr/lib", d, "faketime"));
  } catch {
    /* no /usr/lib */
  }
  for (const d of dirs) {
    const f = path.join(d, "libfaketime.so.1");
    if (existsSync(f)) return f;
  }
  return null;
}

/** FAKETIME's relative form: seconds with a '.' and a sign ("+0.004", "-1.5"); never "ms" (that is minutes and seconds to it). */
export function faketimeSpec(offsetMs: number): string {
  const s = (Math.abs(offsetMs) / 1000).toFixed(6).replace(/0+$/, "").replace(/\.$/, "");
  return `${offsetMs < 0 ? "-" : "+"}${s}`;
}

/** The variables that give a process a wall clock `offsetMs` off the machine's and the machine's monotonic clock. */
export function faketimeEnv(offsetMs: number, lib = libfaketimePath()): Record<string, string> {
  if (!lib) throw new Error("libfaketime is not installed (apt-get install faketime)");
  return { LD_PRELOAD: lib, FAKETIME: faketimeSpec(offsetMs), FAKETIME_DONT_FAKE_MONOTONIC: "1" };
}

/**
 * Why namespaced hosts cannot run here, or null when they can: root, `ip`,
 * `ip netns add`, veth and bridge links (a probe namespace is made and
 * removed), and no route of the root namespace into 198.18.0.0/24. With
 * `clocks`, also libfaketime.
 */
export function netnsUnavailable(o: { clocks?: boolean } = {}): string | null {
  if (process.platform !== "linux") return `network namespaces need Linux (this is ${process.platform})`;
  if (process.getuid?.() !== 0) return "network namespaces need root (ip netns add, veth, bridge)";
  if (spawnSync("ip", ["-V"], { stdio: "ignore" }).status !== 0) return "`ip` (iproute2) is not installed";
  if (o.clocks && !libfaketimePath()) return "libfaketime is not installed (apt-get install faketime)";
  const probe = `tmh${process.pid}x${randomBytes(2).toString("hex")}-probe`;
  try {
    ip(["netns", "add", probe]);
    ip(["-n", probe, "link", "add", "br0", "type", "bridge"]);
    ip(["-n", probe, "link", "add", "va", "type", "veth", "peer", "name", "vb"]);
    ip(["-n", probe, "link", "set", "va", "master", "br0"]);
  } catch (err) {
    const why = ((err as { stderr?: string }).stderr ?? String(err)).trim().split("\n")[0];
    return `cannot make a network namespace with a bridge and a veth pair: ${why}`;
  } finally {
    quiet(() => ip(["netns", "del", probe]));
  }
  const foreign = foreignRoutes();
  if (foreign.length > 0) return `the root namespace already routes into ${SUBNET}.0/24 (${foreign[0]}); it is reserved for these tests`;
  return null;
}

/** Routes of the root namespace into 198.18.0.0/24 that are not on one of our root veths. */
function foreignRoutes(): string[] {
  return ip(["-4", "-o", "route", "show", "table", "all"])
    .split("\n")
    .filter((l) => l.startsWith(`${SUBNET}.`) || l.includes(` ${SUBNET}.`))
    .filter((l) => !/ dev tmh\d+x[0-9a-f]{4}\b/.test(l) && !l.startsWith("local ") && !l.startsWith("broadcast "));
}

/** Namespaces of runs whose process is gone (killed -9): their processes killed, the namespaces deleted. */
function sweepStale(): void {
  let names: string[];
  try {
    names = ip(["netns", "list"])
      .split("\n")
      .map((l) => l.split(" ")[0])
      .filter(Boolean);
  } catch {
    return;
  }
  const stale = names.filter((n) => {
    const m = NAME_RE.exec(n);
    return m !== null && Number(m[1]) !== process.pid && !pidAlive(Number(m[1]));
  });
  if (stale.length === 0) return;
  killAllIn(stale);
  for (const n of stale) quiet(() => ip(["netns", "del", n]));
}

/** Every live instance, for the exit and signal handlers. */
const live = new Set<NetnsHosts>();
let handlersInstalled = false;

function installHandlers(): void {
  if (handlersInstalled) return;
  handlersInstalled = true;
  process.on("exit", () => {
    for (const h of live) h.destroySync();
  });
  for (const sig of ["SIGINT", "SIGTERM"] as const) {
    const onSignal = () => {
      for (const h of live) h.destroySync();
      // Then die of the signal as if we had never caught it.
      process.removeListener(sig, onSignal);
      process.kill(process.pid, sig);
    };
    process.on(sig, onSignal);
  }
}

export class NetnsHosts {
  readonly hosts = new Map<string, NetnsHost>();
  /** The root namespace's address on the bridge (the test's, and its NBD clients'). */
  readonly rootAddress: string;
  readonly rootIf: string;
  readonly bridgeNs: string;
  private readonly procs = new Set<ChildProcess>();
  private readonly cut = new Set<string>();
  /** "<host> <address>" neighbour entries in force, with how many partitions want each. */
  private readonly poisoned = new Map<string, number>();
  private destroyed = false;

  private constructor(
    readonly tag: string,
    readonly slot: number,
  ) {
    this.rootIf = tag;
    this.bridgeNs = `${tag}-br`;
    this.rootAddress = `${SUBNET}.${slot * SLOT_SIZE + ROOT_HOST}`;
  }

  /**
   * Makes the bridge, one namespace per host (named by `hosts`: a list, or a
   * map of name to options) and the root veth. On any failure it removes what
   * it made and throws.
   */
  static create(hosts: string[] | Record<string, HostOptions>): NetnsHosts {
    const specs: [string, HostOptions][] = Array.isArray(hosts) ? hosts.map((h) => [h, {}]) : Object.entries(hosts);
    if (specs.length === 0 || specs.length > MAX_HOSTS) throw new Error(`between 1 and ${MAX_HOSTS} hosts, not ${specs.length}`);
    for (const [name] of specs) if (!/^[a-z0-9]{1,16}$/.test(name)) throw new Error(`host name '${name}': 1-16 lower-case letters or digits`);
    const lib = specs.some(([, o]) => o.clockOffsetMs !== undefined) ? libfaketimePath() : null;
    if (specs.some(([, o]) => o.clockOffsetMs !== undefined) && !lib) throw new Error("a clock offset needs libfaketime (apt-get install faketime)");
    installHandlers();
    const tag = `tmh${process.pid}x${randomBytes(2).toString("hex")}`;
    const lockFd = openSync(LOCK_FILE, "a", 0o644);
    let made: NetnsHosts | undefined;
    try {
      fsExt.flockSync(lockFd, "ex");
      sweepStale();
      const foreign = foreignRoutes();
      if (foreign.length > 0) throw new Error(`the root namespace already routes into ${SUBNET}.0/24 (${foreign[0]})`);
      const used = new Set(
        ip(["-4", "-o", "addr", "show"])
          .split("\n")
          .map((l) => new RegExp(`inet ${SUBNET.replaceAll(".", "\\.")}\\.(\\d+)/`).exec(l))
          .filter((m) => m !== null)
          .map((m) => Math.floor(Number(m[1]) / SLOT_SIZE)),
      );
      const slot = [...Array(SLOTS).keys()].find((s) => !used.has(s));
      if (slot === undefined) throw new Error(`every /${PREFIX_LEN} of ${SUBNET}.0/24 is taken by other runs`);
      made = new NetnsHosts(tag, slot);
      live.add(made);
      made.build(specs);
      return made;
    } catch (err) {
      if (made) made.destroySync();
      throw err;
    } finally {
      closeSync(lockFd); // drops the lock
    }
  }

  private build(specs: [string, HostOptions][]): void {
    const br = this.bridgeNs;
    ip(["netns", "add", br]);
    ip(["-n", br, "link", "set", "lo", "up"]);
    ip(["-n", br, "link", "add", "br0", "type", "bridge"]);
    ip(["-n", br, "link", "set", "br0", "up"]);
    specs.forEach(([name, o], i) => {
      const netns = `${this.tag}-${name}`;
      const port = `h${i + 1}`;
      const address = `${SUBNET}.${this.slot * SLOT_SIZE + i + 1}`;
      ip(["netns", "add", netns]);
      ip(["-n", netns, "link", "set", "lo", "up"]);
      // Made in the host's namespace, one end moved to the bridge's: no name in the root namespace.
      ip(["-n", netns, "link", "add", "eth0", "type", "veth", "peer", "name", port, "netns", br]);
      ip(["-n", br, "link", "set", port, "master", "br0"]);
      ip(["-n", br, "link", "set", port, "up"]);
      ip(["-n", netns, "addr", "add", `${address}/${PREFIX_LEN}`, "dev", "eth0"]);
      ip(["-n", netns, "link", "set", "eth0", "up"]);
      this.hosts.set(name, { name, netns, address, bridgePort: port, clockOffsetMs: o.clockOffsetMs });
    });
    ip(["link", "add", this.rootIf, "type", "veth", "peer", "name", "rootp", "netns", br]);
    ip(["-n", br, "link", "set", "rootp", "master", "br0"]);
    ip(["-n", br, "link", "set", "rootp", "up"]);
    ip(["addr", "add", `${this.rootAddress}/${PREFIX_LEN}`, "dev", this.rootIf]);
    ip(["link", "set", this.rootIf, "up"]);
  }

  host(name: string): NetnsHost {
    const h = this.hosts.get(name);
    if (!h) throw new Error(`no host '${name}' (hosts: ${[...this.hosts.keys()].join(", ")})`);
    return h;
  }

  address(name: string): string {
    return this.host(name).address;
  }

  /** argv that runs `argv` inside the host, with its clock offset when it has one. */
  command(name: string, argv: string[]): string[] {
    const h = this.host(name);
    const clock = h.clockOffsetMs !== undefined ? Object.entries(faketimeEnv(h.clockOffsetMs)).map(([k, v]) => `${k}=${v}`) : [];
    return ["ip", "netns", "exec", h.netns, "env", ...clock, ...argv];
  }

  /** A process inside the host; its pid is the command's own (`ip netns exec` and `env` exec in place). Killed by destroy(). */
  spawn(name: string, argv: string[], opts: SpawnOptions = {}): ChildProcess {
    if (this.destroyed) throw new Error("the hosts are destroyed");
    const [cmd, ...args] = this.command(name, argv);
    const p = spawn(cmd, args, opts);
    this.procs.add(p);
    p.once("exit", () => this.procs.delete(p));
    return p;
  }

  /** Runs a command inside the host to its end: exit code and output. */
  run(name: string, argv: string[], timeoutMs = 30_000): Promise<{ code: number; stdout: string; stderr: string }> {
    return new Promise((resolve) => {
      const p = this.spawn(name, argv, { stdio: ["ignore", "pipe", "pipe"] });
      let stdout = "";
      let stderr = "";
      p.stdout!.on("data", (d) => (stdout += d));
      p.stderr!.on("data", (d) => (stderr += d));
      const t = setTimeout(() => p.kill("SIGKILL"), timeoutMs);
      p.once("exit", (code, sig) => {
        clearTimeout(t);
        resolve({ code: code ?? (sig ? 128 : 1), stdout, stderr });
      });
    });
  }

  /**
   * The host's clocks as a process inside it sees them, against this
   * process's, from `samples` ping-pongs over a pipe (at random phases, so
   * Date.now()'s millisecond rounding averages out):
   * - wallOffsetMs: the mean of (Date.now() - hrtime) there minus the same
   *   here, read around the same moments. CLOCK_MONOTONIC is one clock for
   *   the whole machine (when it is not faked), so this is the wall-clock
   *   offset alone, free of the pipe's delays and of any slew of the
   *   machine's wall clock (which moves both sides alike).
   * - monotonicOffsetMs: process.hrtime there minus the midpoint of ours
   *   before and after, over the quickest tenth of the round trips (as NTP
   *   filters): about 0 when the monotonic clock is not faked, with an error
   *   below rttMs / 2.
   */
  async measureClock(name: string, samples = 400): Promise<{ wallOffsetMs: number; monotonicOffsetMs: number; rttMs: number }> {
    const child = this.spawn(name, [process.execPath, "-e", 'process.stdin.on("data", () => process.stdout.write(Date.now() + " " + process.hrtime.bigint() + "\\n"))'], {
      stdio: ["pipe", "pipe", "inherit"],
    });
    try {
      let buf = "";
      const lines: string[] = [];
      let wake: (() => void) | null = null;
      child.stdout!.on("data", (d) => {
        buf += d;
        let i;
        while ((i = buf.indexOf("\n")) >= 0) {
          lines.push(buf.slice(0, i));
          buf = buf.slice(i + 1);
        }
        wake?.();
      });
      child.once("exit", () => wake?.());
      const got: { there: number; here: number; mono: number; rtt: number }[] = [];
      for (let n = 0; n < samples; n++) {
        await new Promise((r) => setTimeout(r, Math.random() * 2));
        const h1 = process.hrtime.bigint();
        const t1 = Date.now();
        child.stdin!.write("x");
        while (lines.length === 0) {
          if (child.exitCode !== null || child.signalCode !== null) throw new Error(`the clock probe in host ${name} exited (${child.exitCode ?? child.signalCode})`);
          await new Promise<void>((r) => (wake = r));
        }
        const h2 = process.hrtime.bigint();
        const t2 = Date.now();
        const [d, h] = lines.shift()!.split(" ");
        const mid = (h1 + h2) / 2n;
        got.push({
          there: Number(d) - Number(BigInt(h) / 1000n) / 1000,
          // Our own Date.now() was read next to h1 and h2: pair each with its hrtime.
          here: (t1 - Number(h1 / 1000n) / 1000 + (t2 - Number(h2 / 1000n) / 1000)) / 2,
          mono: Number(BigInt(h) - mid) / 1e6,
          rtt: Number(h2 - h1) / 1e6,
        });
      }
      const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;
      const quick = [...got].sort((a, b) => a.rtt - b.rtt).slice(0, Math.max(1, Math.floor(got.length / 10)));
      return {
        wallOffsetMs: mean(got.map((g) => g.there)) - mean(got.map((g) => g.here)),
        monotonicOffsetMs: mean(quick.map((g) => g.mono)),
        rttMs: mean(quick.map((g) => g.rtt)),
      };
    } finally {
      child.kill("SIGKILL");
    }
  }

  /** Pulls the host's cable: its eth0 goes down (its address stays; its peers' packets vanish). */
  linkDown(name: string): void {
    ip(["-n", this.host(name).netns, "link", "set", "eth0", "down"]);
    this.cut.add(name);
  }

  linkUp(name: string): void {
    ip(["-n", this.host(name).netns, "link", "set", "eth0", "up"]);
    this.cut.delete(name);
  }

  /**
   * Every packet between a host of `a` and a host of `b` is dropped, both
   * ways, silently (see the header: neighbour entries to an unowned MAC).
   * Each side still reaches its own members, the root namespace and any host
   * in neither set. Partitions may overlap: a pair stays cut while any
   * partition that cuts it is in force. The returned function heals this
   * partition alone; heal() heals every one.
   */
  partition(a: string[], b: string[]): () => void {
    const entries: string[] = [];
    for (const [from, to] of [
      [a, b],
      [b, a],
    ]) {
      for (const x of from) {
        for (const y of to) {
          if (x === y) throw new Error(`host ${x} is on both sides of the partition`);
          entries.push(`${x} ${this.address(y)}`);
        }
      }
    }
    for (const e of entries) {
      const n = this.poisoned.get(e) ?? 0;
      this.poisoned.set(e, n + 1);
      if (n === 0) {
        const [host, address] = e.split(" ");
        ip(["-n", this.host(host).netns, "neigh", "replace", address, "lladdr", UNOWNED_MAC, "dev", "eth0", "nud", "permanent"]);
      }
    }
    let healed = false;
    return () => {
      if (healed) return;
      healed = true;
      for (const e of entries) {
        const n = this.poisoned.get(e);
        if (n === undefined) continue; // heal() came first
        if (n > 1) this.poisoned.set(e, n - 1);
        else this.unpoison(e);
      }
    };
  }

  private unpoison(entry: string): void {
    this.poisoned.delete(entry);
    const [host, address] = entry.split(" ");
    // ARP resolves the address again at the next packet.
    quiet(() => ip(["-n", this.host(host).netns, "neigh", "del", address, "dev", "eth0"]));
  }

  heal(): void {
    for (const e of [...this.poisoned.keys()]) this.unpoison(e);
  }

  /** What is cut now: hosts whose interface is down, and the partitions' neighbour entries. */
  faults(): { down: string[]; partitioned: { host: string; address: string }[] } {
    return {
      down: [...this.cut],
      partitioned: [...this.poisoned.keys()].map((e) => {
        const [host, address] = e.split(" ");
        return { host, address };
      }),
    };
  }

  /** Every namespace of this run, the bridge's last. */
  namespaces(): string[] {
    return [...[...this.hosts.values()].map((h) => h.netns), this.bridgeNs];
  }

  /** Synchronous, idempotent: kills every process in the hosts, deletes the namespaces (and with them every veth). */
  destroySync(): void {
    if (this.destroyed) return;
    this.destroyed = true;
    live.delete(this);
    const existing = new Set(
      (() => {
        try {
          return ip(["netns", "list"])
            .split("\n")
            .map((l) => l.split(" ")[0]);
        } catch {
          return [];
        }
      })(),
    );
    const mine = this.namespaces().filter((n) => existing.has(n));
    killAllIn(mine, [...this.procs].map((p) => p.pid).filter((p): p is number => p !== undefined));
    for (const n of mine) quiet(() => ip(["netns", "del", n]));
    // The bridge namespace took the root veth's peer with it; in case it was never moved there:
    quiet(() => ip(["link", "del", this.rootIf]));
  }

  /** destroySync(), then waits until the killed children have been reaped. */
  async destroy(): Promise<void> {
    const children = [...this.procs].filter((p) => p.exitCode === null && p.signalCode === null);
    const reaped = Promise.all(children.map((p) => new Promise((r) => (p.exitCode !== null || p.signalCode !== null ? r(null) : p.once("exit", r)))));
    this.destroySync();
    await Promise.race([reaped, new Promise((r) => setTimeout(r, 5000))]);
  }

  /** Whether anything of this run is left on the machine (for the tests of the helper itself). */
  leftovers(): string[] {
    const out: string[] = [];
    const names = new Set(
      ip(["netns", "list"])
        .split("\n")
        .map((l) => l.split(" ")[0]),
    );
    for (const n of this.namespaces()) if (names.has(n)) out.push(`netns ${n}`);
    if (ip(["-o", "link", "show"]).includes(` ${this.rootIf}@`) || ip(["-o", "link", "show"]).includes(` ${this.rootIf}:`)) out.push(`link ${this.rootIf}`);
    return out;
  }
}

/** The host a cluster's process runs on: subsystem #N on "ss<N>", the RCM (id 0) on "rcm". */
export function defaultHostOf(id: number): string {
  return id === 0 ? "rcm" : `ss${id}`;
}

/**
 * A TestCluster launcher (test/support/cluster.ts, TestClusterOptions.launch)
 * that runs each process in its host's namespace, under its clock offset.
 */
export function hostsLauncher(hosts: NetnsHosts, hostOf: (id: number) => string = defaultHostOf): (id: number, argv: string[]) => string[] {
  return (id, argv) => hosts.command(hostOf(id), argv);
}

/**
 * A config with each subsystem's `host` (and the RCM's, when it has an `rcm`
 * section) set to its namespace's address. Ports are kept: every host has all
 * of its own. A `linkEndpoint` is left as it is.
 */
export function placeOnHosts<T extends { subsystems: { id: number; host?: string }[]; rcm?: unknown }>(config: T, hosts: NetnsHosts, hostOf: (id: number) => string = defaultHostOf): T {
  return {
    ...config,
    subsystems: config.subsystems.map((s) => ({ ...s, host: hosts.address(hostOf(s.id)) })),
    ...(config.rcm ? { rcm: { ...(config.rcm as object), host: hosts.address(hostOf(0)) } } : {}),
  };
}

// Subsystems on separate hosts (issue 15), first step: each subsystem and the
// RCM in a network namespace of its own (appliance/drill/netns-hosts.ts), with
// its own address in 198.18.0.0/24 and its own real-time clock offset
// (libfaketime), clock "realtime" with commit wait. The test and its NBD
// clients stay in the root namespace. Needs root and `ip netns`; skips and
// says why otherwise.
import { afterEach, describe, expect, it } from "vitest";
import { readFileSync, readlinkSync, statSync } from "node:fs";
import { randomBytes } from "node:crypto";
import { TestCluster, cmp, fig1Config, freePort, prng } from "../support/cluster.ts";
import { askAll } from "../../appliance/cli/control-client.ts";
import type { SubsystemStatus } from "../../appliance/cli/status-view.ts";
import type { NbdClient } from "../support/nbd-client.ts";
import { NetnsHosts, hostsLauncher, netnsUnavailable, placeOnHosts } from "../../appliance/drill/netns-hosts.ts";

const UNAVAILABLE = netnsUnavailable({ clocks: true });
if (UNAVAILABLE) console.warn(`hosts tests skipped: ${UNAVAILABLE}`);

const cleanup: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const f of cleanup.splice(0).reverse()) await f();
});
const pause = (ms: number) => new Promise((r) => setTimeout(r, ms));

function netnsInode(pid: number): number {
  return Number(/net:\[(\d+)\]/.exec(readlinkSync(`/proc/${pid}/ns/net`))![1]);
}

/** A TCP connect from inside `from` to `to`:port: "connected", "refused", or "timeout" (silence). */
async function probe(hosts: NetnsHosts, from: string, address: string, port: number): Promise<string> {
  const js = `const s=require("net").connect(${port},"${address}");setTimeout(()=>{console.log("timeout");process.exit(0)},1500);s.on("connect",()=>{console.log("connected");process.exit(0)});s.on("error",e=>{console.log(e.code==="ECONNREFUSED"?"refused":e.code);process.exit(0)})`;
  return (await hosts.run(from, [process.execPath, "-e", js])).stdout.trim();
}

describe("hosts: network namespaces", () => {
  it("netns-hosts: own addresses, exec in place, clock offsets on Date.now() and not on process.hrtime, interface down, partition, nothing left", async (ctx) => {
    if (UNAVAILABLE) ctx.skip(UNAVAILABLE);
    const hosts = NetnsHosts.create({ a: { clockOffsetMs: 4 }, b: { clockOffsetMs: -2.5 }, c: {} });
    cleanup.push(() => hosts.destroy());
    const addr = [...hosts.hosts.values()].map((h) => h.address);
    expect(new Set(addr).size).toBe(3);
    for (const a of [...addr, hosts.rootAddress]) expect(a).toMatch(/^198\.18\.0\.\d+$/);

    // The pid we hold is the command's own, inside the host's namespace.
    const server = hosts.spawn("b", [process.execPath, "-e", `require("net").createServer(s=>{s.on("error",()=>{});s.end("hi")}).listen(7000,"${hosts.address("b")}",()=>console.log("up"))`], {
      stdio: ["ignore", "pipe", "inherit"],
    });
    await new Promise((r) => server.stdout!.once("data", r));
    expect(readFileSync(`/proc/${server.pid}/comm`, "utf8").trim()).toBe("node");
    expect(netnsInode(server.pid!)).toBe(statSync(`/run/netns/${hosts.host("b").netns}`).ino);
    expect(netnsInode(server.pid!)).not.toBe(netnsInode(process.pid));

    const clocks = await Promise.all(["a", "b", "c"].map((h) => hosts.measureClock(h, 200)));
    console.log(`hosts: measured clocks ${JSON.stringify(clocks)}`);
    expect(clocks[0].wallOffsetMs).toBeGreaterThan(3);
    expect(clocks[0].wallOffsetMs).toBeLessThan(5);
    expect(clocks[1].wallOffsetMs).toBeGreaterThan(-3.5);
    expect(clocks[1].wallOffsetMs).toBeLessThan(-1.5);
    expect(Math.abs(clocks[2].wallOffsetMs)).toBeLessThan(1);
    for (const c of clocks) expect(Math.abs(c.monotonicOffsetMs)).toBeLessThan(Math.max(1, c.rttMs));

    expect(await probe(hosts, "a", hosts.address("b"), 7000)).toBe("connected");
    hosts.partition(["a"], ["b"]);
    expect(await probe(hosts, "a", hosts.address("b"), 7000)).toBe("timeout");
    expect(await probe(hosts, "c", hosts.address("b"), 7000)).toBe("connected");
    hosts.heal();
    expect(await probe(hosts, "a", hosts.address("b"), 7000)).toBe("connected");
    // Overlapping partitions (the drill's data-centre partition beside one host's): a pair
    // stays cut until every partition that cuts it is healed.
    const healOne = hosts.partition(["a"], ["b"]);
    const healBoth = hosts.partition(["a", "c"], ["b"]);
    healOne();
    healOne();
    expect(await probe(hosts, "a", hosts.address("b"), 7000)).toBe("timeout");
    expect(await probe(hosts, "c", hosts.address("b"), 7000)).toBe("timeout");
    healBoth();
    expect(hosts.faults().partitioned).toEqual([]);
    expect(await probe(hosts, "a", hosts.address("b"), 7000)).toBe("connected");
    hosts.linkDown("b");
    expect(await probe(hosts, "c", hosts.address("b"), 7000)).toBe("timeout");
    hosts.linkUp("b");
    expect(await probe(hosts, "c", hosts.address("b"), 7000)).toBe("connected");

    await hosts.destroy();
    expect(server.signalCode).toBe("SIGKILL");
    expect(hosts.leftovers()).toEqual([]);
  });
});

const VOLUME_MIB = 8;
const MAX_CLOCK_OFFSET_MS = 10;
/** Per host, within the bound: the widest pair (ss1, ss4) is 6 ms apart, under 10 - 1 (the clock's resolution). */
const OFFSETS: Record<string, number> = { ss1: 3, ss2: -2, ss3: 1, ss4: -3, ss5: 2, rcm: 0 };

/** Random writes over NBD; returns the last buffer written at each offset. */
async function writeSome(nbd: NbdClient, seed: number, n: number): Promise<Map<number, Buffer>> {
  const rnd = prng(seed);
  const written = new Map<number, Buffer>();
  const blocks = (VOLUME_MIB << 20) / 4096;
  for (let i = 0; i < n; i++) {
    const len = 1 + Math.floor(rnd() * 16);
    const at = Math.floor(rnd() * (blocks - len)) * 4096;
    const data = randomBytes(len * 4096);
    await nbd.write(at, data);
    written.set(at, data);
  }
  return written;
}

describe("hosts: the 2x3 topology on five namespaced hosts", () => {
  it("hosts: writes from the root namespace reach every secondary byte for byte; a secondary's interface down suspends the group, and a resync after it is back makes every pair identical again", async (ctx) => {
    if (UNAVAILABLE) ctx.skip(UNAVAILABLE);
    const t0 = Date.now();
    const hosts = NetnsHosts.create(Object.fromEntries(Object.entries(OFFSETS).map(([h, o]) => [h, { clockOffsetMs: o }])));
    cleanup.push(() => hosts.destroy());
    const cfg = placeOnHosts(
      await fig1Config({
        volumeMiB: VOLUME_MIB,
        extra: {
          clock: "realtime",
          maxClockOffsetMs: MAX_CLOCK_OFFSET_MS,
          linkTimeoutMs: 1000,
          rcm: { port: await freePort(), autoSuspend: true, failureTimeoutMs: 2000, checkIntervalMs: 100 },
        },
      }),
      hosts,
    );
    const c = TestCluster.create(cfg, "tidemark-hosts-", { launch: hostsLauncher(hosts) });
    cleanup.push(() => c.destroy());
    await c.startAll();
    await c.startRcm();
    const started = Date.now();

    // Each process in its own namespace, serving on its host's address.
    for (const id of [...c.ids, 0]) {
      const h = hosts.host(id === 0 ? "rcm" : `ss${id}`);
      expect(netnsInode(c.procs.get(id)!.pid!), `process ${id}`).toBe(statSync(`/run/netns/${h.netns}`).ino);
    }
    for (const id of c.ids) expect((await c.rawStatus(id)).host).toBe(hosts.address(`ss${id}`));
    let doc = await c.status();
    expect(doc.links.map((l) => `#${l.primary}->#${l.secondary} ${l.state} ${l.tls}`).sort()).toEqual(["#1->#3 up psk", "#1->#4 up psk", "#1->#5 up psk", "#2->#3 up psk", "#2->#4 up psk", "#2->#5 up psk"]);

    // Writes over NBD from the root namespace to every primary volume.
    const primaries = c.topo.pairs.map((p) => p.primary.name);
    const clients = new Map<string, NbdClient>();
    for (const v of primaries) clients.set(v, await c.nbd(v));
    cleanup.push(async () => {
      for (const n of clients.values()) await n.close().catch(() => {});
    });
    const firstWrites = await Promise.all(primaries.map((v, i) => writeSome(clients.get(v)!, 100 + i, 24)));
    await c.quiesce("C1", 30_000);
    for (const p of c.pairFiles()) expect(await cmp(p.primary, p.secondary), p.name).toBeNull();
    // Not identical by being empty: the last write to each volume is on its secondary.
    c.topo.pairs.forEach((p, i) => {
      const [at, data] = [...firstWrites[i]].at(-1)!;
      expect(readFileSync(c.volumeFile(p.secondary.name)).subarray(at, at + data.length).equals(data), p.secondary.name).toBe(true);
    });
    const replicated = Date.now();

    // Secondary #5's cable pulled: its links (from #1 and #2) fall silent, the RCM suspends the group.
    hosts.linkDown("ss5");
    const pulled = Date.now();
    let linkDownSeen = 0;
    const reachable = [1, 2, 3, 4];
    const primaryGroups = async () => {
      const a = await askAll<SubsystemStatus>(c.topo, reachable, { op: "status" });
      return [1, 2].map((id) => {
        const s = a.get(id)!;
        if (!s.ok) throw new Error(`#${id}: ${s.error}`);
        return { group: s.value.primary!.groups[0], links: s.value.primary!.links };
      });
    };
    let seen = await primaryGroups();
    for (let i = 0; i < 300 && !seen.every((p) => p.group.state === "suspended"); i++) {
      await pause(100);
      seen = await primaryGroups();
      if (linkDownSeen === 0 && seen.some((p) => p.links.some((l) => l.secondary === 5 && l.state !== "up"))) linkDownSeen = Date.now();
    }
    const suspendedSeen = Date.now();
    // The figures of docs/deploy.md, "A pulled cable": the links' linkTimeoutMs (1 s here), the RCM's failureTimeoutMs (2 s), then the suspension.
    console.log(`hosts: ss5's cable pulled: a primary's link to #5 seen down after ${linkDownSeen ? linkDownSeen - pulled : "?"} ms, both primaries suspended after ${suspendedSeen - pulled} ms`);
    expect(seen.map((p) => p.group.state)).toEqual(["suspended", "suspended"]);
    expect(seen[0].group.suspendedBy).toMatch(/rcm/);
    expect(seen[0].group.reason).toMatch(/#5/);
    // Only #5's links stay down (the others may reconnect once after the suspension's fence).
    const linkStates = () => seen.flatMap((p, i) => p.links.map((l) => `#${i + 1}->#${l.secondary} ${l.state}`)).sort();
    for (let i = 0; i < 100 && linkStates().some((l) => !/#5/.test(l) && !l.endsWith(" up")); i++) {
      await pause(100);
      seen = await primaryGroups();
    }
    expect(linkStates().map((l) => (l.includes("#5") ? l.replace(/ (backoff|connecting)$/, " down") : l))).toEqual([
      "#1->#3 up",
      "#1->#4 up",
      "#1->#5 down",
      "#2->#3 up",
      "#2->#4 up",
      "#2->#5 down",
    ]);
    const suspended = Date.now();
    // The primaries keep serving their hosts; the writes go to their bitmaps.
    const duringOutage = await Promise.all(primaries.map((v, i) => writeSome(clients.get(v)!, 200 + i, 8)));
    // What an admin reads (one status while #5 is silent costs the control timeout, 10 s).
    doc = await c.status();
    expect(doc.subsystems.find((s) => s.id === 5)!.reachable).toBe(false);
    // "suspended (degraded)": the secondaries that answered are suspended, one did not answer (docs/status.md).
    expect(doc.groups[0].state).toBe("suspended (degraded)");
    expect(doc.pairs.find((p) => p.secondary.subsystem === 5)!.state).toMatch(/suspended|secondary-unreachable/);
    console.log(`hosts: with ss5's interface down: group ${doc.groups[0].state} by ${doc.groups[0].suspendedBy}: ${doc.groups[0].reason}; pairs ${doc.pairs.map((p) => `${p.secondary.volume} ${p.state}`).join(", ")}`);

    // Back: the links come up again, the RCM finishes the suspension on #5
    // (the group then rests at one Ts everywhere), and a resync copies what
    // was written meanwhile.
    hosts.linkUp("ss5");
    const back = Date.now();
    const rests = () =>
      doc.groups[0].state === "suspended" &&
      doc.groups[0].synchronizedTs !== null &&
      doc.groups[0].secondaries.every((s) => s.second === doc.groups[0].synchronizedTs) &&
      doc.links.every((l) => l.state === "up");
    for (let i = 0; i < 200 && !rests(); i++) {
      await pause(100);
      doc = await c.status();
    }
    expect(rests(), JSON.stringify(doc.groups[0])).toBe(true);
    // At once: the RCM must not count the first-seen times of the failures
    // before the suspension against the resync's new links (it did).
    const r = await c.cli(["resync", "--config", c.configFile, "--group", "C1", "--json"]);
    expect(r.code, r.stderr).toBe(0);
    await c.quiesce("C1", 30_000);
    doc = await c.status();
    expect(doc.groups[0].state).toBe("active");
    expect(doc.links.every((l) => l.state === "up")).toBe(true);
    for (const p of c.pairFiles()) expect(await cmp(p.primary, p.secondary), p.name).toBeNull();
    c.topo.pairs.forEach((p, i) => {
      const [at, data] = [...duringOutage[i]].at(-1)!;
      expect(readFileSync(c.volumeFile(p.secondary.name)).subarray(at, at + data.length).equals(data), p.secondary.name).toBe(true);
    });
    expect(c.unexpectedDeaths()).toEqual([]);
    console.log(
      `hosts: timings: hosts+start ${started - t0} ms, write+quiesce+cmp ${replicated - started} ms, until suspended ${suspended - replicated} ms, ` +
        `outage writes+status ${back - suspended} ms, resync+quiesce+cmp ${Date.now() - back} ms`,
    );
  });
});


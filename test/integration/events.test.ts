// `tidemark events --json` on real processes: a drill-like sequence driven
// through the CLI (suspend, takeover, resync) shows up as its suspension,
// takeover and resync events in that order, each source's seqs rise, and a
// secondary killed with -9 and restarted shows as a lost connection, its
// links down, then the connection back (restarted) and its links up.
import { spawn, type ChildProcess } from "node:child_process";
import { createInterface } from "node:readline";
import { afterEach, describe, expect, it } from "vitest";
import pino from "pino";
import { BIN, TestCluster, fig1Config, freePort } from "../support/cluster.ts";
import { linkSecretsOf } from "../../config/keys.ts";
import { connectLink, type Link } from "../../appliance/replication/link.ts";
import type { Frame } from "../../appliance/replication/frames.ts";
import { EVENT_SUBSCRIBERS_MAX } from "../../appliance/events/hub.ts";

const cleanup: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const f of cleanup.splice(0).reverse()) await f();
});
const pause = (ms: number) => new Promise((r) => setTimeout(r, ms));

type Line = Record<string, unknown> & { kind: string; action: string; source?: string; seq?: number };

/** `tidemark events --json` as a child process, its lines parsed as they come. */
function follow(configFile: string): { proc: ChildProcess; lines: Line[]; raw: string[]; until: (what: string, pred: (l: Line) => boolean, ms?: number) => Promise<number> } {
  const proc = spawn(process.execPath, [BIN, "events", "--config", configFile, "--json"], { stdio: ["ignore", "pipe", "pipe"] });
  const lines: Line[] = [];
  const raw: string[] = [];
  createInterface({ input: proc.stdout! }).on("line", (l) => {
    raw.push(l);
    lines.push(JSON.parse(l) as Line);
  });
  let stderr = "";
  proc.stderr!.on("data", (d) => (stderr += d));
  const until = async (what: string, pred: (l: Line) => boolean, ms = 30_000) => {
    const end = Date.now() + ms;
    for (;;) {
      const i = lines.findIndex(pred);
      if (i >= 0) return i;
      if (Date.now() > end || proc.exitCode !== null) throw new Error(`no event line for ${what} within ${ms} ms; stderr: ${stderr}\n${raw.slice(-40).join("\n")}`);
      await pause(50);
    }
  };
  return { proc, lines, raw, until };
}

describe("events: tidemark events --json on real processes", () => {
  it("events: suspension, takeover and resync in order, then a secondary killed and restarted (link down/up, reconnection)", async () => {
    const cfg = await fig1Config({ volumeMiB: 8, extra: { rcm: { port: await freePort(), autoSuspend: false, checkIntervalMs: 100 } } });
    const c = TestCluster.create(cfg, "tidemark-events-");
    cleanup.push(() => c.destroy());
    await c.startAll();
    await c.startRcm();
    const ev = follow(c.configFile);
    cleanup.push(() => void ev.proc.kill("SIGKILL"));
    const t0 = Date.now();
    await ev.until("the end of the exists lines", (l) => l.kind === "-" && l.action === "exists");
    const existing = ev.lines.filter((l) => l.action === "exists" && l.kind === "group");
    // 2 primaries and 3 secondaries each hold C1 in one role.
    expect(existing.length).toBe(5);
    expect(existing.every((l) => l.state === "active" && l.generation === 1)).toBe(true);

    const w = await c.nbd("p1a");
    for (let i = 0; i < 8; i++) await w.write(i * 4096, Buffer.alloc(4096, i + 1));
    await w.close();
    const cli = async (args: string[]) => {
      const r = await c.cli([...args, "--config", c.configFile, "--group", "C1", "--json"]);
      expect(r.code, `tidemark ${args.join(" ")}: ${r.stderr}`).toBe(0);
      return JSON.parse(r.stdout) as Record<string, unknown>;
    };
    await cli(["suspend", "--reason", "events test"]);
    const takeover = await cli(["takeover"]);
    await cli(["resync"]);

    const suspended = await ev.until("a suspension", (l) => l.kind === "suspension" && l.action === "occur");
    const tookOver = await ev.until("a takeover", (l) => l.kind === "takeover" && l.action === "occur");
    const resyncStart = await ev.until("a resync start", (l) => l.kind === "resync" && l.action === "start");
    const resyncEnd = await ev.until("a resync end", (l) => l.kind === "resync" && l.action === "end" && l.state === "active");
    expect(suspended).toBeLessThan(tookOver);
    expect(tookOver).toBeLessThan(resyncStart);
    expect(resyncStart).toBeLessThan(resyncEnd);
    expect(ev.lines[suspended]).toMatchObject({ group: "C1", reason: "events test" });
    expect(String(ev.lines[suspended].by)).toMatch(/^admin/);
    expect(ev.lines[tookOver]).toMatchObject({ group: "C1", ts: takeover.ts, generation: takeover.generation });
    // The RCM's procedures, start and end, in the same order.
    const proc = (mode: string) => ev.lines.findIndex((l) => l.kind === "procedure" && l.action === "end" && l.mode === mode && l.ok === true);
    expect(proc("suspend")).toBeGreaterThanOrEqual(0);
    expect(proc("suspend")).toBeLessThan(proc("takeover"));
    expect(proc("takeover")).toBeLessThan(proc("resync"));
    const tSequence = Date.now() - t0;

    // The subscriber bound of one process: the CLI holds one of #1's places; the others fill it and one more is refused.
    const subscribe = async (): Promise<{ link: Link; answer: Frame }> => {
      const me = c.topo.config.subsystems.find((x) => x.id === 1)!;
      const secrets = linkSecretsOf(c.topo, "cli");
      const link = await connectLink({ host: me.host, port: me.replicationPort, key: secrets.key, tls: secrets.tls, role: "control", nodeId: 0, timeoutMs: 5000, logger: pino({ level: "silent" }) });
      const answer = new Promise<Frame>((r) => link.on("frame", (f: Frame) => f.type === "response" && r(f)));
      link.send({ type: "request", id: 1, body: { op: "subscribe" } });
      return { link, answer: await answer };
    };
    const extra: Link[] = [];
    cleanup.push(() => extra.forEach((l) => l.close()));
    for (let i = 1; i < EVENT_SUBSCRIBERS_MAX; i++) {
      const s = await subscribe();
      extra.push(s.link);
      expect(s.answer).toMatchObject({ type: "response", ok: true });
    }
    const refused = await subscribe();
    extra.push(refused.link);
    expect(refused.answer).toMatchObject({ type: "response", ok: false, body: { code: "TM_EVENTS_SUBSCRIBERS" } });
    for (const l of extra.splice(0)) l.close();

    // kill -9 secondary #3, then start it again.
    const t1 = Date.now();
    await c.kill(3);
    await ev.until("the lost connection to #3", (l) => l.kind === "connection" && l.to === "ss3" && l.state === "lost" && l.action === "change");
    await ev.until("link 1->3 down", (l) => l.kind === "link" && l.action === "change" && l.primary === 1 && l.secondary === 3 && l.state === "down");
    const back = ev.lines.length;
    await c.start(3);
    const reconnected = await ev.until("#3 back", (l) => l.kind === "connection" && l.to === "ss3" && l.state === "connected" && l.action === "change");
    expect(reconnected).toBeGreaterThanOrEqual(back);
    expect(ev.lines[reconnected].restarted).toBe(true);
    // Its state again, as exists lines right after the connection line.
    expect(ev.lines[reconnected + 1]).toMatchObject({ kind: "subsystem", action: "exists", source: "ss3" });
    await ev.until("link 1->3 up", (l) => ev.lines.indexOf(l) > back && l.kind === "link" && l.primary === 1 && l.secondary === 3 && l.state === "up");
    const tRestart = Date.now() - t1;

    // Every line is an event of the schema, and each source incarnation's seqs never go back.
    const last = new Map<string, number>();
    for (const l of ev.lines) {
      if (l.kind === "-") continue;
      expect(typeof l.time, JSON.stringify(l)).toBe("string");
      expect(typeof l.seq).toBe("number");
      const key = `${l.source} ${String(l.incarnation)}`;
      const prev = last.get(key) ?? 0;
      if (l.action === "exists") expect(l.seq).toBeGreaterThanOrEqual(prev);
      else expect(l.seq, `seq of ${key}`).toBeGreaterThan(prev);
      last.set(key, l.seq!);
    }
    ev.proc.kill("SIGINT");
    const code = await new Promise<number | null>((r) => (ev.proc.exitCode !== null ? r(ev.proc.exitCode) : ev.proc.once("exit", (c2) => r(c2))));
    expect(code).toBe(0);
    console.log(`events: ${ev.lines.length} lines; suspend/takeover/resync seen in ${tSequence} ms; kill -9 #3 to its links up again ${tRestart} ms`);
  });
});

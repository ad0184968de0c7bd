// The drill's full-disk round (`tidemark drill --full-disk`, issue 18): the topology's data
// folder is a tmpfs of its own; while hosts write dependent writes alternating between the
// group's primary volumes, a filler file eats the free space, as a snapshot or another program
// would. Every subsystem must keep answering `status` and NBD handshakes within 2 s, every host
// write must be answered (ENOSPC, not a hang), no process may die, and the group must be
// suspended with a reason that names the file and the file system. Then the filler goes, the
// subsystems must leave state-disk-full by themselves, the group is resynced and quiesced, and
// every acknowledged write must be on the primary and the secondary images, every pair identical.
// Like the other rounds it reads the images itself.
import { closeSync, openSync, statfsSync, unlinkSync, writeSync } from "node:fs";
import path from "node:path";
import { volumePath } from "../../config/load.ts";
import { askAll } from "../cli/control-client.ts";
import type { SubsystemStatus } from "../cli/status-view.ts";
import { quiesce } from "../cli/quiesce.ts";
import { liveTopology } from "../cli/live-topology.ts";
import { NbdClient, NbdClientError } from "../nbd/client.ts";
import { NBD_ENOSPC } from "../nbd/protocol.ts";
import { tidemarkCli } from "./commands.ts";
import { cmpImages, readRange } from "./images.ts";
import { processName } from "./processes.ts";
import type { RoundReport } from "./report.ts";
import { PAIRED_TIMEOUT_MS, QUIESCE_TIMEOUT_MS, RESYNC_TIMEOUT_MS, emptyRoundReport, waitPaired, type DrillEnv } from "./round.ts";

/** Every status, NBD handshake and host write must be answered within this (the issue's bar). */
export const FULL_DISK_ANSWER_MS = 2000;
/** The filler leaves this much free: the next few writes of the state files fill the rest. */
const FULL_DISK_LEAVE_BYTES = 2 * 1024 * 1024;
const WRITE_BYTES = 64 * 1024;
/** Writes before the filler goes in, so the group is busy when the disk fills. */
const WRITES_BEFORE_FILL = 32;
/** The round stops writing after this many ENOSPC answers, or this many writes in all. */
const REFUSALS_WANTED = 8;
const WRITES_MAX = 4000;
/** How long the subsystems have to suspend the group, and later to leave state-disk-full. */
const STATE_TIMEOUT_MS = 15_000;
const PROBE_INTERVAL_MS = 250;
/**
 * A suspension reason that names what filled: a state file and its file
 * system (state-disk-full), or a secondary volume file on the same full file
 * system (its applier's ENOSPC, which suspends the group as any failing
 * secondary volume does).
 */
const FULL_REASON = /state disk full: E\w+ writing \S+.* on \S+ \(\w+\)|cannot write its volumes: .*"\S+" \(\S+\): .*(ENOSPC|EDQUOT|EFBIG)/;

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** Content of write `n` to a volume: every byte says which write it was. */
function payload(volume: string, n: number): Buffer {
  const b = Buffer.alloc(WRITE_BYTES, (n * 7 + volume.length * 31) & 0xff);
  b.write(`tidemark drill full-disk ${volume} write ${n}\n`, 0);
  return b;
}

/** Eats the file system's free space but `leaveBytes`; returns the filler's path and size. */
function fill(dir: string, leaveBytes: number): { file: string; bytes: number } {
  const file = path.join(dir, "drill-filler");
  const fd = openSync(file, "w");
  const chunk = Buffer.alloc(1 << 20, 0xee);
  let bytes = 0;
  try {
    for (;;) {
      const s = statfsSync(dir);
      const room = s.bavail * s.bsize - leaveBytes;
      if (room <= 0) break;
      bytes += writeSync(fd, chunk, 0, Math.min(chunk.length, room));
    }
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== "ENOSPC") throw err;
  } finally {
    closeSync(fd);
  }
  return { file, bytes };
}

export async function runFullDiskRound(env: DrillEnv, round: number, seed: number, mountDir: string): Promise<RoundReport> {
  const { topo, procs } = env;
  const started = Date.now();
  let t0 = started;
  const report = emptyRoundReport(round, seed);
  const event = (what: string) => report.events.push({ atMs: Date.now() - t0, what });
  const violation = (v: string) => report.violations.push(v);
  const ids = topo.config.subsystems.map((s) => s.id);
  const endpoint = (volume: string) => {
    const v = topo.volumes.get(volume)!;
    const ss = topo.config.subsystems.find((s) => s.id === v.subsystemId)!;
    return { host: ss.host, port: ss.nbdPort, exportName: volume, requestTimeoutMs: FULL_DISK_ANSWER_MS, connectTimeoutMs: FULL_DISK_ANSWER_MS };
  };
  const deaths = () => {
    for (const d of procs.takeDeaths()) violation(`${processName(d.id)} (pid ${d.pid}) died (${d.how})${d.stderr ? `; stderr: ${d.stderr.trim().split("\n").slice(-2).join(" | ")}` : ""}`);
  };
  let stepName = "";
  let stepStarted = Date.now();
  const step = (name: string) => {
    if (stepName) report.stepsMs[stepName] = (report.stepsMs[stepName] ?? 0) + Date.now() - stepStarted;
    stepName = name;
    stepStarted = Date.now();
  };
  const statuses = async () => {
    const answers = await askAll<SubsystemStatus>(topo, ids, { op: "status" });
    return new Map([...answers].filter(([, a]) => a.ok).map(([id, a]) => [id, (a as { value: SubsystemStatus }).value]));
  };
  const g = [...topo.groups.values()][0];
  const volumes = g.pairs.map((p) => p.primary.name);
  const secondaryOf = new Map(g.pairs.map((p) => [p.primary.name, p.secondary.name]));
  const slots = Math.floor(env.volumeBytes / WRITE_BYTES);
  const acked = new Map<string, Buffer>();
  let filler: string | null = null;
  let probing: Promise<void> | null = null;
  let probeStop = false;
  try {
    step("paired");
    await waitPaired(env, PAIRED_TIMEOUT_MS);

    // Every subsystem answers status and an NBD handshake within 2 s, all the way through.
    probing = (async () => {
      const exportOf = new Map(topo.config.subsystems.map((s) => [s.id, s.volumes[0].name]));
      while (!probeStop) {
        await Promise.all(
          ids.map(async (id) => {
            let t = Date.now();
            const a = (await askAll<SubsystemStatus>(topo, [id], { op: "status" })).get(id)!;
            if (!a.ok || Date.now() - t > FULL_DISK_ANSWER_MS) violation(`status of ${processName(id)}: ${a.ok ? `${Date.now() - t} ms` : a.error}`);
            t = Date.now();
            try {
              await (await NbdClient.connect(endpoint(exportOf.get(id)!))).close();
              if (Date.now() - t > FULL_DISK_ANSWER_MS) violation(`NBD handshake with ${processName(id)}: ${Date.now() - t} ms`);
            } catch (err) {
              violation(`NBD handshake with ${processName(id)}: ${(err as Error).message}`);
            }
          }),
        );
        await sleep(PROBE_INTERVAL_MS);
      }
    })();

    step("fill");
    t0 = Date.now();
    const writers = new Map<string, NbdClient>();
    for (const v of volumes) writers.set(v, await NbdClient.connect(endpoint(v)));
    let refused = 0;
    let n = 0;
    for (; n < WRITES_MAX && refused < REFUSALS_WANTED && !env.stopping(); n++) {
      if (n === WRITES_BEFORE_FILL) {
        const f = fill(mountDir, FULL_DISK_LEAVE_BYTES);
        filler = f.file;
        event(`filler of ${(f.bytes / 1048576).toFixed(0)} MiB in ${mountDir}: ${FULL_DISK_LEAVE_BYTES >> 20} MiB left`);
      }
      // Dependent writes: each issued once the one before was answered, alternating primaries.
      const volume = volumes[n % volumes.length];
      const slot = Math.floor(n / volumes.length) % slots;
      const data = payload(volume, n);
      try {
        await writers.get(volume)!.write(slot * WRITE_BYTES, data);
        acked.set(`${volume}@${slot}`, data);
        report.load.writes++;
        report.load.bytes += data.length;
      } catch (err) {
        if (err instanceof NbdClientError && err.code === "TM_NBD_REQUEST" && err.nbdErrno === NBD_ENOSPC) {
          if (refused++ === 0) event(`first ENOSPC to a host after ${n} writes (${volume})`);
          // A refused write leaves the slot as it was (nothing was written): the last acknowledged content stays expected.
          continue;
        }
        violation(`host write ${n} to ${volume}: ${(err as Error).message}`);
        break;
      }
    }
    for (const w of writers.values()) await w.close().catch(() => {});
    event(`${n} host writes: ${report.load.writes} acknowledged, ${refused} refused with ENOSPC`);
    if (refused === 0) violation(`no host write was refused with ENOSPC after the filler: the disk never filled (${n} writes)`);
    deaths();

    step("suspended");
    const until = Date.now() + STATE_TIMEOUT_MS;
    let seen: Map<number, SubsystemStatus> = new Map();
    const suspendedNaming = (s: Map<number, SubsystemStatus>) =>
      [...s.values()].flatMap((x) => x.secondary ?? []).find((sg) => sg.name === g.name && sg.state === "suspended" && FULL_REASON.test(sg.reason ?? ""));
    while (Date.now() < until && !env.stopping()) {
      seen = await statuses();
      if (suspendedNaming(seen)) break;
      await sleep(100);
    }
    const full = [...seen].filter(([, x]) => x.disk?.state === "state-disk-full").map(([id]) => id);
    const sg = suspendedNaming(seen);
    if (full.length === 0) violation("no subsystem showed state-disk-full");
    else event(`state-disk-full on ${full.map((id) => `#${id}`).join(", ")}: ${seen.get(full[0])!.disk!.reason}`);
    if (!sg) violation(`group ${g.name} was not suspended with a reason naming the full file within ${STATE_TIMEOUT_MS} ms (${seen.size} subsystems answered)`);
    else event(`group ${g.name} suspended: ${sg.reason}`);

    step("free");
    unlinkSync(filler!);
    filler = null;
    event("filler removed");
    const back = Date.now() + STATE_TIMEOUT_MS;
    for (;;) {
      const s = await statuses();
      if (s.size === ids.length && [...s.values()].every((x) => x.disk?.state !== "state-disk-full")) break;
      if (Date.now() > back) {
        violation(`subsystems still in state-disk-full ${STATE_TIMEOUT_MS} ms after the space came back`);
        break;
      }
      await sleep(100);
    }
    event("every subsystem out of state-disk-full");
    probeStop = true;
    await probing;
    probing = null;
    deaths();

    step("resync");
    const t = Date.now();
    const r = await tidemarkCli(["resync", "--config", topo.file, "--group", g.name], RESYNC_TIMEOUT_MS);
    report.resyncs.push({ group: g.name, command: "resync", elapsedMs: Date.now() - t, said: r.code === 0 ? r.stdout.trim().split("\n").slice(-1)[0] : r.stderr.trim() });
    if (r.code !== 0) throw new Error(`tidemark resync exited ${r.code}: ${r.stderr.trim()}`);
    await quiesce(await liveTopology(topo), g.name, QUIESCE_TIMEOUT_MS);

    step("compare");
    const pathOf = (volume: string) => volumePath(topo, topo.volumes.get(volume)!);
    let present = 0;
    for (const [key, want] of acked) {
      const [volume, slot] = key.split("@");
      for (const v of [volume, secondaryOf.get(volume)!]) {
        const got = await readRange(pathOf(v), Number(slot) * WRITE_BYTES, WRITE_BYTES);
        if (got.equals(want)) present++;
        else violation(`acknowledged write ${key} is not on ${v}`);
      }
    }
    report.completeOnPrimaries = { acked: acked.size, ok: present === acked.size * 2 };
    for (const p of topo.pairs) {
      report.cmp.pairs++;
      const d = await cmpImages(pathOf(p.primary.name), pathOf(p.secondary.name));
      if (d === null) report.cmp.identical++;
      else violation(`cmp ${p.primary.name} ${p.secondary.name}: ${d}`);
    }
    deaths();
  } catch (err) {
    report.abortedAt = stepName;
    violation(`${stepName}: ${(err as Error).message}`);
  } finally {
    probeStop = true;
    await probing?.catch(() => {});
    if (filler) {
      try {
        unlinkSync(filler);
      } catch {
        // Gone with the tmpfs at teardown.
      }
    }
    step("");
  }
  report.elapsedMs = Date.now() - started;
  report.ok = report.violations.length === 0;
  return report;
}

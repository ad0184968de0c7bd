// Issue 13 on real processes: `tidemark keygen`, a subsystem that refuses to
// start on a key file others can read or on the well-known key with a public
// bind, the replication links' TLS state and peer identity in `tidemark
// status`, and typed control requests: every op refuses a malformed request
// by op and field, and nothing changes.
import { spawnSync } from "node:child_process";
import { chmodSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import Database from "better-sqlite3";
import { afterAll, afterEach, describe, expect, it } from "vitest";
import { BIN, TestCluster, fig1Config, freePort } from "../support/cluster.ts";
import { ControlClient, ControlError } from "../../appliance/cli/control-client.ts";
import { askRcm } from "../../appliance/cli/rcm-client.ts";
import { SUBSYSTEM_OPS } from "../../appliance/subsystem/control-ops.ts";
import { RCM_OPS } from "../../appliance/rcm/control-ops.ts";
import { subsystemDir } from "../../config/load.ts";
import { WELL_KNOWN_KEYS } from "../../config/key-rules.ts";

let cluster: TestCluster | null = null;
afterEach(async () => {
  await cluster?.destroy();
  cluster = null;
});
const dirs: string[] = [];
afterAll(() => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

function tidemark(args: string[]): { code: number; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [BIN, ...args], { encoding: "utf8", timeout: 60_000 });
  return { code: r.status ?? -1, stdout: r.stdout, stderr: r.stderr };
}

/** A malformed request per op, and the field its refusal must name. A new op needs a row here (checked below). */
const MALFORMED_SUBSYSTEM: Record<string, { on: number; body: Record<string, unknown>; field: string }> = {
  status: { on: 1, body: { verbose: true }, field: "verbose is not a field of this op" },
  stamp: { on: 1, body: { group: "C1" }, field: "group" },
  fence: { on: 3, body: { group: "C1", generation: "2" }, field: "generation" },
  preview: { on: 3, body: { group: "C1", ts: 12345 }, field: "ts" },
  "apply-ts": { on: 3, body: { group: "C1", generation: 2, ts: "-5" }, field: "ts" },
  takeover: { on: 3, body: { group: "C1" }, field: "generation" },
  "primary-suspend": { on: 1, body: { group: 7, generation: 2 }, field: "group" },
  "primary-takeover": { on: 1, body: { group: "C1", generation: 0 }, field: "generation" },
  "primary-preview": { on: 1, body: {}, field: "group" },
  "resync-begin": { on: 3, body: { group: "C1", generation: 1.5 }, field: "generation" },
  "primary-resync": { on: 1, body: { group: "C1", generation: 2, blocks: { p1a: [[0, "all"]] } }, field: "blocks.p1a.0.1 must map volume names to [first, count] runs" },
  turn: { on: 1, body: { group: "C1", generation: 2, ts: "1", direction: "sideways" }, field: 'direction must be "forward" or "reverse"' },
  "primary-freeze": { on: 1, body: { group: "../C1" }, field: "group" },
  "lease-acquire": { on: 1, body: { group: "C1" }, field: "lease" },
  "lease-release": { on: 1, body: { group: "C1", token: 5 }, field: "token" },
  "copy-status": { on: 1, body: { group: null }, field: "group" },
  "verify-start": { on: 1, body: { group: "C1", rateMiBps: 0 }, field: "rateMiBps must be above 0" },
};
const MALFORMED_RCM: Record<string, { body: Record<string, unknown>; field: string }> = {
  suspend: { body: { group: "C1", reason: 42 }, field: "reason" },
  takeover: { body: { group: "C1", dryRun: "yes" }, field: "dryRun" },
  resync: { body: { group: "C1", reverse: 1 }, field: "reverse" },
  swap: { body: { group: "C1", timeoutMs: -1 }, field: "timeoutMs" },
  status: { body: { all: true }, field: "all" },
};

/** What a control request could change: each subsystem's groups and leases, as the state file holds them. */
function durableState(c: TestCluster): string {
  return JSON.stringify(
    c.ids.map((id) => {
      const db = new Database(path.join(subsystemDir(c.topo, id), "state.db"), { readonly: true, fileMustExist: true });
      try {
        return {
          id,
          grp: db.prepare("SELECT name, generation, direction, state, reason, suspended_by, synchronized_ts FROM grp ORDER BY name").safeIntegers(true).all().map(String),
          lease: db.prepare("SELECT * FROM lease").all(),
        };
      } finally {
        db.close();
      }
    }),
  );
}

describe("link security", () => {
  it("keygen: writes a fresh 64-hex-character key with mode 0600; refuses an existing file, naming it; --force replaces it", () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), "tidemark-keygen-"));
    dirs.push(dir);
    const f = path.join(dir, "cluster.key");
    const first = tidemark(["keygen", f]);
    expect(first.code, first.stderr).toBe(0);
    expect(statSync(f).mode & 0o777).toBe(0o600);
    const key = readFileSync(f, "utf8");
    expect(key).toMatch(/^[0-9a-f]{64}\n$/);
    const again = tidemark(["keygen", f]);
    expect(again.code).toBe(1);
    expect(again.stderr).toContain(`${f} exists`);
    expect(readFileSync(f, "utf8")).toBe(key);
    const forced = tidemark(["keygen", "--force", f]);
    expect(forced.code, forced.stderr).toBe(0);
    expect(readFileSync(f, "utf8")).not.toBe(key);
    expect(statSync(f).mode & 0o777).toBe(0o600);
  });

  it("subsystem: a cluster key file of mode 0644 stops the start, naming the file; the well-known key with a bind to 0.0.0.0 too", async () => {
    cluster = TestCluster.create(await fig1Config({ volumeMiB: 8 }));
    const keyFile = path.join(cluster.dir, "cluster.key");
    chmodSync(keyFile, 0o644);
    const open = tidemark(["subsystem", "--config", cluster.configFile, "--id", "1"]);
    expect(open.code).not.toBe(0);
    expect(open.stderr).toContain(`cluster key file ${keyFile} is readable by group or others (mode 0644)`);

    chmodSync(keyFile, 0o600);
    writeFileSync(keyFile, WELL_KNOWN_KEYS[0] + "\n");
    const cfg = JSON.parse(readFileSync(cluster.configFile, "utf8")) as { subsystems: { host: string }[] };
    cfg.subsystems[0].host = "0.0.0.0";
    writeFileSync(cluster.configFile, JSON.stringify(cfg));
    const weak = tidemark(["subsystem", "--config", cluster.configFile, "--id", "1"]);
    expect(weak.code).not.toBe(0);
    expect(weak.stderr).toContain(`cluster key file ${keyFile} holds the well-known default key, refused because a listener is outside loopback (subsystem#1 host 0.0.0.0)`);
  });

  it("status: every replication link shows TLS psk, TLSv1.3 and the secondary's identity (status --json and the LINKS table)", async () => {
    cluster = TestCluster.create(await fig1Config({ volumeMiB: 8 }));
    await cluster.startAll();
    const json = await cluster.cli(["status", "--json", "--config", cluster.configFile]);
    expect(json.code, json.stderr).toBe(0);
    const doc = JSON.parse(json.stdout) as { links: { primary: number; secondary: number; state: string; tls: string; protocol: string; peerIdentity: string }[] };
    // Each primary keeps a link to every secondary of the group (its SYNCs go to all of them).
    const wanted = [1, 2].flatMap((p) => [3, 4, 5].map((s) => [p, s]));
    expect(doc.links.map((l) => [l.primary, l.secondary])).toEqual(wanted);
    for (const l of doc.links) expect(l).toEqual({ primary: l.primary, secondary: l.secondary, state: "up", tls: "psk", protocol: "TLSv1.3", peerIdentity: `ss${l.secondary}` });
    const text = await cluster.cli(["status", "--config", cluster.configFile]);
    expect(text.stdout).toMatch(/LINKS\n.*link\s+state\s+tls\s+protocol\s+peer identity\n#1 -> #3\s+up\s+psk\s+TLSv1\.3\s+ss3/);
  });

  it("control: every op of the subsystems and of the RCM refuses a malformed request by op and field (TM_BAD_REQUEST), and nothing changes", async () => {
    expect(Object.keys(MALFORMED_SUBSYSTEM).sort()).toEqual([...SUBSYSTEM_OPS.keys()].sort());
    expect(Object.keys(MALFORMED_RCM).sort()).toEqual([...RCM_OPS.keys()].sort());
    cluster = TestCluster.create(await fig1Config({ volumeMiB: 8, extra: { rcm: { port: await freePort(), autoSuspend: false } } }));
    const c = cluster;
    await c.startAll();
    await c.startRcm();
    const before = durableState(c);
    for (const [op, m] of Object.entries(MALFORMED_SUBSYSTEM)) {
      const client = await ControlClient.connect(c.topo, m.on);
      try {
        const err = await client.request({ op, ...m.body }).catch((e: unknown) => e);
        expect(err, op).toBeInstanceOf(ControlError);
        expect((err as ControlError).code, `${op}: ${(err as Error).message}`).toBe("TM_BAD_REQUEST");
        expect((err as Error).message).toContain(`subsystem #${m.on}: ${op}: ${m.field}`);
      } finally {
        client.close();
      }
    }
    for (const [op, m] of Object.entries(MALFORMED_RCM)) {
      const err = await askRcm(c.topo, { op, ...m.body }, 10_000).catch((e: unknown) => e);
      expect((err as ControlError).code, `${op}: ${(err as Error).message}`).toBe("TM_BAD_REQUEST");
      expect((err as Error).message).toContain(`rcm: ${op}: ${m.field} `);
    }
    // Not an object, no op, an unknown op: refused as well.
    const client = await ControlClient.connect(c.topo, 1);
    expect(((await client.request([1, 2]).catch((e: unknown) => e)) as ControlError).code).toBe("TM_BAD_REQUEST");
    expect(((await client.request({ group: "C1" }).catch((e: unknown) => e)) as ControlError).code).toBe("TM_CONTROL_OP");
    client.close();
    expect(durableState(c)).toBe(before);
    const history = await askRcm<{ history: unknown[] }>(c.topo, { op: "status" }, 10_000);
    expect(history.history).toEqual([]);
    // The same ops, well-formed, still work.
    const ok = await ControlClient.connect(c.topo, 1);
    expect(await ok.request<{ state: string }>({ op: "primary-preview", group: "C1" })).toMatchObject({ state: "active" });
    ok.close();
    expect(c.unexpectedDeaths()).toEqual([]);
  });
});

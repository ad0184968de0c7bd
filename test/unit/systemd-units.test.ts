// The systemd units of config/systemd/ (docs/deploy.md, "systemd units"):
// `systemd-analyze verify` must accept them without a warning, and the
// subsystem unit's command line, run the way its socket unit would run it
// (systemd-socket-activate, LISTEN_FDS=1), must serve NBD on the socket.
//
// The units name /opt/tidemark/bin/tidemark, and `systemd-analyze verify`
// refuses an ExecStart binary that does not exist. So the units are verified
// as copies whose ExecStart points at this checkout's bin/tidemark (the only
// change, checked below), and the originals are verified too, where the
// missing binary must be the only complaint.
import { spawn, spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { BIN, ROOT, freePort } from "../support/cluster.ts";
import { NbdClient } from "../support/nbd-client.ts";

const UNITS_DIR = path.join(ROOT, "config/systemd");
const INSTALLED_BIN = "/opt/tidemark/bin/tidemark";
const UNITS = readdirSync(UNITS_DIR).filter((f) => /\.(service|socket)$/.test(f)).sort();

function has(tool: string): boolean {
  return spawnSync("sh", ["-c", `command -v ${tool}`], { stdio: "ignore" }).status === 0;
}
const ANALYZE = has("systemd-analyze");
const ACTIVATE = has("systemd-socket-activate");
if (!ANALYZE) console.warn("systemd units: systemd-analyze is not installed (package systemd); `systemd-analyze verify` is skipped");
if (!ACTIVATE) console.warn("systemd units: systemd-socket-activate is not installed (package systemd); the socket-activation run is skipped");

const dirs: string[] = [];
afterAll(() => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

function tempDir(): string {
  const d = mkdtempSync(path.join(os.tmpdir(), "tidemark-units-"));
  dirs.push(d);
  return d;
}

/** The value of `key=` in a unit's text (the last one, as systemd takes it). */
function setting(text: string, key: string): string | undefined {
  const lines = text.split("\n").filter((l) => l.startsWith(`${key}=`));
  return lines.at(-1)?.slice(key.length + 1);
}

function verify(dir: string, files: string[]): { code: number | null; output: string } {
  const r = spawnSync("systemd-analyze", ["verify", ...files], { cwd: dir, encoding: "utf8", timeout: 60_000 });
  return { code: r.status, output: `${r.stdout}${r.stderr}`.trim() };
}

describe("systemd units", () => {
  it("config/systemd: a subsystem unit with its socket unit and an RCM unit, installed under /opt/tidemark with the config in /etc/tidemark", () => {
    expect(UNITS).toEqual(["tidemark-rcm.service", "tidemark-subsystem.service", "tidemark-subsystem.socket"]);
    const sub = readFileSync(path.join(UNITS_DIR, "tidemark-subsystem.service"), "utf8");
    const sock = readFileSync(path.join(UNITS_DIR, "tidemark-subsystem.socket"), "utf8");
    const rcm = readFileSync(path.join(UNITS_DIR, "tidemark-rcm.service"), "utf8");
    expect(setting(sub, "ExecStart")).toBe(`${INSTALLED_BIN} subsystem --config /etc/tidemark/tidemark.json --id \${TIDEMARK_ID} --log /var/log/tidemark/subsystem.log`);
    expect(setting(rcm, "ExecStart")).toBe(`${INSTALLED_BIN} rcm --config /etc/tidemark/tidemark.json --log /var/log/tidemark/rcm.log`);
    expect(setting(sub, "Requires")).toBe("tidemark-subsystem.socket");
    expect(setting(sub, "EnvironmentFile")).toBe("/etc/tidemark/subsystem.env");
    expect(setting(sock, "Service")).toBe("tidemark-subsystem.service");
    expect(setting(sock, "Accept")).toBe("no");
    // Both start after the clock is synchronized (clock "realtime", docs/deploy.md).
    for (const u of [sub, rcm]) expect(setting(u, "After")).toContain("time-sync.target");
  });

  it("systemd-analyze verify: the units, with ExecStart at this checkout's bin/tidemark, pass without a warning; as shipped, the missing /opt/tidemark binary is the only complaint", (ctx) => {
    if (!ANALYZE) ctx.skip("systemd-analyze is not installed");
    const dir = tempDir();
    for (const u of UNITS) {
      const text = readFileSync(path.join(UNITS_DIR, u), "utf8");
      const copy = text.replaceAll(INSTALLED_BIN, BIN);
      // Only ExecStart lines change.
      const changed = text.split("\n").filter((l, i) => l !== copy.split("\n")[i]);
      expect(changed.every((l) => l.startsWith("ExecStart="))).toBe(true);
      writeFileSync(path.join(dir, u), copy);
    }
    const ok = verify(dir, UNITS);
    expect(ok.output).toBe("");
    expect(ok.code).toBe(0);

    const shipped = verify(UNITS_DIR, UNITS);
    const complaints = shipped.output.split("\n").filter(Boolean);
    expect(complaints.sort()).toEqual([
      `tidemark-rcm.service: Command ${INSTALLED_BIN} is not executable: No such file or directory`,
      `tidemark-subsystem.service: Command ${INSTALLED_BIN} is not executable: No such file or directory`,
    ]);

    // The check bites: a socket unit without a Listen setting is refused.
    writeFileSync(path.join(dir, "tidemark-subsystem.socket"), readFileSync(path.join(UNITS_DIR, "tidemark-subsystem.socket"), "utf8").replace(/^ListenStream=/m, "Listen="));
    const bad = verify(dir, ["tidemark-subsystem.socket"]);
    expect(bad.code).not.toBe(0);
    expect(bad.output).toMatch(/no Listen setting/);
  });

  it("socket activation: the subsystem unit's ExecStart, run as its socket unit runs it, serves NBD on the socket's port", async (ctx) => {
    if (!ACTIVATE) ctx.skip("systemd-socket-activate is not installed");
    const dir = tempDir();
    const nbdPort = await freePort();
    const config = {
      clusterKeyFile: "cluster.key",
      dataDir: "data",
      subsystems: [{ id: 1, host: "127.0.0.1", replicationPort: await freePort(), nbdPort, defaultExport: "v1", volumes: [{ name: "v1", sizeMiB: 4 }] }],
    };
    writeFileSync(path.join(dir, "tidemark.json"), JSON.stringify(config));
    // ExecStart as systemd runs it: ${TIDEMARK_ID} from the example env file, then split into words.
    const env = Object.fromEntries(
      readFileSync(path.join(UNITS_DIR, "subsystem.env.example"), "utf8")
        .split("\n")
        .filter((l) => /^[A-Z_]+=/.test(l))
        .map((l) => [l.slice(0, l.indexOf("=")), l.slice(l.indexOf("=") + 1)]),
    );
    const unit = readFileSync(path.join(UNITS_DIR, "tidemark-subsystem.service"), "utf8");
    const argv = setting(unit, "ExecStart")!
      .replace(/\$\{(\w+)\}/g, (_, k: string) => env[k])
      .split(" ")
      .map((w) => w.replace(INSTALLED_BIN, BIN).replace("/etc/tidemark/tidemark.json", path.join(dir, "tidemark.json")).replace("/var/log/tidemark", dir));
    expect(argv.slice(1, 6)).toEqual(["subsystem", "--config", path.join(dir, "tidemark.json"), "--id", "1"]);
    const socket = readFileSync(path.join(UNITS_DIR, "tidemark-subsystem.socket"), "utf8");
    expect(setting(socket, "ListenStream")).toMatch(/^\d+$/);
    // The socket unit's ListenStream, on a free loopback port here; Accept=no: one listening socket as fd 3.
    const proc = spawn("systemd-socket-activate", ["--listen", `127.0.0.1:${nbdPort}`, ...argv], { stdio: ["ignore", "ignore", "pipe"] });
    let stderr = "";
    proc.stderr.on("data", (d) => (stderr += d));
    try {
      // systemd-socket-activate says when it has bound the port (as systemd would have at boot), then execs the command.
      await new Promise<void>((resolve, reject) => {
        const check = () => (/Listening on .* as 3/.test(stderr) ? resolve() : undefined);
        proc.stderr.on("data", check);
        proc.once("exit", (code) => reject(new Error(`systemd-socket-activate exited (${code}): ${stderr}`)));
        check();
      });
      // The port is bound before the subsystem serves: the connection waits in the backlog until it does.
      const nbd = await NbdClient.connect({ host: "127.0.0.1", port: nbdPort, exportName: "v1" });
      const data = Buffer.alloc(4096, 0x5a);
      await nbd.write(8192, data);
      expect((await nbd.read(8192, 4096)).equals(data)).toBe(true);
      await nbd.close();
      // The ready line goes to stderr under socket activation, naming the inherited fd.
      expect(stderr).toContain('"nbd":"fd 3"');
      expect(readFileSync(path.join(dir, "subsystem.log"), "utf8")).toMatch(/subsystem serving/);
    } finally {
      const gone = new Promise((r) => proc.once("exit", r));
      proc.kill("SIGTERM");
      await gone;
    }
  });
});

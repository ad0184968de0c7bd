// Issue 13's two memory scenarios against a real subsystem process, with its
// RSS read from /proc: (reads) N connections pipeline 4 MiB READs and never
// read a reply; (writes) N connections each send a 4 MiB WRITE one byte
// short and hold it. Loopback only; every socket is closed at the end.
//   nice -n 10 node --import tsx scripts/nbd-rss.ts --bin bin/tidemark reads|writes [--conns N] [--hold-s S]
import { spawn } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { createInterface } from "node:readline";
import { NBD_CMD_READ, NBD_CMD_WRITE, NBD_FLAG_C_FIXED_NEWSTYLE, NBD_FLAG_C_NO_ZEROES, NBD_OPT_EXPORT_NAME, encodeClientFlags, encodeOption, encodeRequestHeader } from "../appliance/nbd/protocol.ts";

const MiB = 1024 * 1024;
const args = process.argv.slice(2);
const opt = (name: string, dflt: string) => {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : dflt;
};
const bin = path.resolve(opt("--bin", "bin/tidemark"));
const scenario = args.find((a) => a === "reads" || a === "writes") ?? "reads";
const conns = Number(opt("--conns", scenario === "reads" ? "32" : "50"));
const holdS = Number(opt("--hold-s", "5"));
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function freePort(): Promise<number> {
  return new Promise((resolve) => {
    const s = net.createServer().listen(0, "127.0.0.1", () => {
      const p = (s.address() as net.AddressInfo).port;
      s.close(() => resolve(p));
    });
  });
}

function rssMiB(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, "utf8"));
  return m ? Math.round(Number(m[1]) / 1024) : -1;
}

/** Handshake with EXPORT_NAME (no zeroes), then leave the socket unread. */
async function open(port: number): Promise<net.Socket> {
  const s = net.connect({ host: "127.0.0.1", port });
  s.on("error", () => {});
  let got = 0;
  await new Promise<void>((resolve, reject) => {
    s.once("error", reject);
    s.on("data", (d: Buffer) => {
      got += d.length;
      if (got >= 18 + 10) {
        s.removeAllListeners("data");
        s.pause();
        resolve();
      }
    });
    s.write(Buffer.concat([encodeClientFlags(NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES), encodeOption(NBD_OPT_EXPORT_NAME, Buffer.from("v1"))]));
  });
  return s;
}

const dir = mkdtempSync(path.join(os.tmpdir(), "tm-nbd-rss-"));
const nbdPort = await freePort();
const config = path.join(dir, "config.json");
writeFileSync(
  config,
  JSON.stringify({
    clusterKey: "rss-measure-key-0123456789",
    dataDir: "data",
    logLevel: "warn",
    subsystems: [{ id: 1, host: "127.0.0.1", replicationPort: await freePort(), nbdPort, volumes: [{ name: "v1", sizeMiB: 64 }] }],
  }),
);
const proc = spawn(process.execPath, [bin, "subsystem", "--config", config, "--id", "1", "--log", path.join(dir, "ss1.log")], { stdio: ["ignore", "pipe", "inherit"] });
await new Promise<void>((resolve, reject) => {
  createInterface({ input: proc.stdout! }).on("line", (l) => l.includes('"ready":true') && resolve());
  proc.once("exit", (c) => reject(new Error(`subsystem exited ${c}`)));
});
const pid = proc.pid!;
await sleep(1000);
const base = rssMiB(pid);
const sockets: net.Socket[] = [];
for (let i = 0; i < conns; i++) {
  const s = await open(nbdPort);
  sockets.push(s);
  if (scenario === "reads") {
    // 64 x 4 MiB = 256 MiB asked per connection.
    s.write(Buffer.concat(Array.from({ length: 64 }, (_, k) => encodeRequestHeader({ flags: 0, type: NBD_CMD_READ, cookie: BigInt(k), offset: (k % 16) * 4 * MiB, length: 4 * MiB }))));
  } else {
    s.write(encodeRequestHeader({ flags: 0, type: NBD_CMD_WRITE, cookie: 1n, offset: 0, length: 4 * MiB }));
    s.write(Buffer.alloc(4 * MiB - 1, 0x5a));
  }
}
let peak = base;
const t0 = Date.now();
const samples: string[] = [];
while (Date.now() - t0 < holdS * 1000) {
  await sleep(250);
  const r = rssMiB(pid);
  peak = Math.max(peak, r);
  if ((Date.now() - t0) % 5000 < 250) samples.push(`${Math.round((Date.now() - t0) / 1000)}s=${r}`);
}
const end = rssMiB(pid);
const open_ = sockets.filter((s) => !s.destroyed).length;
console.log(JSON.stringify({ scenario, conns, holdS, baseMiB: base, peakMiB: peak, endMiB: end, samples, clientSocketsOpen: open_ }));
for (const s of sockets) s.destroy();
proc.kill("SIGTERM");
await new Promise((r) => proc.once("exit", r));
rmSync(dir, { recursive: true, force: true });

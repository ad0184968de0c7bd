// NBD over TLS (NBD_OPT_STARTTLS) against real clients: nbdinfo, nbdcopy,
// qemu-io/qemu-img and fio with PSK (psktool's keys.psk) and with X.509
// (a CA, a server certificate and a client certificate, made here with
// certtool). A wrong PSK or an untrusted client certificate is refused and
// the refusal is logged with the peer address; with tls "require" the server
// says nothing of its exports before TLS is up. A missing tool skips its
// test and says so on stderr.
import { execFile } from "node:child_process";
import { randomBytes } from "node:crypto";
import { chmod, cp, mkdir, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it, onTestFinished } from "vitest";
import * as p from "../../appliance/nbd/protocol.ts";
import { loadNbdTls } from "../../appliance/nbd/tls-setup.ts";
import { NbdOptionSession } from "../support/nbd-client.ts";
import { startNbdFixture, type NbdFixture } from "../support/nbd-fixture.ts";
import { haveCerttool, makeTlsMaterial, type TlsMaterial } from "../support/tls-material.ts";
import { nbdTools } from "../support/tools.ts";

const run = promisify(execFile);
const MiB = 1024 * 1024;
const TOOLS = nbdTools("nbd tls");
const HAVE_CERTTOOL = haveCerttool("nbd tls");

let dir: string;
let m: TlsMaterial;
let psk: NbdFixture;
let x509: NbdFixture | undefined;

beforeAll(async () => {
  dir = await mkdtemp(path.join(tmpdir(), "tm-nbd-tls-"));
  m = await makeTlsMaterial(dir, HAVE_CERTTOOL);
  const exports = [
    { name: "disk", sizeBytes: 32 * MiB, description: "tls disk" },
    { name: "fio", sizeBytes: 16 * MiB },
  ];
  psk = await startNbdFixture(exports, { server: { tlsMode: "require", tls: loadNbdTls("require", { pskFile: m.pskFile }) } });
  if (HAVE_CERTTOOL) {
    const tls = loadNbdTls("require", { certFile: m.serverCert, keyFile: m.serverKey, caFile: m.caCert });
    x509 = await startNbdFixture(exports, { server: { tlsMode: "require", tls } });
  }
}, 120_000);
afterAll(async () => {
  await psk?.stop();
  await x509?.stop();
  await rm(dir, { recursive: true, force: true });
});

// libnbd 1.14 takes the PSK username from the URI's user part; the
// tls-username= query parameter is newer than it.
const pskUri = (fx: NbdFixture, name: string, file = m.pskFile) => `nbds://alice@${fx.host}:${fx.port}/${name}?tls-psk-file=${file}`;
const certUri = (fx: NbdFixture, name: string, certDir = m.clientDir) => `nbds://${fx.host}:${fx.port}/${name}?tls-certificates=${certDir}`;

function failure(e: unknown): string {
  return typeof e === "object" && e !== null && "stderr" in e ? String((e as { stderr: string }).stderr) : String(e);
}

function logged(fx: NbdFixture, msg: RegExp): { peer?: string; err?: string }[] {
  return fx.logs.filter((l) => msg.test(l.msg)) as { peer?: string; err?: string }[];
}

describe("nbd tls: real clients", () => {
  it.skipIf(!TOOLS.nbdinfo)("nbdinfo: PSK over nbds:// (tls-psk-file=, user alice) reports the export", async () => {
    const { stdout } = await run("nbdinfo", ["--json", pskUri(psk, "disk")]);
    const j = JSON.parse(stdout) as { exports: { "export-size": number; "export-name": string }[] };
    expect(j.exports[0]).toMatchObject({ "export-name": "disk", "export-size": 32 * MiB });
    expect(logged(psk, /TLS established/).length).toBeGreaterThan(0);
  });

  it.skipIf(!TOOLS.nbdinfo || !HAVE_CERTTOOL)("nbdinfo: X.509 over nbds:// (tls-certificates= dir with a client certificate)", async () => {
    const fx = x509 as NbdFixture;
    const { stdout } = await run("nbdinfo", ["--json", certUri(fx, "disk")]);
    expect((JSON.parse(stdout) as { exports: { "export-size": number }[] }).exports[0]["export-size"]).toBe(32 * MiB);
  });

  it.skipIf(!TOOLS.nbdinfo)("nbdinfo: a wrong PSK is refused, and the refusal is logged with the peer address", async () => {
    const before = logged(psk, /TLS handshake failed/).length;
    const e = await run("nbdinfo", [pskUri(psk, "disk", m.wrongPskFile)]).catch((err: unknown) => err);
    expect(failure(e)).toMatch(/handshake|TLS|alert/i);
    const lines = logged(psk, /TLS handshake failed/);
    expect(lines.length).toBe(before + 1);
    expect(lines[lines.length - 1].peer).toMatch(/^127\.0\.0\.1:\d+$/);
  });

  it.skipIf(!TOOLS.nbdinfo || !HAVE_CERTTOOL)("nbdinfo: an untrusted client certificate is refused and logged with the peer address", async () => {
    const fx = x509 as NbdFixture;
    const e = await run("nbdinfo", [certUri(fx, "disk", m.untrustedClientDir)]).catch((err: unknown) => err);
    expect(failure(e)).not.toBe("");
    const lines = logged(fx, /TLS client certificate refused|TLS handshake failed/);
    expect(lines.length).toBeGreaterThan(0);
    expect(lines[lines.length - 1].peer).toMatch(/^127\.0\.0\.1:\d+$/);
    expect(lines[lines.length - 1].err).toMatch(/self[- ]signed|certificate/i);
  });

  it.skipIf(!TOOLS.nbdinfo)("nbdinfo: a cleartext client of a tls require server learns nothing (no list, no size)", async () => {
    const e = await run("nbdinfo", ["--list", `nbd://${psk.host}:${psk.port}/`]).catch((err: unknown) => err);
    const text = failure(e) + (typeof e === "object" && e !== null && "stdout" in e ? String((e as { stdout: string }).stdout) : "");
    expect(e).toBeInstanceOf(Error);
    expect(text).not.toMatch(/tls disk|33554432/);
    // libnbd 1.14 shows ERR_TLS_REQD as "Operation not supported"; the server says why.
    expect(psk.logs.some((l) => l.msg === "nbd: option refused" && /TLS is required/.test(String(l.reason)))).toBe(true);
  });

  it.skipIf(!TOOLS.nbdcopy)("nbdcopy: a random 8 MiB image in and out over PSK TLS is byte-identical", async () => {
    const src = path.join(dir, "src.img");
    const out = path.join(dir, "out.img");
    const image = randomBytes(8 * MiB);
    await writeFile(src, image);
    // The export is larger than the image: copy out only the image's bytes.
    await run("nbdcopy", [src, pskUri(psk, "disk")]);
    await run("nbdcopy", ["--", pskUri(psk, "disk"), out]);
    expect((await readFile(out)).subarray(0, image.length).equals(image)).toBe(true);
  });

  it.skipIf(!TOOLS.nbdcopy || !HAVE_CERTTOOL)("nbdcopy: out over X.509 TLS reads what PSK TLS wrote on another server's export", async () => {
    const fx = x509 as NbdFixture;
    const src = path.join(dir, "src2.img");
    const out = path.join(dir, "out2.img");
    const image = randomBytes(4 * MiB);
    await writeFile(src, image);
    await run("nbdcopy", [src, certUri(fx, "disk")]);
    await run("nbdcopy", ["--", certUri(fx, "disk"), out]);
    expect((await readFile(out)).subarray(0, image.length).equals(image)).toBe(true);
  });

  it.skipIf(!TOOLS.qemuIo)("qemu-io: tls-creds-psk writes patterns, reads them back; qemu-img info sees the size", async () => {
    const obj = `tls-creds-psk,id=tls0,endpoint=client,dir=${m.pskDir},username=alice`;
    const image = `driver=nbd,host=${psk.host},port=${psk.port},export=disk,tls-creds=tls0`;
    const { stdout, stderr } = await run("qemu-io", ["--object", obj, "--image-opts", image, "-c", "write -P 0x3c 1M 256k", "-c", "read -P 0x3c 1M 256k", "-c", "flush"]);
    expect(stderr).toBe("");
    expect(stdout).not.toMatch(/Pattern verification failed|error/i);
    expect(stdout).toMatch(/^read 262144\/262144 bytes/m);
    const info = await run("qemu-img", ["info", "--output=json", "--object", obj, "--image-opts", image]);
    expect((JSON.parse(info.stdout) as { "virtual-size": number })["virtual-size"]).toBe(32 * MiB);
  });

  it.skipIf(!TOOLS.qemuIo || !HAVE_CERTTOOL)("qemu-io: tls-creds-x509 with a client certificate writes and reads back", async () => {
    const fx = x509 as NbdFixture;
    const obj = `tls-creds-x509,id=tls0,endpoint=client,dir=${m.clientDir}`;
    const image = `driver=nbd,host=${fx.host},port=${fx.port},export=disk,tls-creds=tls0`;
    const { stdout } = await run("qemu-io", ["--object", obj, "--image-opts", image, "-c", "write -P 0x71 2M 64k", "-c", "read -P 0x71 2M 64k"]);
    expect(stdout).not.toMatch(/Pattern verification failed|error/i);
    expect(stdout).toMatch(/^read 65536\/65536 bytes/m);
  });

  it.skipIf(!TOOLS.qemuIo)("qemu-img: a wrong PSK is refused", async () => {
    const obj = `tls-creds-psk,id=tls0,endpoint=client,dir=${m.wrongPskDir},username=alice`;
    const image = `driver=nbd,host=${psk.host},port=${psk.port},export=disk,tls-creds=tls0`;
    const e = await run("qemu-img", ["info", "--object", obj, "--image-opts", image]).catch((err: unknown) => err);
    expect(failure(e)).toMatch(/TLS|handshake|alert/i);
  });

  // fio's libnbd refuses URI parameters that name local files (tls-psk-file,
  // tls-certificates): nbd_set_uri_allow_local_file is not called. PSK has no
  // default file, so fio cannot do TLS-PSK; X.509 works through libnbd's
  // default certificate folder, $HOME/.pki/libnbd, from which libnbd 1.14
  // takes the CA to check the server but sends no client certificate: the
  // server here asks for none (no caFile).
  it.skipIf(!TOOLS.fioNbd || !HAVE_CERTTOOL)("fio: randwrite with verify through the nbd engine over X.509 TLS ($HOME/.pki/libnbd; 8 MiB, iodepth 16)", async () => {
    const tls = loadNbdTls("require", { certFile: m.serverCert, keyFile: m.serverKey });
    const fx = await startNbdFixture([{ name: "fio", sizeBytes: 16 * MiB }], { server: { tlsMode: "require", tls } });
    onTestFinished(() => fx.stop());
    const home = path.join(dir, "fio-home");
    await mkdir(path.join(home, ".pki"), { recursive: true });
    await cp(m.clientDir, path.join(home, ".pki", "libnbd"), { recursive: true });
    const { stdout } = await run(
      "fio",
      ["--name=tm-nbd-tls", "--ioengine=nbd", `--uri=nbds://${fx.host}:${fx.port}/fio`, "--rw=randwrite", "--bs=4k", "--size=8M", "--iodepth=16", "--verify=crc32c", "--do_verify=1", "--output-format=json"],
      { cwd: dir, env: { ...process.env, HOME: home } },
    );
    // fio prints a "connected" line of the nbd engine before its JSON.
    const job = (JSON.parse(stdout.slice(stdout.indexOf("{"))) as { jobs: { error: number; write: { io_bytes: number } }[] }).jobs[0];
    expect(job.error).toBe(0);
    expect(job.write.io_bytes).toBe(8 * MiB);
    expect(logged(fx, /TLS established/).length).toBeGreaterThan(0);
  });
});

describe("nbd tls: the server's own checks", () => {
  it("require: before STARTTLS every option but STARTTLS and ABORT gets ERR_TLS_REQD, and no reply names or sizes an export", async () => {
    const s = await NbdOptionSession.open(psk.host, psk.port);
    const seen: Buffer[] = [];
    for (const [option, data] of [
      [p.NBD_OPT_LIST, Buffer.alloc(0)],
      [p.NBD_OPT_INFO, p.encodeInfoRequest("disk", [p.NBD_INFO_NAME, p.NBD_INFO_DESCRIPTION])],
      [p.NBD_OPT_GO, p.encodeInfoRequest("", [])],
      [p.NBD_OPT_STRUCTURED_REPLY, Buffer.alloc(0)],
    ] as const) {
      const replies = await s.option(option, data);
      expect(replies.map((r) => r.replyType)).toEqual([p.NBD_REP_ERR_TLS_REQD]);
      seen.push(...replies.map((r) => r.data));
    }
    const all = Buffer.concat(seen).toString("latin1");
    expect(all).not.toMatch(/disk|fio|tls disk/);
    // EXPORT_NAME cannot be refused with a reply: the server closes.
    s.socket.write(p.encodeOption(p.NBD_OPT_EXPORT_NAME, Buffer.from("disk")));
    await expect(s.reader.read(1)).rejects.toThrow();
  });

  it("keys: a key or PSK file readable by group or others is refused with an error naming the file", async () => {
    const f = path.join(dir, "open.psk");
    await writeFile(f, `alice:${randomBytes(32).toString("hex")}\n`);
    await chmod(f, 0o640);
    expect(() => loadNbdTls("on", { pskFile: f })).toThrow(new RegExp(`${f.replace(/[.]/g, "\\.")} is readable by group or others \\(mode 640\\)`));
    await chmod(f, 0o600);
    expect(loadNbdTls("on", { pskFile: f })?.kind).toBe("psk");
    expect(() => loadNbdTls("on", { pskFile: path.join(dir, "missing.psk") })).toThrow(/missing\.psk.*ENOENT/);
    await writeFile(f, "alice\n", { mode: 0o600 });
    expect(() => loadNbdTls("on", { pskFile: f })).toThrow(/line 1: expected username:hexkey/);
    if (HAVE_CERTTOOL) {
      await chmod(m.serverKey, 0o644);
      try {
        expect(() => loadNbdTls("on", { certFile: m.serverCert, keyFile: m.serverKey })).toThrow(/server-key\.pem is readable by group or others/);
      } finally {
        await chmod(m.serverKey, 0o600);
      }
    }
    expect(() => loadNbdTls("on", {})).toThrow(/needs certFile and keyFile, or pskFile/);
  });
});

// Serves one file over NBD, for interop tests that let a client start the
// server itself: `nbdinfo -- [ node --import tsx test/support/nbd-test-server.ts --file X ]`.
// Under systemd-style socket activation (LISTEN_PID is us, LISTEN_FDS >= 1)
// it serves fd 3; otherwise it listens on --host/--port and prints the address.
import { parseArgs } from "node:util";
import pino from "pino";
import { NbdServer } from "../../appliance/nbd/server.ts";
import { FileExport, fileExportProvider } from "./file-export.ts";

const SD_LISTEN_FDS_START = 3;

const { values } = parseArgs({
  options: {
    file: { type: "string" },
    name: { type: "string", default: "" },
    "read-only": { type: "boolean", default: false },
    host: { type: "string", default: "127.0.0.1" },
    port: { type: "string", default: "0" },
    "max-payload": { type: "string", default: String(32 * 1024 * 1024) },
  },
});
if (!values.file) {
  process.stderr.write("usage: nbd-test-server.ts --file PATH [--name NAME] [--read-only] [--host H --port P]\n");
  process.exit(2);
}

const logger = pino({ level: process.env.TM_NBD_LOG_LEVEL ?? "warn" }, pino.destination(2));
const exp = await FileExport.open(values.file, { name: values.name, readOnly: values["read-only"] });
// The file's export is also the default, so an empty name works.
const server = new NbdServer({ exports: fileExportProvider([exp], exp.name), logger, maxPayloadBytes: Number(values["max-payload"]) });

const activated = process.env.LISTEN_PID === String(process.pid) && Number(process.env.LISTEN_FDS ?? "0") >= 1;
if (activated) {
  await server.listenFd(SD_LISTEN_FDS_START);
} else {
  const a = await server.listen(values.host, Number(values.port));
  process.stdout.write(`listening ${a.host}:${a.port}\n`);
}

const stop = () => {
  void server.close().then(() => exp.close()).then(() => process.exit(0));
};
process.on("SIGTERM", stop);
process.on("SIGINT", stop);

// Entry for `tidemark rcm`: runs the remote copy manager until SIGTERM/SIGINT.
import pino from "pino";
import { loadConfig } from "../../config/load.ts";
import { RemoteCopyManager } from "./manager.ts";
import { withControlIdentity } from "../cli/control-client.ts";
import { LogFile } from "../logging/log-file.ts";

export async function rcmMain(configFile: string, logFile?: string): Promise<void> {
  const topo = loadConfig(configFile);
  // A full or slow log disk costs log lines, never the RCM's suspensions (README, Logs).
  const logSink = logFile ? new LogFile(logFile, topo.config.logBufferKiB * 1024) : null;
  const dest = logSink ?? pino.destination(1);
  const logger = pino({ level: topo.config.logLevel, base: { rcm: true } }, dest);
  if (logSink) {
    logSink.onRecovered = (dropped, sinceMs, cause) =>
      logger.warn({ droppedLines: dropped, since: new Date(sinceMs).toISOString(), cause, file: logFile, droppedSinceStart: logSink.droppedLines }, "log lines were dropped: the log file could not be written");
  }
  // Its control connections to the subsystems present the TLS identity "rcm".
  const rcm = new RemoteCopyManager(withControlIdentity(topo, "rcm"), logger);
  await rcm.start();
  process.stdout.write(JSON.stringify({ ready: true, rcm: true, pid: process.pid, port: topo.config.rcm!.port }) + "\n");
  const onSignal = () => {
    void rcm.stop().then(async () => {
      await logSink?.drain(1000);
      dest.flushSync?.();
      process.exit(0);
    });
  };
  process.once("SIGTERM", onSignal);
  process.once("SIGINT", onSignal);
}

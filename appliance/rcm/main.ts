// Entry for `tidemark rcm`: runs the remote copy manager until SIGTERM/SIGINT.
import pino from "pino";
import { loadConfig } from "../../config/load.ts";
import { RemoteCopyManager } from "./manager.ts";

export async function rcmMain(configFile: string, logFile?: string): Promise<void> {
  const topo = loadConfig(configFile);
  const dest = logFile ? pino.destination({ dest: logFile, mkdir: true, sync: false }) : pino.destination(1);
  const logger = pino({ level: topo.config.logLevel, base: { rcm: true } }, dest);
  const rcm = new RemoteCopyManager(topo, logger);
  await rcm.start();
  process.stdout.write(JSON.stringify({ ready: true, rcm: true, pid: process.pid, port: topo.config.rcm!.port }) + "\n");
  const onSignal = () => {
    void rcm.stop().then(() => {
      dest.flushSync?.();
      process.exit(0);
    });
  };
  process.once("SIGTERM", onSignal);
  process.once("SIGINT", onSignal);
}

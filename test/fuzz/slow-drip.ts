// A slow-drip client (slowloris): a handshake fed a few bytes at a time, each
// well inside any idle timeout, never finished. A handshake bound must be a
// deadline from accept, or one client holds a connection (and its memory)
// for as long as it likes: NBD allows up to 1024 options, each of which may
// come just before the idle timeout. Not seeded: the bytes are fixed.
import net from "node:net";
import { encodeFrame } from "../../appliance/replication/frames.ts";
import { u32be } from "./draw.ts";

export interface DripResult {
  port: "nbd" | "replication";
  /** How long the server kept the connection, or null if it was still open when the client gave up. */
  closedAfterMs: number | null;
  bytesSent: number;
  givenUpAfterMs: number;
}

/** Feeds `piece()` every intervalMs until the server closes or giveUpMs passes. */
export function slowDrip(port: "nbd" | "replication", at: { host: string; port: number }, intervalMs: number, giveUpMs: number): Promise<DripResult> {
  const listOption = Buffer.concat([Buffer.from("IHAVEOPT", "ascii"), u32be(3), u32be(0)]);
  // The hello of a control client, then an auth frame a byte at a time (the link server waits for it whole).
  const hello = encodeFrame({ type: "hello", role: "control", nodeId: 0, nonce: Buffer.alloc(32, 7) });
  const auth = encodeFrame({ type: "auth", mac: Buffer.alloc(32, 9) });
  let i = 0;
  const piece = (): Buffer => {
    i++;
    if (port === "nbd") return i === 1 ? Buffer.concat([u32be(3), listOption]) : listOption;
    return i === 1 ? hello : auth.subarray(i - 2, i - 1);
  };
  const started = Date.now();
  return new Promise((resolve) => {
    const socket = net.connect(at);
    let sent = 0;
    let timer: NodeJS.Timeout | undefined;
    const done = (closed: boolean) => {
      clearInterval(timer);
      clearTimeout(giveUp);
      socket.destroy();
      resolve({ port, closedAfterMs: closed ? Date.now() - started : null, bytesSent: sent, givenUpAfterMs: giveUpMs });
    };
    const giveUp = setTimeout(() => done(false), giveUpMs);
    socket.on("error", () => {});
    socket.on("data", () => {});
    socket.on("close", () => done(true));
    socket.on("connect", () => {
      const send = () => {
        const b = piece();
        sent += b.length;
        socket.write(b);
      };
      send();
      timer = setInterval(send, intervalMs);
    });
  });
}

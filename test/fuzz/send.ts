// Runs one fuzz input on a real TCP connection: writes its steps up to the
// cut, reads and discards whatever the server sends, then half-closes and
// waits for the server to close (a hang if it does not within the deadline),
// or drops the connection at once. A connection the server closes early is a
// normal outcome: it refused the input.
import net from "node:net";
import { clientMac } from "../../appliance/replication/link.ts";
import { FrameDecoder, encodeFrame, type Frame } from "../../appliance/replication/frames.ts";
import type { FuzzInput, Step } from "./input.ts";
import { NbdReplyCheck } from "./nbd-replies.ts";

export interface Endpoint {
  host: string;
  port: number;
}

export interface Outcome {
  /** "server": the server closed first; "client": we dropped it (reset ending); "hang": no close within the deadline. */
  closedBy: "server" | "client" | "hang";
  /** Failing to connect at all: the server no longer accepts. */
  connectError?: string;
  /** For an NBD input checked reply by reply: what the server answered wrong (a lost, unknown or repeated reply). */
  replyProblem?: string;
  received: number;
  ms: number;
}

const WRONG_KEY = Buffer.from("fuzz-wrong-key-not-the-cluster-key", "utf8");

export function runInput(input: FuzzInput, at: Endpoint, clusterKey: string, deadlineMs: number): Promise<Outcome> {
  const started = Date.now();
  return new Promise((resolve) => {
    const socket = net.connect({ host: at.host, port: at.port });
    let received = 0;
    const replies = input.nbdReplies ? new NbdReplyCheck(input.nbdReplies) : null;
    let serverClosed = false;
    let settled = false;
    // Frames of the replication handshake, for the auth step; later bytes are only counted.
    const decoder = new FrameDecoder({ payloadMax: 64 * 1024 });
    let decoding = input.port === "replication";
    const frames: Frame[] = [];
    let frameWaiter: (() => void) | null = null;

    const finish = (o: Omit<Outcome, "received" | "ms">): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      socket.destroy();
      resolve({ ...o, received, ms: Date.now() - started });
    };
    const timer = setTimeout(() => finish({ closedBy: "hang" }), input.ending === "stall" ? (input.stallMs ?? deadlineMs) : deadlineMs);
    socket.on("data", (b: Buffer) => {
      received += b.length;
      replies?.push(b);
      if (!decoding) return;
      try {
        frames.push(...decoder.push(b));
      } catch {
        decoding = false;
      }
      frameWaiter?.();
    });
    socket.on("error", () => {});
    socket.on("close", () => {
      serverClosed = true;
      frameWaiter?.();
      if (!settled) finish({ closedBy: "server", replyProblem: replies?.verdict() ?? undefined });
    });
    socket.on("connect", () => {
      void play(input.steps).then(
        () => {
          if (serverClosed || settled) return;
          if (input.ending === "reset") {
            socket.resetAndDestroy();
            finish({ closedBy: "client" });
          } else if (input.ending === "end") socket.end();
          // "wait": the input ended with DISC; "stall": it stopped mid-handshake. The server must close by itself.
        },
        (err: Error) => finish({ closedBy: "hang", connectError: err.message }),
      );
    });
    socket.once("error", (err) => {
      if (!socket.connecting) return;
      finish({ closedBy: "server", connectError: err.message });
    });

    const write = (b: Buffer): Promise<void> =>
      new Promise((res) => {
        if (serverClosed || b.length === 0) return res();
        if (socket.write(b)) res();
        else {
          const done = () => {
            socket.off("drain", done);
            socket.off("close", done);
            res();
          };
          socket.on("drain", done);
          socket.on("close", done);
        }
      });

    const nextFrame = async (type: Frame["type"]): Promise<Frame | null> => {
      for (;;) {
        const i = frames.findIndex((f) => f.type === type || f.type === "error");
        if (i >= 0) return frames.splice(i, 1)[0];
        if (serverClosed || !decoding || settled) return null;
        await new Promise<void>((r) => (frameWaiter = r));
        frameWaiter = null;
      }
    };

    const play = async (steps: Step[]): Promise<void> => {
      let left = input.cutAt ?? Infinity;
      for (const step of steps) {
        if (serverClosed || settled) return;
        if (step.kind === "send") {
          const part = step.bytes.subarray(0, Math.min(step.bytes.length, left));
          await write(part);
          left -= part.length;
          if (left <= 0) return;
          continue;
        }
        const challenge = await nextFrame("challenge");
        if (!challenge || challenge.type !== "challenge") return;
        const key = step.proof === "valid" ? Buffer.from(clusterKey, "utf8") : WRONG_KEY;
        const mac = step.proof === "random" ? Buffer.alloc(32, 0x5a) : clientMac(key, step.clientNonce, challenge.nonce, step.role, step.nodeId);
        await write(encodeFrame({ type: "auth", mac }));
        if (step.proof === "valid") {
          const ready = await nextFrame("ready");
          if (!ready || ready.type !== "ready") return;
          decoding = false;
        }
      }
    };
  });
}

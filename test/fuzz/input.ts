// What one fuzz input is: a connection to one port of one subsystem, the steps
// that run on it, where the client cuts the stream, and how it ends. Pure data,
// a function of the input's seed; docs/fuzzing.md describes the generators.

export type Port = "nbd" | "replication";

export type Step =
  /** Bytes written as they are. */
  | { kind: "send"; bytes: Buffer }
  /**
   * The replication handshake's third step, which depends on the server's
   * nonce: wait for its challenge, then send an auth frame whose proof is right
   * (the cluster key), made with another key, or random bytes. With a right
   * proof the step also waits for `ready`, so the frames after it are read
   * with the post-handshake payload limit.
   */
  | { kind: "auth"; proof: "valid" | "wrong-key" | "random"; role: "link" | "control"; nodeId: number; clientNonce: Buffer };

export interface FuzzInput {
  seed: number;
  subsystem: number;
  port: Port;
  /** Short description of what was generated, e.g. "nbd opt GO(name=bom) → 4 requests". */
  label: string;
  steps: Step[];
  /** Stop after this many bytes of `send` steps (a disconnect at that byte); null sends everything. */
  cutAt: number | null;
  /**
   * After the last byte: half-close and wait for the server to close ("end"),
   * drop at once ("reset"), or wait for the server to close with no FIN
   * ("wait": the input ended with NBD_CMD_DISC).
   */
  ending: "end" | "reset" | "wait" | "stall";
  /** For "stall": the client sends nothing more and keeps the connection; the server must close it within this (its handshake deadline and a margin). */
  stallMs?: number;
  /**
   * Set when the NBD stream is whole (every length, magic and payload right,
   * entered transmission by GO, ends with DISC): the requests the server must
   * answer exactly once before it closes. `readLength` is the data a
   * successful simple READ reply carries; null for other commands.
   */
  nbdReplies?: { cookie: bigint; readLength: number | null }[];
}

export function sendBytes(input: FuzzInput): number {
  return input.steps.reduce((n, s) => n + (s.kind === "send" ? s.bytes.length : 0), 0);
}

/** The bytes of an input as hex, one line per step, for the failure report (payloads longer than `maxBytes` are cut, with their length). */
export function describeInput(input: FuzzInput, maxBytes = 4096): string {
  const lines = [
    `seed ${input.seed}: subsystem #${input.subsystem} ${input.port} port; ${input.label}; ` +
      `${input.cutAt === null ? "all bytes" : `cut after byte ${input.cutAt}`}, then ${input.ending}${input.stallMs ? ` (the server must close within ${input.stallMs} ms)` : ""}`,
  ];
  input.steps.forEach((s, i) => {
    if (s.kind === "auth") lines.push(`  step ${i}: auth (${s.proof} proof as ${s.role} #${s.nodeId}; computed from the server's challenge)`);
    else {
      const hex = s.bytes.subarray(0, maxBytes).toString("hex");
      lines.push(`  step ${i}: send ${s.bytes.length} bytes: ${hex}${s.bytes.length > maxBytes ? ` … (${s.bytes.length - maxBytes} more)` : ""}`);
    }
  });
  return lines.join("\n");
}

// The `verify-start` control request (docs/verify.md): its zod schema and the
// decoding a subsystem does before the verifier sees it. A malformed field is
// TM_BAD_REQUEST naming the field; nothing is started.
import { z } from "zod";
import { tmError } from "../errors/codes.ts";
import { VERIFY_RATE_MIBPS_MAX, type VerifyRequest } from "./verifier.ts";

export const VerifyStartSchema = z.strictObject({
  op: z.literal("verify-start"),
  group: z.string().min(1),
  volume: z.string().min(1).optional(),
  offset: z.number().int().nonnegative().optional(),
  length: z.number().int().positive().optional(),
  rateMiBps: z.number().positive().max(VERIFY_RATE_MIBPS_MAX),
});

export function verifyRequestOf(body: unknown): VerifyRequest {
  const r = VerifyStartSchema.safeParse(body);
  if (!r.success) {
    const i = r.error.issues[0];
    const field = i.path.join(".") || "(body)";
    throw tmError("TM_BAD_REQUEST", `verify-start: ${field}: ${i.message}`, { op: "verify-start", field });
  }
  const { op: _op, ...req } = r.data;
  return req;
}

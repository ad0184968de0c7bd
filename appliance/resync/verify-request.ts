// The `verify-start` control request (docs/verify.md): its schema, the row
// of the subsystem's control-op table (appliance/subsystem/control-ops.ts).
// A malformed field is refused as TM_BAD_REQUEST naming it; nothing is started.
import * as z from "zod/mini";
import "../../config/zod-messages.ts";
import { groupField } from "../control/op-table.ts";
import { VERIFY_RATE_MIBPS_MAX } from "./verifier.ts";

const BYTES_MSG = "must be a whole number of bytes";
export const VerifyStartSchema = z.strictObject({
  group: groupField,
  volume: z.optional(z.string({ error: "must be a volume name" }).check(z.minLength(1, "must be a volume name"))),
  offset: z.optional(z.number({ error: BYTES_MSG }).check(z.int(BYTES_MSG), z.nonnegative(BYTES_MSG))),
  length: z.optional(z.number({ error: BYTES_MSG }).check(z.int(BYTES_MSG), z.positive("must be above 0"))),
  rateMiBps: z.number({ error: "must be a rate in MiB/s" }).check(z.positive("must be above 0"), z.maximum(VERIFY_RATE_MIBPS_MAX, `must be at most ${VERIFY_RATE_MIBPS_MAX}`)),
});

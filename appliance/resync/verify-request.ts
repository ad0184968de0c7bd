// The `verify-start` control request (docs/verify.md): its schema, the row
// of the subsystem's control-op table (appliance/subsystem/control-ops.ts).
// A malformed field is refused as TM_BAD_REQUEST naming it; nothing is started.
import { z } from "zod";
import { groupField } from "../control/op-table.ts";
import { VERIFY_RATE_MIBPS_MAX } from "./verifier.ts";

const BYTES_MSG = "must be a whole number of bytes";
export const VerifyStartSchema = z.strictObject({
  group: groupField,
  volume: z.string({ error: "must be a volume name" }).min(1, "must be a volume name").optional(),
  offset: z.number({ error: BYTES_MSG }).int(BYTES_MSG).nonnegative(BYTES_MSG).optional(),
  length: z.number({ error: BYTES_MSG }).int(BYTES_MSG).positive("must be above 0").optional(),
  rateMiBps: z.number({ error: "must be a rate in MiB/s" }).positive("must be above 0").max(VERIFY_RATE_MIBPS_MAX, `must be at most ${VERIFY_RATE_MIBPS_MAX}`),
});

// The RCM's own control operations (docs/wire.md, Control requests), one row
// each, as the subsystem's are (appliance/subsystem/control-ops.ts): what
// `tidemark suspend`, `takeover`, `resync` and `swap` send to the RCM.
import * as z from "zod/mini";
import "../../config/zod-messages.ts";
import { opsFor, tableOf, flagField, groupField, textField } from "../control/op-table.ts";

export type RcmRole = "rcm";

/** What the handlers use of the RCM (manager.ts). */
export interface RcmTarget {
  suspend(group: string, by: string, reason: string): Promise<unknown>;
  takeover(group: string, dryRun: boolean, by: string, reason: string): Promise<unknown>;
  resync(group: string, reverse: boolean, by: string): Promise<unknown>;
  swap(group: string, by: string, timeoutMs: number): Promise<unknown>;
  status(): unknown;
}

const op = opsFor<RcmTarget, RcmRole>();

export const RCM_OPS = tableOf<RcmTarget, RcmRole>([
  op({
    name: "suspend",
    roles: ["rcm"],
    schema: z.strictObject({ group: groupField, by: z._default(textField, "admin"), reason: z._default(textField, "planned suspension") }),
    handle: (t, r) => t.suspend(r.group, r.by, r.reason),
  }),
  op({
    name: "takeover",
    roles: ["rcm"],
    schema: z.strictObject({ group: groupField, dryRun: z._default(flagField, false), by: z._default(textField, "admin"), reason: z._default(textField, "takeover") }),
    handle: (t, r) => t.takeover(r.group, r.dryRun, r.by, r.reason),
  }),
  op({
    name: "resync",
    roles: ["rcm"],
    schema: z.strictObject({ group: groupField, reverse: z._default(flagField, false), by: z._default(textField, "admin") }),
    handle: (t, r) => t.resync(r.group, r.reverse, r.by),
  }),
  op({
    name: "swap",
    roles: ["rcm"],
    schema: z.strictObject({ group: groupField, by: z._default(textField, "admin"), timeoutMs: z._default(z.number({ error: "must be a number of milliseconds" }).check(z.int("must be whole milliseconds"), z.minimum(1, "must be at least 1 ms"), z.maximum(24 * 3_600_000, "must be at most 24 h")), 120_000) }),
    handle: (t, r) => t.swap(r.group, r.by, r.timeoutMs),
  }),
  op({ name: "status", roles: ["rcm"], schema: z.strictObject({}), handle: (t) => t.status() }),
]);

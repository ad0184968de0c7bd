// The subsystem's control operations (docs/wire.md, Control requests), one
// row each: name, the roles that accept it, the schema of its request, the
// handler. SubsystemCore.handleRequest parses a request against its row, then
// checks the role and the group's lease, then runs the handler: a malformed
// request changes nothing. To add an op, add a row here and a line to docs/wire.md.
import * as z from "zod/mini";
import "../../config/zod-messages.ts";
import type { $ZodLooseShape } from "zod/v4/core";
import { opsFor, tableOf, generationField, groupField, textField, tsField } from "../control/op-table.ts";
import type { PrimaryEngine } from "../primary/primary.ts";
import type { SecondaryEngine } from "../secondary/secondary.ts";
import type { ProcedureLeases } from "./procedure-lease.ts";
import { leaseRequestOf } from "./procedure-lease.ts";
import { tmError } from "../errors/codes.ts";
import { VerifyStartSchema } from "../resync/verify-request.ts";

/** "any": every subsystem answers; "primary"/"secondary": only one that holds that role now (else TM_NO_ROLE). */
export type SubsystemRole = "any" | "primary" | "secondary";

/** What the handlers may use of the subsystem: its core, seen through this interface. */
export interface ControlTarget {
  status(): unknown;
  stamp(): { lastStamp: string; nowNs: string };
  /** The engine of that role; the dispatcher has checked it exists. */
  primary(): PrimaryEngine;
  secondary(): SecondaryEngine;
  readonly leases: ProcedureLeases;
  turn(group: string, direction: "forward" | "reverse", generation: number, ts: bigint): Promise<unknown>;
}

const op = opsFor<ControlTarget, SubsystemRole>();

/** A lease rides along on every request of a leased procedure (appliance/rcm/lease.ts); procedure-lease.ts checks its fields. */
const leaseField = z.optional(z.unknown());
const grouped = <T extends $ZodLooseShape>(shape: T) => z.strictObject({ group: groupField, lease: leaseField, ...shape });
const RUNS_MSG = "must map volume names to [first, count] runs";
const blockCount = z.number({ error: RUNS_MSG }).check(z.int(RUNS_MSG), z.minimum(0, RUNS_MSG));
const blockRuns = z.record(z.string(), z.array(z.tuple([blockCount, blockCount], { error: RUNS_MSG }), { error: RUNS_MSG }), { error: RUNS_MSG });

export const SUBSYSTEM_OPS = tableOf<ControlTarget, SubsystemRole>([
  op({ name: "status", roles: ["any"], schema: z.strictObject({}), handle: (t) => t.status() }),
  // Every write acknowledged to a host so far has ts <= lastStamp.
  op({ name: "stamp", roles: ["any"], schema: z.strictObject({}), handle: (t) => t.stamp() }),
  // The after-failure procedure's steps, driven by the RCM (docs/takeover.md).
  op({
    name: "fence",
    roles: ["secondary"],
    leased: true,
    schema: grouped({ generation: generationField, by: z._default(textField, "rcm"), reason: z._default(textField, "") }),
    handle: (t, r) => t.secondary().fence(r.group, r.generation, r.by, r.reason),
  }),
  op({ name: "preview", roles: ["secondary"], schema: grouped({ ts: tsField }), handle: (t, r) => t.secondary().preview(r.group, r.ts) }),
  op({
    name: "apply-ts",
    roles: ["secondary"],
    leased: true,
    schema: grouped({ generation: generationField, ts: tsField }),
    handle: (t, r) => t.secondary().applySynchronizedTime(r.group, r.generation, r.ts),
  }),
  op({ name: "takeover", roles: ["secondary"], leased: true, schema: grouped({ generation: generationField }), handle: (t, r) => t.secondary().takeover(r.group, r.generation) }),
  op({
    name: "primary-suspend",
    roles: ["primary"],
    leased: true,
    schema: grouped({ generation: generationField, by: z._default(textField, "rcm"), reason: z._default(textField, "") }),
    handle: async (t, r) => {
      await t.primary().suspend(r.group, "primary-suspend", r.reason, r.by, r.generation);
      return t.primary().preview(r.group);
    },
  }),
  op({
    name: "primary-takeover",
    roles: ["primary"],
    leased: true,
    schema: grouped({ generation: generationField, by: z._default(textField, "rcm"), reason: z._default(textField, "takeover") }),
    handle: async (t, r) => {
      await t.primary().suspend(r.group, "primary-takeover", r.reason, r.by, r.generation);
      return t.primary().preview(r.group);
    },
  }),
  op({ name: "primary-preview", roles: ["primary"], schema: grouped({}), handle: (t, r) => t.primary().preview(r.group) }),
  // Resync (docs/resync.md), driven by the RCM.
  op({ name: "resync-begin", roles: ["secondary"], leased: true, schema: grouped({ generation: generationField }), handle: (t, r) => t.secondary().resyncBegin(r.group, r.generation) }),
  op({
    name: "primary-resync",
    roles: ["primary"],
    leased: true,
    schema: grouped({ generation: generationField, blocks: z._default(blockRuns, {}) }),
    handle: (t, r) => t.primary().resync(r.group, r.generation, r.blocks),
  }),
  // Failback: a turn moves one group between the engines; "any" because a subsystem may hold neither role of it yet.
  op({
    name: "turn",
    roles: ["any"],
    leased: true,
    schema: grouped({ direction: z.enum(["forward", "reverse"], { error: 'must be "forward" or "reverse"' }), generation: generationField, ts: tsField }),
    handle: (t, r) => t.turn(r.group, r.direction, r.generation, r.ts),
  }),
  op({ name: "primary-freeze", roles: ["primary"], leased: true, schema: grouped({}), handle: (t, r) => t.primary().freeze(r.group) }),
  op({
    name: "lease-acquire",
    roles: ["any"],
    schema: z.strictObject({ group: groupField, lease: z.record(z.string(), z.unknown(), { error: "must be the lease object (holder, holderAddress, incarnation, procedure, token, ttlMs)" }) }),
    handle: (t, r) => {
      const req = leaseRequestOf(r.lease, "lease-acquire");
      if (!req) throw tmError("TM_BAD_REQUEST", "lease-acquire: lease is missing", { op: "lease-acquire", field: "lease" });
      return t.leases.acquire(r.group, req);
    },
  }),
  op({ name: "lease-release", roles: ["any"], schema: z.strictObject({ group: groupField, token: z.string({ error: "must be a string" }).check(z.minLength(1, "must not be empty"), z.maxLength(200, "must be at most 200 characters")), lease: leaseField }), handle: (t, r) => t.leases.release(r.group, r.token) }),
  op({ name: "copy-status", roles: ["primary"], schema: grouped({}), handle: (t, r) => t.primary().copyStatus(r.group) }),
  // The online verify (docs/verify.md): the RCM or the CLI starts it on each primary of the group.
  op({ name: "verify-start", roles: ["primary"], schema: VerifyStartSchema, handle: (t, r) => t.primary().verifyStart(r) }),
]);

// Typed control requests (docs/wire.md, Control requests): an operation is
// one row of a table with its name, the roles that accept it, a zod schema of
// its request and its handler. parseRequest() checks a request against its
// row before anything runs, so a malformed one is refused by op and field
// (TM_BAD_REQUEST) and changes nothing. Pure: the handlers are the tables'.
import * as z from "zod/mini";
import "../../config/zod-messages.ts";
import { tmError } from "../errors/codes.ts";

export interface ControlOp<Ctx, Role extends string> {
  name: string;
  /** Roles that accept it; the dispatcher checks them before the handler runs. */
  roles: readonly Role[];
  /** True when the op changes a group's state: a procedure's lease guards it (docs/takeover.md). */
  leased: boolean;
  schema: z.ZodMiniType;
  handle(ctx: Ctx, req: unknown): unknown;
}

/** A row, typed: `handle` gets what `schema` outputs. */
export interface OpSpec<Ctx, Role extends string, S extends z.ZodMiniType> {
  name: string;
  roles: readonly Role[];
  leased?: boolean;
  schema: S;
  handle(ctx: Ctx, req: z.output<S>): unknown;
}

/** Rows for one table: `const op = opsFor<Ctx, Role>(); const TABLE = [op({...}), ...]`. */
export function opsFor<Ctx, Role extends string>() {
  return <S extends z.ZodMiniType>(spec: OpSpec<Ctx, Role, S>): ControlOp<Ctx, Role> => ({
    name: spec.name,
    roles: spec.roles,
    leased: spec.leased ?? false,
    schema: spec.schema,
    handle: (ctx, req) => spec.handle(ctx, req as z.output<S>),
  });
}

export function tableOf<Ctx, Role extends string>(rows: readonly ControlOp<Ctx, Role>[]): ReadonlyMap<string, ControlOp<Ctx, Role>> {
  const m = new Map<string, ControlOp<Ctx, Role>>();
  for (const r of rows) {
    if (m.has(r.name)) throw new Error(`control op ${r.name} is in the table twice`);
    m.set(r.name, r);
  }
  return m;
}

const prefix = (who: string | undefined): string => (who ? `${who}: ` : "");

/** Every request carries its op's name in `op`; the rest is the op's schema's. */
const OP_FIELD = "op";

/**
 * The row and the parsed request of `body`; throws TM_CONTROL_OP for an unknown
 * op and TM_BAD_REQUEST naming op and field for a request its schema refuses.
 * `who` names the answering process in the messages ("rcm"); a subsystem
 * gives none (the control client prefixes "subsystem #N: " to its answers).
 * Messages read `<op>: <field> <why>` (`turn: direction must be "forward" or "reverse"`).
 */
export function parseRequest<Ctx, Role extends string>(table: ReadonlyMap<string, ControlOp<Ctx, Role>>, body: unknown, who?: string): { row: ControlOp<Ctx, Role>; req: unknown } {
  if (typeof body !== "object" || body === null || Array.isArray(body)) {
    throw tmError("TM_BAD_REQUEST", `${prefix(who)}a control request is a JSON object with an "op", not ${JSON.stringify(body) ?? String(body)}`, { field: OP_FIELD });
  }
  const { [OP_FIELD]: name, ...rest } = body as Record<string, unknown>;
  const row = typeof name === "string" ? table.get(name) : undefined;
  if (!row) throw tmError("TM_CONTROL_OP", `${prefix(who)}unknown control operation ${JSON.stringify(name) ?? String(name)}`, { op: String(name) });
  const parsed = row.schema.safeParse(rest);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    // A field the op does not have is named too (strict schemas: a typo is not silently ignored).
    const unknown = issue.code === "unrecognized_keys" ? issue.keys.join(", ") : null;
    const field = unknown ?? (issue.path.length > 0 ? issue.path.map(String).join(".") : "(request)");
    const why = unknown !== null ? "is not a field of this op" : issue.message;
    throw tmError("TM_BAD_REQUEST", `${prefix(who)}${row.name}: ${field} ${why}`, { op: row.name, field });
  }
  return { row, req: parsed.data };
}

// ------------------------------------------------------------ field schemas shared by the tables
// Each message is a predicate on the field: the refusal reads `<op>: <field> <message>`.

const GROUP_MSG = "must be a group name (1-64 letters, digits, '.', '_' or '-')";
export const groupField = z.string({ error: GROUP_MSG }).check(z.regex(/^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/, GROUP_MSG));
const POSITIVE_MSG = "must be a positive integer";
export const generationField = z.number({ error: POSITIVE_MSG }).check(z.refine((n) => Number.isSafeInteger(n) && n >= 1, POSITIVE_MSG));
/** A stamp: decimal digits of an unsigned 64-bit value, sent as a string (JSON numbers lose bits past 2^53). */
const TS_MSG = "must be a decimal timestamp string (u64)";
export const tsField = z.pipe(
  z.string({ error: TS_MSG }).check(
    z.regex(/^\d{1,20}$/, TS_MSG),
    z.refine((s) => BigInt(s) < 1n << 64n, TS_MSG),
  ),
  z.transform((s: string) => BigInt(s)),
);
/** Who asks and why: shown in status and logs; bounded like the wire's strings. */
export const textField = z.string({ error: "must be a string" }).check(z.maxLength(1000, "must be at most 1000 characters"));
export const flagField = z.boolean({ error: "must be true or false" });

// A state machine as a total table (STYLE.md item 8): for every state and every
// event, what the event does there. The group machines of a primary and of a
// secondary (primary/group-state.ts, secondary/group-state.ts) are written this
// way; docs/state-machines.md prints each table and a unit test keeps the two
// equal. Pure: no I/O. Invariant: a table is total (its type has a cell for
// every state and event), and an engine changes a group's state only to what
// `nextState` returns for it.
import { type ErrorCode, tmError } from "./errors/codes.ts";
import { assert } from "./invariant.ts";

/** What an event does in a state. */
export type Outcome<S extends string> =
  /** The group moves to `to`: the same state when the event's work is done again there. */
  | { readonly kind: "to"; readonly to: S }
  /** A control request is answered with this error code (docs/errors.md); nothing changes. */
  | { readonly kind: "refused"; readonly code: ErrorCode }
  /** Nothing changes and the engine does nothing for the event. */
  | { readonly kind: "ignored" }
  /** The engines never raise the event in this state: raising it is a bug. */
  | { readonly kind: "never" };

/** Every state (K, those an engine holds plus pseudo-states such as a group's first start) by every event (E). */
export type TransitionTable<K extends string, E extends string, S extends K> = Readonly<Record<K, Readonly<Record<E, Outcome<S>>>>>;

export const to = <S extends string>(state: S): Outcome<S> => ({ kind: "to", to: state });
export const refused = (code: ErrorCode): Outcome<never> => ({ kind: "refused", code });
export const ignored: Outcome<never> = { kind: "ignored" };
export const never: Outcome<never> = { kind: "never" };

/** The table's cell for a state and an event; a state or event the table does not know is a broken invariant (a state column written by another role, say). */
export function outcome<K extends string, E extends string, S extends K>(machine: string, table: TransitionTable<K, E, S>, state: K, event: E): Outcome<S> {
  const row: Readonly<Record<E, Outcome<S>>> | undefined = Object.hasOwn(table, state) ? table[state] : undefined;
  assert(row !== undefined, `${machine}: '${state}' is not a state of this machine`);
  const out: Outcome<S> | undefined = Object.hasOwn(row, event) ? row[event] : undefined;
  assert(out !== undefined, `${machine}: '${event}' is not an event of this machine`);
  return out;
}

/**
 * The state `event` moves a group in `state` to, or null when the table
 * ignores the event there. A refusal throws an error with the table's code
 * and the engine's message (`refusal`); `never` is a broken invariant.
 */
export function nextState<K extends string, E extends string, S extends K>(
  machine: string,
  table: TransitionTable<K, E, S>,
  state: K,
  event: E,
  refusal?: (code: string) => string,
): S | null {
  const out = outcome(machine, table, state, event);
  switch (out.kind) {
    case "to":
      return out.to;
    case "ignored":
      return null;
    case "refused":
      throw tmError(out.code, refusal?.(out.code) ?? `${machine}: '${event}' is refused in state '${state}'`, { machine, state, event });
    case "never":
      assert(false, `${machine}: event '${event}' raised in state '${state}', where the engine never raises it`);
  }
}

/** A cell as docs/state-machines.md prints it (without backticks): a state, `refused CODE`, `ignored` or `never`. */
export function outcomeText(out: Outcome<string>): string {
  switch (out.kind) {
    case "to":
      return out.to;
    case "refused":
      return `refused ${out.code}`;
    case "ignored":
    case "never":
      return out.kind;
  }
}

/** Every cell of a table as [state, event, outcome], in the table's order. */
export function cells<K extends string, E extends string, S extends K>(table: TransitionTable<K, E, S>): [K, E, Outcome<S>][] {
  return (Object.keys(table) as K[]).flatMap((s) => (Object.keys(table[s]) as E[]).map((e): [K, E, Outcome<S>] => [s, e, table[s][e]]));
}

/** The doc's table of moves: one row `| state | event | next state |` per cell that moves, in the table's order. */
export function movesMarkdown<K extends string, E extends string, S extends K>(table: TransitionTable<K, E, S>): string {
  const rows = cells(table).flatMap(([s, e, out]) => (out.kind === "to" ? [`| \`${s}\` | \`${e}\` | \`${out.to}\` |`] : []));
  return ["| state | event | next state |", "| --- | --- | --- |", ...rows].join("\n");
}

/**
 * The doc's table of refusals and ignored events: one row `| event | outcome |
 * in states |` per event and outcome. Cells that are `never` are not printed:
 * the doc says that every pair in neither table is one.
 */
export function refusedOrIgnoredMarkdown<K extends string, E extends string, S extends K>(table: TransitionTable<K, E, S>): string {
  const byEvent = new Map<E, Map<string, K[]>>();
  for (const [s, e, out] of cells(table)) {
    if (out.kind !== "refused" && out.kind !== "ignored") continue;
    const text = out.kind === "refused" ? `refused \`${out.code}\`` : out.kind;
    const outcomes = byEvent.get(e) ?? new Map<string, K[]>();
    byEvent.set(e, outcomes);
    outcomes.set(text, [...(outcomes.get(text) ?? []), s]);
  }
  // In the table's order of events.
  const rows = [...new Set(cells(table).map(([, e]) => e))].flatMap((e) =>
    [...(byEvent.get(e) ?? [])].map(([text, states]) => `| \`${e}\` | ${text} | ${states.map((s) => `\`${s}\``).join(", ")} |`),
  );
  return ["| event | outcome | in states |", "| --- | --- | --- |", ...rows].join("\n");
}

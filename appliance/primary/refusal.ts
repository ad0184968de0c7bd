// What a secondary's refusal (an `error` frame, docs/wire.md) stops on this primary. Pure.
// Invariant: the scope comes from the frame's group field, never from its message text, and only
// groups this primary sends to that secondary are touched: a peer may send anything, so a refusal
// naming a group that does not travel on the link, or carrying a code this build does not know,
// changes nothing it should not and never throws.
import { describeWireError, type ErrorFrame } from "../replication/frames.ts";

/**
 * A refusal as the link sender hands it to the engine, with the generation
 * its frames of that group carried on the refused connection (none sent:
 * undefined). The error frame does not say which frame it refuses; the
 * connection does, since a secondary closes it at the first refusal.
 */
export type Refusal = Pick<ErrorFrame, "code" | "group" | "message"> & { sentGeneration?: number };

/**
 * A refusal of frames from before the group's generation changed here (a
 * suspension or resync since): it says nothing about the group as it is
 * now, and the link restarts with the new generation anyway.
 */
export function staleRefusal(refusal: Refusal, generationNow: number): boolean {
  return refusal.sentGeneration !== undefined && refusal.sentGeneration < generationNow;
}

/**
 * The groups a refusal stops: the one it names, if it travels on this link;
 * every group on the link when it names none (the secondary refuses the whole
 * link, e.g. it holds no secondary volume). Any code stops them: whatever the
 * reason, the secondary closed the link, and frames of that group sent again
 * would be refused again and hold back the other groups on the link.
 */
export function refusedGroups(refusal: Refusal, groupsOnLink: readonly string[]): string[] {
  if (refusal.group === "") return [...groupsOnLink];
  return groupsOnLink.includes(refusal.group) ? [refusal.group] : [];
}

/** The suspension reason shown in status: who refused, why (the code's name) and what it said. */
export function refusalReason(secondaryId: number, refusal: Refusal): string {
  return `refused by secondary #${secondaryId} (${describeWireError(refusal.code)}): ${refusal.message}`;
}

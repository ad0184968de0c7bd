// A secondary's refusal names its group in the error frame's group field, and
// the real PrimaryEngine stops that group by the field, never by reading the
// message. Real engines on both sides, under the simulation's time, network
// (every frame through the real codec) and storage; the test only adds one
// error frame on the secondary's end of the link, as a secondary would send it.
import pino from "pino";
import { describe, expect, it } from "vitest";
import { Scheduler } from "./engine/scheduler.ts";
import { SimNetwork } from "./engine/network.ts";
import { SimCluster, sharedMonotonicClock, simConfig, simSubsystem } from "./engine/cluster.ts";
import type { LoadedTopology } from "../../config/load.ts";
import type { FrameLink } from "../../appliance/replication/frame-link.ts";
import { WIRE_ERROR, type ErrorFrame, type ReceivedWireErrorCode } from "../../appliance/replication/frames.ts";

/** Primary #1 and secondary #2 with two groups, C1 and C2, one pair each: one link carries both. */
function twoGroups(): LoadedTopology {
  return simConfig(
    { clock: "monotonic", maxClockOffsetMs: 0, syncIntervalMs: 5, linkTimeoutMs: 200, reconnectMs: 10 },
    [simSubsystem(1, ["p1a", "p1b"]), simSubsystem(2, ["s2a", "s2b"])],
    [{ name: "C1", pairs: [{ primary: "p1a", secondary: "s2a" }] }, { name: "C2", pairs: [{ primary: "p1b", secondary: "s2b" }] }],
  );
}

interface Outcome {
  states: Record<string, string>;
  reasons: Record<string, string | null>;
  /** The link came up again after the refusal closed it. */
  relinked: boolean;
  /** Error frames the primary received, as decoded from the wire. */
  refusals: ErrorFrame[];
}

/**
 * Brings both groups to active, then either lets the secondary's end of the
 * link send `refusal` and close, or (a function) has the real secondary act.
 */
async function refuse(refusal: Omit<ErrorFrame, "type"> | ((cluster: SimCluster) => Promise<unknown>)): Promise<Outcome> {
  const sched = new Scheduler(1);
  const net = new SimNetwork(sched, { delayMinMs: 0, delayMaxMs: 1, connectTimeoutMs: 100 });
  const refusals: ErrorFrame[] = [];
  net.observe = (from, to, f) => {
    if (from === 2 && to === 1 && f.type === "error") refusals.push(f);
  };
  // The secondary's end of each link the primary opens, as the secondary's core receives it.
  const secondaryEnds: FrameLink[] = [];
  const listen = net.listen.bind(net);
  net.listen = (id, l) =>
    listen(id, {
      ...l,
      acceptLink: (link, from) => {
        if (id === 2 && from === 1) secondaryEnds.push(link);
        l.acceptLink(link, from);
      },
    });
  const cluster = new SimCluster(sched, net, twoGroups(), sharedMonotonicClock(sched), { probe: {}, logger: pino({ level: "silent" }) }, false, 16);
  void cluster.start(1);
  void cluster.start(2);
  const primary = () => cluster.node(1).core!.status().primary!;
  const stateOf = (g: string) => primary().groups.find((x) => x.name === g)!.state;

  // The first start is the initial copy; both groups are active once it is acknowledged.
  expect(await sched.runUntil(() => cluster.isUp(1) && cluster.isUp(2) && stateOf("C1") === "active" && stateOf("C2") === "active", 10_000)).toBe(true);
  if (typeof refusal === "function") {
    await refusal(cluster);
  } else {
    const end = secondaryEnds.at(-1)!;
    end.send({ type: "error", ...refusal });
    end.close();
  }
  const relinked = await sched.runUntil(() => secondaryEnds.length > 1 && primary().links[0].state === "up", 5_000);
  await sched.runFor(50);
  const groups = primary().groups;
  return {
    states: Object.fromEntries(groups.map((g) => [g.name, g.state])),
    reasons: Object.fromEntries(groups.map((g) => [g.name, g.reason])),
    relinked,
    refusals,
  };
}

describe("sim: a refusal names its group", () => {
  it("primary refusal: the real secondary, fenced for C2, refuses C2's frames with generation and group C2; only C2 is fenced", async () => {
    const r = await refuse((cluster) => cluster.node(2).core!.handleRequest({ op: "fence", group: "C2", generation: 5, by: "test", reason: "fenced by the test" }));
    expect(r.refusals.length).toBeGreaterThan(0);
    for (const f of r.refusals) expect({ code: f.code, group: f.group }).toEqual({ code: WIRE_ERROR.generation, group: "C2" });
    expect(r.states).toEqual({ C1: "active", C2: "fenced" });
  });

  it("primary refusal: the group in the frame's group field is fenced, not the one its message names (C2 refused, message says C1)", async () => {
    const r = await refuse({ code: WIRE_ERROR.generation, group: "C2", message: "group 'C1' is suspended at generation 9 on subsystem #2" });
    expect(r.states).toEqual({ C1: "active", C2: "fenced" });
    expect(r.reasons.C2).toContain("generation (5)");
    expect(r.relinked, "the link comes back for the group still active").toBe(true);
  });

  it("primary refusal: a group that does not travel on the link changes nothing, whatever the message says", async () => {
    const r = await refuse({ code: WIRE_ERROR.noGroup, group: "C9", message: "group 'C1' and group 'C2' are refused" });
    expect(r.states).toEqual({ C1: "active", C2: "active" });
  });

  it("primary refusal: an empty group refuses the whole link: every group on it is fenced", async () => {
    const r = await refuse({ code: WIRE_ERROR.role, group: "", message: "subsystem #2 holds no secondary volume" });
    expect(r.states).toEqual({ C1: "fenced", C2: "fenced" });
  });

  it("primary refusal: a code this build does not know stops the named group and nothing throws", async () => {
    const r = await refuse({ code: 4242 as ReceivedWireErrorCode, group: "C1", message: "a reason from a newer build" });
    expect(r.states).toEqual({ C1: "fenced", C2: "active" });
    expect(r.reasons.C1).toContain("unknown code 4242");
  });
});

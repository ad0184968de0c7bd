// How a drill round fails the replication links to one secondary subsystem. On one host
// (the default) a TCP proxy sits in front of each secondary (link-proxy.ts): a cut resets
// and refuses, a hang stops moving bytes. With --hosts every process has a network
// namespace of its own (netns-hosts.ts), and the faults are the network's own:
// - a cut that ends before the takeover pulls the secondary host's cable (its interface
//   down): every peer, the RCM too, hears silence until it is back;
// - a cut that lasts through the takeover partitions the data centres: every primary
//   host from every secondary host, while the RCM and the hosts' clients reach both,
//   which is the disaster a takeover is for;
// - a hang partitions the secondary's host from the primaries' hosts alone.
// A cable pulled through a takeover would keep the takeover from the secondary, which
// is an outage to wait out, not a disaster to take over from: the schedule restores a
// cut's cable before the takeover or makes it the data-centre partition.
import type { LinkProxy, LinkMode } from "./link-proxy.ts";
import type { NetnsHosts } from "./netns-hosts.ts";

export interface LinkFault {
  readonly state: LinkMode;
  /** Fails every primary's link to the secondary; `lasting`: it stays failed through the takeover. Returns what the round's report says. */
  fail(kind: "cut" | "hang", lasting: boolean): string;
  /** Ends the fault; what the report says, or null when nothing was failed. */
  restore(): string | null;
  close(): Promise<void>;
}

export class ProxyLinkFault implements LinkFault {
  constructor(
    private readonly proxy: LinkProxy,
    private readonly secondary: number,
  ) {}

  get state(): LinkMode {
    return this.proxy.state;
  }

  fail(kind: "cut" | "hang"): string {
    if (kind === "cut") this.proxy.cut();
    else this.proxy.hang();
    return `${kind} every link -> #${this.secondary}`;
  }

  restore(): string | null {
    if (this.proxy.state === "up") return null;
    this.proxy.restore();
    return `links -> #${this.secondary} restored`;
  }

  close(): Promise<void> {
    return this.proxy.close();
  }
}

export class HostLinkFault implements LinkFault {
  private mode: LinkMode = "up";
  /** Ends the fault in force. */
  private undo: (() => void) | null = null;
  private what = "";

  constructor(
    private readonly hosts: NetnsHosts,
    private readonly secondary: number,
    /** Host names, as NetnsHosts knows them. */
    private readonly place: { secondary: string; primaries: string[]; secondaries: string[] },
  ) {}

  get state(): LinkMode {
    return this.mode;
  }

  fail(kind: "cut" | "hang", lasting: boolean): string {
    this.restore();
    const p = this.place;
    this.mode = kind;
    if (kind === "hang") {
      this.undo = this.hosts.partition(p.primaries, [p.secondary]);
      this.what = `#${this.secondary}'s host cut off from the primaries' hosts (${p.primaries.join(" ")})`;
      return `hang every link -> #${this.secondary}: ${this.what}, packets dropped`;
    }
    if (lasting) {
      this.undo = this.hosts.partition(p.primaries, p.secondaries);
      this.what = `the data centres partitioned (${p.primaries.join(" ")} | ${p.secondaries.join(" ")})`;
      return `cut every link -> #${this.secondary}: ${this.what}, packets dropped; the RCM reaches both`;
    }
    this.hosts.linkDown(p.secondary);
    this.undo = () => this.hosts.linkUp(p.secondary);
    this.what = `#${this.secondary}'s cable (${p.secondary} eth0 down)`;
    return `cut every link -> #${this.secondary}: ${this.what} pulled`;
  }

  restore(): string | null {
    if (this.mode === "up") return null;
    this.undo?.();
    this.undo = null;
    this.mode = "up";
    return `links -> #${this.secondary} restored: ${this.what} ${this.what.includes("cable") ? "back in" : "healed"}`;
  }

  async close(): Promise<void> {
    this.restore();
  }
}

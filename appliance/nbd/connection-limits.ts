// Counts of an NBD server's connections, in total, per peer address and per
// export, against their configured maxima. A limit that bites is reported once
// per peer (or export) until its count drops below the limit again, so a
// client retrying in a loop cannot flood the log. No I/O: the server logs
// what `admitPeer`/`reserveExport` say.
export interface ConnectionLimitsConfig {
  /** Connections the server holds at once (handshake and transmission). */
  connectionsMax: number;
  /** Connections from one IP address at once. */
  connectionsPerPeerMax: number;
  /** Connections in transmission on one export at once. */
  connectionsPerExportMax: number;
}

export type Admission = { ok: true } | { ok: false; reason: string; logIt: boolean };

export class ConnectionLimits {
  private total = 0;
  private readonly perPeer = new Map<string, number>();
  private readonly perExport = new Map<string, number>();
  private readonly peersReported = new Set<string>();
  private readonly exportsReported = new Set<string>();
  private totalReported = false;

  constructor(private readonly c: ConnectionLimitsConfig) {}

  /** A new TCP connection from `peer` (an IP address); ok means it was counted. */
  admitPeer(peer: string): Admission {
    if (this.total >= this.c.connectionsMax) {
      const logIt = !this.totalReported;
      this.totalReported = true;
      return { ok: false, reason: `the server holds ${this.total} connections (nbdLimits.connectionsMax ${this.c.connectionsMax})`, logIt };
    }
    const n = this.perPeer.get(peer) ?? 0;
    if (n >= this.c.connectionsPerPeerMax) {
      const logIt = !this.peersReported.has(peer);
      this.peersReported.add(peer);
      return { ok: false, reason: `${peer} holds ${n} connections (nbdLimits.connectionsPerPeerMax ${this.c.connectionsPerPeerMax})`, logIt };
    }
    this.total++;
    this.perPeer.set(peer, n + 1);
    return { ok: true };
  }

  releasePeer(peer: string): void {
    const n = (this.perPeer.get(peer) ?? 0) - 1;
    if (n <= 0) this.perPeer.delete(peer);
    else this.perPeer.set(peer, n);
    this.total--;
    if (n < this.c.connectionsPerPeerMax) this.peersReported.delete(peer);
    if (this.total < this.c.connectionsMax) this.totalReported = false;
  }

  /** A connection asks to enter transmission on `name`; ok means it was counted. */
  reserveExport(name: string): Admission {
    const n = this.perExport.get(name) ?? 0;
    if (n >= this.c.connectionsPerExportMax) {
      const logIt = !this.exportsReported.has(name);
      this.exportsReported.add(name);
      return {
        ok: false,
        reason: `export ${JSON.stringify(name)} has ${n} connections (nbdLimits.connectionsPerExportMax ${this.c.connectionsPerExportMax})`,
        logIt,
      };
    }
    this.perExport.set(name, n + 1);
    return { ok: true };
  }

  releaseExport(name: string): void {
    const n = (this.perExport.get(name) ?? 0) - 1;
    if (n <= 0) this.perExport.delete(name);
    else this.perExport.set(name, n);
    if (n < this.c.connectionsPerExportMax) this.exportsReported.delete(name);
  }
}

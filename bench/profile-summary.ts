// Summarises V8 .cpuprofile files (node --cpu-prof): self time per function
// and per source file, and inclusive time of the functions that match
// --focus. Usage:
//   node --import tsx bench/profile-summary.ts [--top N] [--focus REGEX] FILE.cpuprofile...
// Self time = samples whose leaf is the function; inclusive = samples with the
// function anywhere on the stack (counted once per sample).
import { readFileSync } from "node:fs";
import path from "node:path";

interface CallFrame {
  functionName: string;
  url: string;
  lineNumber: number;
}
interface ProfileNode {
  id: number;
  callFrame: CallFrame;
  children?: number[];
}
interface CpuProfile {
  nodes: ProfileNode[];
  startTime: number;
  endTime: number;
  samples: number[];
  timeDeltas: number[];
}

function short(url: string): string {
  if (url === "") return "(native)";
  const i = url.indexOf("/work/main/");
  if (i >= 0) return url.slice(i + "/work/main/".length).replace(/\?.*$/, "");
  const nm = url.lastIndexOf("node_modules/");
  if (nm >= 0) return url.slice(nm).replace(/\?.*$/, "");
  return url.replace(/^file:\/\//, "");
}

function keyOf(f: CallFrame): string {
  const name = f.functionName || "(anonymous)";
  return f.url ? `${name}  ${short(f.url)}:${f.lineNumber + 1}` : name;
}

function summarise(file: string, top: number, focus: RegExp | null): string {
  const p = JSON.parse(readFileSync(file, "utf8")) as CpuProfile;
  const byId = new Map(p.nodes.map((n) => [n.id, n]));
  const parent = new Map<number, number>();
  for (const n of p.nodes) for (const c of n.children ?? []) parent.set(c, n.id);
  const self = new Map<string, number>();
  const perFile = new Map<string, number>();
  const incl = new Map<string, number>();
  let total = 0;
  let idle = 0;
  for (let i = 0; i < p.samples.length; i++) {
    const dt = (p.timeDeltas[i] ?? 0) / 1000; // ms
    const leaf = byId.get(p.samples[i]);
    if (!leaf) continue;
    total += dt;
    if (leaf.callFrame.functionName === "(idle)") idle += dt;
    const k = keyOf(leaf.callFrame);
    self.set(k, (self.get(k) ?? 0) + dt);
    const fk = leaf.callFrame.url ? short(leaf.callFrame.url) : leaf.callFrame.functionName || "(native)";
    perFile.set(fk, (perFile.get(fk) ?? 0) + dt);
    const seen = new Set<string>();
    for (let id: number | undefined = leaf.id; id !== undefined; id = parent.get(id)) {
      const key = keyOf(byId.get(id)!.callFrame);
      if (seen.has(key)) continue;
      seen.add(key);
      incl.set(key, (incl.get(key) ?? 0) + dt);
    }
  }
  const busy = total - idle;
  const pct = (ms: number) => `${((100 * ms) / busy).toFixed(1).padStart(5)}%`;
  const lines: string[] = [];
  lines.push(`== ${path.basename(file)}: ${(total / 1000).toFixed(1)} s profiled, ${(busy / 1000).toFixed(1)} s on CPU (not idle); % of on-CPU time`);
  lines.push(`-- top ${top} self time`);
  for (const [k, ms] of [...self].filter(([k]) => !k.startsWith("(idle)")).sort((a, b) => b[1] - a[1]).slice(0, top)) {
    lines.push(`${pct(ms)} ${ms.toFixed(0).padStart(7)} ms  ${k}`);
  }
  lines.push(`-- self time per source file`);
  for (const [k, ms] of [...perFile].filter(([k]) => k !== "(idle)").sort((a, b) => b[1] - a[1]).slice(0, top)) {
    lines.push(`${pct(ms)} ${ms.toFixed(0).padStart(7)} ms  ${k}`);
  }
  if (focus) {
    lines.push(`-- inclusive time of functions matching ${focus}`);
    for (const [k, ms] of [...incl].filter(([k]) => focus.test(k)).sort((a, b) => b[1] - a[1]).slice(0, top)) {
      lines.push(`${pct(ms)} ${ms.toFixed(0).padStart(7)} ms  ${k}`);
    }
  }
  return lines.join("\n");
}

const args = process.argv.slice(2);
let top = 30;
let focus: RegExp | null = null;
const files: string[] = [];
for (let i = 0; i < args.length; i++) {
  if (args[i] === "--top") top = Number(args[++i]);
  else if (args[i] === "--focus") focus = new RegExp(args[++i]);
  else files.push(args[i]);
}
if (files.length === 0) {
  process.stderr.write("usage: node --import tsx bench/profile-summary.ts [--top N] [--focus REGEX] FILE.cpuprofile...\n");
  process.exit(2);
}
for (const f of files) process.stdout.write(summarise(f, top, focus) + "\n\n");

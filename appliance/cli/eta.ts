// A remaining time for a person: "42s", "3m07s", "2h05m", or "--" when unknown. Its own module
// because `tidemark status` prints ETAs, and the progress bars' module loads cli-progress, which a
// short command does not need (docs/benchmarks.md, CLI start).
export function formatEta(ms: number | null): string {
  if (ms === null) return "--";
  const s = Math.round(ms / 1000);
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, "0")}s`;
  return `${Math.floor(s / 3600)}h${String(Math.floor((s % 3600) / 60)).padStart(2, "0")}m`;
}

#!/usr/bin/env bash
# CPU per operation of a 1-primary/1-secondary tidemark built in TREE, for
# comparing two trees (run them alternately): both subsystems start from
# TREE/bin/tidemark, fio drives the primary's export for SECONDS (at RATE
# operations per second, 0 = as fast as it goes), and each process's CPU
# (utime + stime from /proc) over fio's run is divided by the operations fio
# completed. At a fixed rate the two trees batch alike, so their figures
# compare even on a loaded machine; at full rate the batching follows the rate.
# Usage: bash bench/cpu-per-op.sh TREE SECONDS RATE [RW] [BS] [IODEPTH]
#   bash bench/cpu-per-op.sh . 10 5000                 # 4 KiB randwrite at 5000/s
#   bash bench/cpu-per-op.sh . 10 0 write 1M 8          # 1 MiB writes, full rate
# NODEOPTS is passed to node (say, --cpu-prof --cpu-prof-dir=DIR).
# FLOOR=forwarded, FLOOR=journaled or FLOOR=journaled-async measures
# bench/node-floor.ts instead (the server and its sink in place of the primary
# and the secondary; TREE unused; docs/benchmarks.md, "What one run does").
set -euo pipefail
TREE=$(cd "$1" && pwd); SECS=$2; RATE=$3; RW=${4:-randwrite}; BS=${5:-4k}; QD=${6:-32}
WORK=$(mktemp -d /tmp/tidemark-cpu-per-op-XXXXXX)
# shellcheck source=bench/one-by-one.sh
. "$(dirname "$0")/one-by-one.sh"
trap one_by_one_stop EXIT INT TERM
node_flags() { echo "${NODEOPTS:-}"; }
if [ -n "${FLOOR:-}" ]; then
  script="$(cd "$(dirname "$0")" && pwd)/node-floor.ts"
  case "$FLOOR" in
    forwarded) flags=() ;;
    journaled) flags=(--journal) ;;
    journaled-async) flags=(--async-io --journal) ;;
    *) echo "FLOOR must be forwarded, journaled or journaled-async, not $FLOOR" >&2; exit 2 ;;
  esac
  N1=$(one_by_one_port); sink=$(one_by_one_port)
  truncate -s 1G "$WORK/p.img" "$WORK/s.img"
  # pids[0] is the server (the primary's place), pids[1] the sink; the sink listens first.
  node --import tsx "$script" "${flags[@]}" --sink "$WORK/s.img" "$sink" >"$WORK/sink.out" 2>&1 &
  pids=($!)
  for _ in $(seq 100); do grep -q "sink for" "$WORK/sink.out" && break; sleep 0.1; done
  node --import tsx "$script" "${flags[@]}" "$WORK/p.img" "$N1" --forward "$sink" >"$WORK/server.out" 2>&1 &
  pids=($! "${pids[@]}")
  for _ in $(seq 100); do grep -q serving "$WORK/server.out" && break; sleep 0.1; done
else
  one_by_one_start "$TREE" "$WORK"
fi
sleep 2
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
hwm_mib() { awk '/VmHWM/ {printf "%.0f", $2 / 1024}' "/proc/$1/status"; }
a1=$(cpu_ticks "${pids[0]}"); a2=$(cpu_ticks "${pids[1]}"); t0=$(date +%s.%N)
rate=(); [ "$RATE" != 0 ] && rate=(--rate_iops="$RATE")
export_name=p1a; [ -n "${FLOOR:-}" ] && export_name=""
fio --name=cpu-per-op --ioengine=nbd --uri="nbd://127.0.0.1:$N1/$export_name" --rw="$RW" --bs="$BS" --iodepth="$QD" --size=1024M \
  --randrepeat=0 --norandommap --runtime="$SECS" --time_based "${rate[@]}" --output-format=json >"$WORK/fio.json"
t1=$(date +%s.%N); b1=$(cpu_ticks "${pids[0]}"); b2=$(cpu_ticks "${pids[1]}")
python3 - "$WORK/fio.json" "$a1" "$b1" "$a2" "$b2" "$t0" "$t1" "$(getconf CLK_TCK)" "$TREE" "$(hwm_mib "${pids[0]}")" "$(hwm_mib "${pids[1]}")" <<'EOF'
import json, sys
s = open(sys.argv[1]).read()
j = json.loads(s[s.index("{"):])["jobs"][0]
side = j["write"] if j["write"]["iops"] > 0 else j["read"]
a1, b1, a2, b2 = (float(x) for x in sys.argv[2:6])
t0, t1, hz = float(sys.argv[6]), float(sys.argv[7]), float(sys.argv[8])
wall = t1 - t0
ops = side["iops"] * wall
p, q = (b1 - a1) / hz, (b2 - a2) / hz
print(f"{sys.argv[9]}: {side['iops']:.0f} IOPS; primary {p / wall:.2f} cores, {p * 1e6 / ops:.1f} us/op, peak RSS {sys.argv[10]} MiB; "
      f"secondary {q / wall:.2f} cores, {q * 1e6 / ops:.1f} us/op, peak RSS {sys.argv[11]} MiB; together {(p + q) * 1e6 / ops:.1f} us/op")
EOF

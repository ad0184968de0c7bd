#!/usr/bin/env bash
# CPU profile of the replicated 4 KiB write path: a 1-primary/1-secondary
# tidemark whose two subsystems run under `node --cpu-prof`, fio 4 KiB
# randwrite iodepth 32 against the primary export, then SIGTERM (which writes
# the .cpuprofile files) and a summary of each. Usage:
#   bash bench/profile.sh [SECONDS] [OUT_DIR] [FIO_RW] [FIO_BS] [FIO_IODEPTH]
# Defaults: 20 s, a temp dir that is kept (it holds the profiles), randwrite 4k 32.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
SECONDS_RUN=${1:-20}
OUT=${2:-$(mktemp -d /tmp/tidemark-profile-XXXXXX)}
RW=${3:-randwrite}
BS=${4:-4k}
QD=${5:-32}
mkdir -p "$OUT"
WORK=$(mktemp -d /tmp/tidemark-profile-run-XXXXXX)
# shellcheck source=bench/one-by-one.sh
. "$ROOT/bench/one-by-one.sh"
trap one_by_one_stop EXIT INT TERM
# Each subsystem writes its profile into a directory of its own.
node_flags() { mkdir -p "$OUT/ss$1"; echo "--cpu-prof --cpu-prof-dir=$OUT/ss$1"; }
one_by_one_start "$ROOT" "$WORK"
sleep 1
fio --name=prof --ioengine=nbd --uri="nbd://127.0.0.1:$N1/p1a" --rw="$RW" --bs="$BS" --iodepth="$QD" --size=1024M \
  --randrepeat=0 --norandommap --runtime="$SECONDS_RUN" --time_based --output-format=json >"$OUT/fio.json"
node "$ROOT/bin/tidemark" status --config "$WORK/config.json" >"$OUT/status-after.txt" || true
python3 -c 'import json,sys; s=open(sys.argv[1]).read(); j=json.loads(s[s.index("{"):])["jobs"][0]; w=j["write"] if j["write"]["iops"]>0 else j["read"]; print("fio: %.0f IOPS %.1f MiB/s" % (w["iops"], w["bw_bytes"]/1048576))' "$OUT/fio.json"
# SIGTERM: the subsystems stop cleanly and node writes the profiles on exit.
one_by_one_stop
pids=()
trap - EXIT INT TERM
for id in 1 2; do
  echo "### subsystem #$id ($([ $id = 1 ] && echo primary || echo secondary))"
  node --import tsx "$ROOT/bench/profile-summary.ts" --top 25 \
    --focus 'primary\.[jt]s|journal\.[jt]s|sender\.[jt]s|secondary\.[jt]s|connection\.[jt]s|link\.[jt]s|frames\.[jt]s|volume\.[jt]s|transaction|run ' \
    "$OUT/ss$id"/*.cpuprofile
done
echo "profiles in $OUT"

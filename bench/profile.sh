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
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do
    for _ in $(seq 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null || true
  done
  rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }
R1=$(port); N1=$(port); R2=$(port); N2=$(port)
cat >"$WORK/config.json" <<EOF
{ "clusterKey": "tidemark-profile-cluster-key-0123", "dataDir": "data", "syncIntervalMs": 50,
  "subsystems": [
    { "id": 1, "host": "127.0.0.1", "replicationPort": $R1, "nbdPort": $N1, "volumes": [ { "name": "p1a", "sizeMiB": 1024 } ] },
    { "id": 2, "host": "127.0.0.1", "replicationPort": $R2, "nbdPort": $N2, "volumes": [ { "name": "s2a", "sizeMiB": 1024 } ] } ],
  "groups": [ { "name": "C1", "pairs": [ { "primary": "p1a", "secondary": "s2a" } ] } ] }
EOF
for id in 1 2; do
  mkdir -p "$OUT/ss$id"
  # From dist/ when it is fresh (file names end in .js), else the sources through tsx (.ts).
  node --cpu-prof --cpu-prof-dir="$OUT/ss$id" "$ROOT/bin/tidemark" subsystem --config "$WORK/config.json" --id $id --log "$WORK/ss$id.log" >"$WORK/ss$id.out" 2>&1 &
  pids+=($!)
done
for id in 1 2; do
  for _ in $(seq 200); do grep -q '"ready":true' "$WORK/ss$id.out" && break; sleep 0.1; done
done
sleep 1
fio --name=prof --ioengine=nbd --uri="nbd://127.0.0.1:$N1/p1a" --rw="$RW" --bs="$BS" --iodepth="$QD" --size=1024M \
  --randrepeat=0 --norandommap --runtime="$SECONDS_RUN" --time_based --output-format=json >"$OUT/fio.json"
node "$ROOT/bin/tidemark" status --config "$WORK/config.json" >"$OUT/status-after.txt" || true
python3 -c 'import json,sys; s=open(sys.argv[1]).read(); j=json.loads(s[s.index("{"):])["jobs"][0]; w=j["write"] if j["write"]["iops"]>0 else j["read"]; print("fio: %.0f IOPS %.1f MiB/s" % (w["iops"], w["bw_bytes"]/1048576))' "$OUT/fio.json"
# SIGTERM: the subsystems stop cleanly and node writes the profiles on exit.
cleanup
pids=()
trap - EXIT INT TERM
for id in 1 2; do
  echo "### subsystem #$id ($([ $id = 1 ] && echo primary || echo secondary))"
  node --import tsx "$ROOT/bench/profile-summary.ts" --top 25 \
    --focus 'primary\.[jt]s|journal\.[jt]s|sender\.[jt]s|secondary\.[jt]s|connection\.[jt]s|link\.[jt]s|frames\.[jt]s|volume\.[jt]s|transaction|run ' \
    "$OUT/ss$id"/*.cpuprofile
done
echo "profiles in $OUT"

# Sourced by the bench scripts that drive a 1-primary/1-secondary tidemark
# (profile.sh, cpu-per-op.sh): the shape bench/run.ts calls 1x1, on free
# loopback ports, in WORK. one_by_one_start TREE WORK starts both subsystems
# from TREE/bin/tidemark and returns once both are ready; pids holds them and
# N1 is the primary's NBD port. A caller may define node_flags ID, printing
# the node flags for subsystem ID. one_by_one_stop stops them and removes WORK.
pids=()

one_by_one_stop() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do
    for _ in $(seq 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null || true
  done
  pids=()
  rm -rf "$WORK"
}

one_by_one_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }

one_by_one_start() {
  local tree=$1 work=$2 id flags
  local r1 r2 n2
  r1=$(one_by_one_port); N1=$(one_by_one_port); r2=$(one_by_one_port); n2=$(one_by_one_port)
  cat >"$work/config.json" <<EOC
{ "clusterKey": "tidemark-bench-1x1-cluster-key-0123", "dataDir": "data", "syncIntervalMs": 50, "clock": "monotonic",
  "subsystems": [
    { "id": 1, "host": "127.0.0.1", "replicationPort": $r1, "nbdPort": $N1, "volumes": [ { "name": "p1a", "sizeMiB": 1024 } ] },
    { "id": 2, "host": "127.0.0.1", "replicationPort": $r2, "nbdPort": $n2, "volumes": [ { "name": "s2a", "sizeMiB": 1024 } ] } ],
  "groups": [ { "name": "C1", "pairs": [ { "primary": "p1a", "secondary": "s2a" } ] } ] }
EOC
  for id in 1 2; do
    flags=""
    if declare -F node_flags >/dev/null; then flags=$(node_flags "$id"); fi
    # From dist/ when it is fresh, else the sources through tsx (bin/tidemark decides).
    # shellcheck disable=SC2086
    (cd "$work" && exec node $flags "$tree/bin/tidemark" subsystem --config "$work/config.json" --id "$id" --log "$work/ss$id.log" >"$work/ss$id.out" 2>&1) &
    pids+=($!)
  done
  for id in 1 2; do
    for _ in $(seq 200); do grep -q '"ready":true' "$work/ss$id.out" && break; sleep 0.1; done
  done
}

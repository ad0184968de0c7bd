#!/usr/bin/env bash
# npm test: installs the Debian tools the interop tests call (when root and
# apt-get is there), then type-checks, builds dist/ if a source is newer, lints
# and runs the vitest suite.
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
for pair in nbdinfo:libnbd-bin nbdcopy:libnbd-bin qemu-io:qemu-utils fio:fio nbdkit:nbdkit sqlite3:sqlite3 losetup:mount strace:strace certtool:gnutls-bin faketime:faketime nbd-server:nbd-server qemu-nbd:qemu-utils; do
  cmd=${pair%%:*}; pkg=${pair#*:}
  command -v "$cmd" >/dev/null 2>&1 || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
  pkgs=$(printf '%s\n' "${need[@]}" | sort -u | tr '\n' ' ')
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "test: installing Debian packages the tests use: $pkgs"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $pkgs >/dev/null
  else
    echo "test: missing Debian packages ($pkgs); the tests that need them will skip and say so"
  fi
fi
echo "test: tsc --noEmit"
npx tsc --noEmit
# The tests start many tidemark processes through bin/tidemark, which runs the
# compiled dist/ only while no source is newer than it (else the sources through
# tsx, about 0.4 s more per start). Rebuilt here when stale: about 1 s.
echo "test: build"
node scripts/build.mjs --if-stale
echo "test: eslint"
npx eslint .
echo "test: vitest"
# The simulation of the engines runs alone after the rest: it keeps one core
# busy for minutes, and the timing-bound tests on real processes should not
# share the machine with it.
if [ $# -gt 0 ]; then
  npx vitest run "$@"
else
  npx vitest run --exclude "test/sim/engines*.test.ts"
  echo "test: vitest (simulation of the engines)"
  npx vitest run test/sim/engines
fi

#!/usr/bin/env bash
# make bench: every figure in one table, measured in the same run (ratios matter more
# than absolute numbers on a shared machine). Bounded in time; loopback/unix only.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build -q --release --examples

echo "| benchmark | figure |"
echo "|---|---|"

# Transport floor: one unix-socket round trip with no codec work, client pinned to
# core 0 and server to core 1 when the machine has two cores.
floor() {
  local line pin=$4 where="any core"
  [ "$pin" = 1 ] && where="client core 0, server core 1"
  line=$(target/release/examples/transport_floor "$@")
  local cpu wall
  cpu=$(sed -E 's/.*client_cpu_ns=([0-9]+).*/\1/' <<<"$line")
  wall=$(sed -E 's/.*wall_ns=([0-9]+).*/\1/' <<<"$line")
  echo "| transport floor, $2 B request / $3 B reply, $where | client CPU ${cpu} ns, wall ${wall} ns per round trip |"
}
floor 100000 48 64 0
floor 50000 2048 128 0
if [ "$(nproc)" -ge 2 ]; then
  floor 20000 48 64 1
fi

if [ -f tools/bench_codec.lua ]; then
  luajit tools/bench_codec.lua
fi

#!/usr/bin/env bash
# make bench: every figure in one table, measured in the same run (ratios matter more
# than absolute numbers on a shared machine). Bounded in time (a few minutes);
# loopback/unix only. Pieces: examples/transport_floor.rs, bench/codec.lua,
# bench/e2e.lua, bench/startup.lua (each can be run alone; see their headers).
#   KPS_BENCH_SECONDS   seconds per wrk run (default 3)
set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS_PER_RUN=${KPS_BENCH_SECONDS:-3}
cargo build -q --release --examples

echo "| benchmark | figure |"
echo "|---|---|"

# Transport floor: one unix-socket round trip with no codec work.
floor_line() { target/release/examples/transport_floor "$@"; }
field() { sed -E "s/.*$1=([0-9.]+).*/\1/" <<<"$2"; }
floor() {
  local label=$1; shift
  local line
  line=$(floor_line "$@")
  LAST_CPU=$(field client_cpu_ns "$line")
  echo "| transport floor, $label | client CPU ${LAST_CPU} ns, wall $(field wall_ns "$line") ns per round trip |"
}
floor "48 B request / 64 B reply (a PDK call's size), any core" 100000 48 64 0
floor "2048 B request / 128 B reply (StartInstance's size), any core" 50000 2048 128 0
FLOOR_NS=""
if [ "$(nproc)" -ge 2 ]; then
  floor "48 B / 64 B, client core 0, server core 1 (**the floor the targets use**)" 20000 48 64 1
  FLOOR_NS=$LAST_CPU
  line=$(floor_line 10000 48 64 1 1 50)
  echo "| transport floor, 48 B / 64 B, pinned, client waiting like nginx (epoll, EPOLLIN\|EPOLLOUT\|EPOLLET), server works 50 µs per reply | client CPU $(field client_cpu_ns "$line") ns, wall $(field wall_ns "$line") ns, $(field epoll_waits "$line") epoll_wait per round trip |"
fi

# Codec micro-benchmarks in LuaJIT (each measurement in its own process).
luajit bench/codec.lua 0.3

# End to end through nginx with the real plugin servers.
KPS_FLOOR_NS=$FLOOR_NS luajit bench/e2e.lua "$SECONDS_PER_RUN"

# Start-up with 1 and 8 Go plugin servers.
luajit bench/startup.lua 3

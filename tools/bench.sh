#!/usr/bin/env bash
# make bench: every figure in one table, measured in the same run (ratios matter more
# than absolute numbers on a shared machine). Bounded in time (a few minutes);
# loopback/unix only. Pieces: examples/transport_floor.rs, bench/codec.lua, bench/counters.lua,
# bench/e2e.lua, bench/startup.lua (each can be run alone; see their headers).
#   KPS_BENCH_SECONDS   seconds per wrk run (default 3)
#   KPS_COSOCKET_ROUND_TRIPS  round trips per request of e2e's nginx cosocket floor (default 4)
set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS_PER_RUN=${KPS_BENCH_SECONDS:-3}
cargo build -q --release --workspace  # the .so and kps-helper e2e loads
cargo build -q --release --examples  # transport_floor: the floors, and e2e's echo server

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
# Pinned floors (client core 0, server core 1, as e2e places the worker and the servers),
# each with a server that answers at once and one that sleeps 1 ms before each reply
# (the pause of bench/fixtures/*-slow), each with a blocking client and one that waits
# like nginx. e2e compares every scenario with the floor of its own server pause.
FLOOR_NS="" FLOOR_EPOLL_NS="" SLOW_FLOOR_NS="" SLOW_FLOOR_EPOLL_NS=""
SLOW_US=1000
NGINX_LIKE="client waiting like nginx (epoll, EPOLLIN\|EPOLLOUT\|EPOLLET)"
pinned() {
  local label=$1; shift
  local line
  line=$(floor_line "$@")
  LAST_CPU=$(field client_cpu_ns "$line")
  local waits=""
  [ "${5:-0}" = 1 ] && waits=", $(field epoll_waits "$line") epoll_wait"
  echo "| transport floor, 48 B / 64 B, client core 0, server core 1, $label | client CPU ${LAST_CPU} ns, wall $(field wall_ns "$line") ns${waits} per round trip |"
}
if [ "$(nproc)" -ge 2 ]; then
  pinned "server answers at once, blocking client (**the floor of the servers that answer at once**)" 20000 48 64 1 0 0
  FLOOR_NS=$LAST_CPU
  pinned "server answers at once, $NGINX_LIKE" 20000 48 64 1 1 0
  FLOOR_EPOLL_NS=$LAST_CPU
  pinned "server sleeps 1 ms before each reply, blocking client (**the floor of the slow servers**)" 3000 48 64 1 0 $SLOW_US
  SLOW_FLOOR_NS=$LAST_CPU
  pinned "server sleeps 1 ms before each reply, $NGINX_LIKE" 3000 48 64 1 1 $SLOW_US
  SLOW_FLOOR_EPOLL_NS=$LAST_CPU
fi

# Codec micro-benchmarks in LuaJIT (each measurement in its own process).
luajit bench/codec.lua 0.3

# The per-event bookkeeping (counters, histogram, clock) in a real nginx worker.
luajit bench/counters.lua

# End to end through nginx with the real plugin servers.
KPS_FLOOR_NS=$FLOOR_NS KPS_FLOOR_EPOLL_NS=$FLOOR_EPOLL_NS KPS_SLOW_FLOOR_NS=$SLOW_FLOOR_NS \
  KPS_SLOW_FLOOR_EPOLL_NS=$SLOW_FLOOR_EPOLL_NS luajit bench/e2e.lua "$SECONDS_PER_RUN"

# Start-up with 1 and 8 Go plugin servers.
luajit bench/startup.lua 3

#!/usr/bin/env bash
# Runs every suite (cargo, busted unit, busted integration) and ends with one line
# totalling them all: "N passed, N failed". A suite that crashes counts as a failure.
set -u
cd "$(dirname "$0")/.."

passed=0
failed=0
log_dir=$(mktemp -d /tmp/kps-tests-XXXXXX)

count_cargo() {
  awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($i ~ /^passed;/) p += $(i-1); if ($i ~ /^failed;/) f += $(i-1) } }
       END { print p + 0, f + 0 }' "$1"
}

count_fuzz() {
  local p f
  p=$(grep -cE '^fuzz [a-z_0-9]+: passed' "$1")
  f=$(grep -cE '^fuzz [a-z_0-9]+: FAILED' "$1")
  echo "${p:-0} ${f:-0}"
}

count_tap() {
  local out=$1 p f
  # busted marks pending tests "ok N # SKIP": those did not pass
  p=$(grep -E '^ok [0-9]+' "$out" | grep -cv '# SKIP')
  f=$(grep -cE '^not ok [0-9]+' "$out")
  echo "${p:-0} ${f:-0}"
}

run_suite() {
  local name=$1 kind=$2; shift 2
  local out="$log_dir/$name.log" rc p f
  echo "== $name: $*"
  "$@" >"$out" 2>&1
  rc=$?
  case $kind in
    cargo) read -r p f < <(count_cargo "$out") ;;
    fuzz) read -r p f < <(count_fuzz "$out") ;;
    *) read -r p f < <(count_tap "$out") ;;
  esac
  if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then
    f=1   # the suite crashed or failed outside any test
  fi
  if [ "$f" -ne 0 ] || [ "$rc" -ne 0 ]; then
    # the failures first (a spec's printed tables could push them out of the tail)
    grep -E -A 15 '^not ok [0-9]+|^test .* FAILED$|^---- .* stdout ----$' "$out" | head -n 200
    echo "   (last lines of the $name suite:)"
    grep -vE '^ok [0-9]+' "$out" | tail -n 40
  fi
  echo "   $name: $p passed, $f failed"
  passed=$((passed + p))
  failed=$((failed + f))
}

run_suite rust cargo cargo test --no-default-features --workspace
run_suite unit tap busted --lua=luajit --run=unit -o TAP
run_suite integration tap busted --lua=luajit --run=integration -o TAP
# A short bounded run of every fuzz target (the corpus replay is part of the rust suite).
run_suite fuzz fuzz env FUZZ_SECONDS="${FUZZ_CI_SECONDS:-5}" tools/fuzz.sh

rm -rf "$log_dir"
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]

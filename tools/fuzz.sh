#!/usr/bin/env bash
# Bounded coverage-guided fuzz runs (cargo-fuzz / libFuzzer) of every target in fuzz/.
#
#   tools/fuzz.sh [TARGET...]       FUZZ_SECONDS per target (default 60)
#
# Builds the fuzz crate once (stable toolchain: RUSTC_BOOTSTRAP=1 lets it take the
# sanitizer flags), then runs each target for FUZZ_SECONDS, starting from the checked-in
# corpus fuzz/corpus/<target> (read only) and a scratch corpus fuzz/work/<target>
# (ignored by git, kept between runs). A crash, panic, broken property, timeout
# (FUZZ_TIMEOUT s for one input) or out-of-memory fails the target; the input lands in
# fuzz/artifacts/<target>/. To keep a finding as a regression test, copy that file into
# fuzz/corpus/<target>/ (tests/fuzz_corpus.rs replays it under `cargo test`).
#
# Ends with one line "N passed, N failed" (a build failure counts as one failure).
set -u
cd "$(dirname "$0")/.."

seconds=${FUZZ_SECONDS:-60}
timeout_s=${FUZZ_TIMEOUT:-10}
max_len=${FUZZ_MAX_LEN:-8192}
export RUSTC_BOOTSTRAP=1
flags=(--release --debug-assertions)
bin_dir=fuzz/target/x86_64-unknown-linux-gnu/release

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "cargo-fuzz missing: cargo install --locked cargo-fuzz"
  cargo install --locked cargo-fuzz || { echo "0 passed, 1 failed"; exit 1; }
fi

if [ "$#" -gt 0 ]; then
  targets=("$@")
else
  mapfile -t targets < <(cd fuzz && cargo fuzz list)
fi

started=$(date +%s)
if ! cargo fuzz build "${flags[@]}" >/tmp/kps-fuzz-build.$$ 2>&1; then
  tail -n 40 /tmp/kps-fuzz-build.$$
  rm -f /tmp/kps-fuzz-build.$$
  echo "fuzz build failed"
  echo "0 passed, 1 failed"
  exit 1
fi
rm -f /tmp/kps-fuzz-build.$$
echo "fuzz build: $(($(date +%s) - started)) s"

passed=0
failed=0
for t in "${targets[@]}"; do
  work=fuzz/work/$t
  artifacts=fuzz/artifacts/$t
  mkdir -p "$work" "$artifacts"
  extra=()
  [ -f "fuzz/dict/$t.dict" ] && extra+=("-dict=fuzz/dict/$t.dict")
  # Per-target libFuzzer flags, one a line (e.g. -detect_leaks=0 where a Lua state
  # frees memory in its own time and leak checks after each input would dominate).
  [ -f "fuzz/options/$t" ] && mapfile -t -O "${#extra[@]}" extra < <(grep -v '^#' "fuzz/options/$t")
  log=$(mktemp /tmp/kps-fuzz-XXXXXX)
  t0=$(date +%s)
  "$bin_dir/$t" "$work" "fuzz/corpus/$t" "${extra[@]}" \
    -max_total_time="$seconds" -timeout="$timeout_s" -rss_limit_mb=2048 -max_len="$max_len" \
    -artifact_prefix="$artifacts/" -print_final_stats=1 >"$log" 2>&1
  rc=$?
  runs=$(awk '/stat::number_of_executed_units/ { print $2 }' "$log")
  if [ "$rc" -eq 0 ]; then
    passed=$((passed + 1))
    echo "fuzz $t: passed (${runs:-?} inputs in $(($(date +%s) - t0)) s; scratch corpus $(find "$work" -type f | wc -l) files)"
  else
    failed=$((failed + 1))
    saved=$(find "$artifacts" -type f -newer "$log" | head -n 1)
    echo "fuzz $t: FAILED (exit $rc)${saved:+; input saved as $saved}"
    # The panic message and libFuzzer's verdict, not the stack traces.
    grep -A3 'panicked at' "$log" | grep -vE '^(stack backtrace|   [0-9]+: )' | head -n 12
    grep -E 'ERROR: libFuzzer|^SUMMARY|Test unit written|^Base64' "$log"
  fi
  rm -f "$log"
done

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]

#!/usr/bin/env bash
# make valgrind (not in CI): memcheck over every Rust test binary and over a
# LuaJIT run of the unit specs (the .so loaded through ffi.load and require, as in
# nginx). Fails on any invalid access or use of uninitialised memory, and on any
# definite leak. Prints one table row per run. Logs stay in $VG_LOGS (a temp dir).
#
# LuaJIT allocates its own heap with mmap (invisible to memcheck) and the unit specs
# needed no suppression; tools/valgrind.supp is there for the day one is needed.
set -uo pipefail
cd "$(dirname "$0")/.."

VG_LOGS=${VG_LOGS:-$(mktemp -d /tmp/kps-valgrind-XXXXXX)}
VG=(valgrind --tool=memcheck --leak-check=full --show-leak-kinds=definite,possible
    --errors-for-leak-kinds=definite --error-exitcode=99 --num-callers=40
    --child-silent-after-fork=yes --suppressions=tools/valgrind.supp
    # follow our own programs (kps-helper, spawned by the supervisor tests), not the
    # shells, interpreters and stand-in servers they run
    --trace-children=yes --trace-children-skip='/bin/*,/usr/bin/*,/usr/local/bin/*,*/venv/*,/usr/sbin/*,*/.rustup/*,*/.cargo/*')
status=0

sum() {  # pattern, files...: the sum of the numbers after pattern over every log
  local pat=$1; shift
  cat "$@" 2>/dev/null | grep -oE "$pat [0-9,]+" | grep -oE '[0-9,]+$' | tr -d , | awk '{ s += $1 } END { print s + 0 }'
}

row() {  # name, log prefix (one file per process), rc, test summary
  local name=$1 log=$2 rc=$3 tests=$4 errors definite possible procs
  local logs=("$log".*)
  procs=$(grep -l "ERROR SUMMARY" "${logs[@]}" 2>/dev/null | wc -l)
  errors=$(sum 'ERROR SUMMARY:' "${logs[@]}")
  definite=$(sum 'definitely lost:' "${logs[@]}")
  possible=$(sum 'possibly lost:' "${logs[@]}")
  [ "$procs" -gt 0 ] || errors="?"
  local verdict=ok
  if [ "$rc" -ne 0 ] || [ "$errors" != "0" ]; then verdict="FAILED (rc $rc, see $log.*)"; status=1; fi
  echo "| $name | $tests | $procs | $errors | $definite | $possible | $verdict |"
}

echo "| run | tests | processes checked | memcheck errors | definitely lost (B) | possibly lost (B) | result |"
echo "|---|---|---|---|---|---|---|"

# Rust: every test binary of the workspace, built without the module feature.
mapfile -t bins < <(cargo test --no-default-features --workspace --no-run --message-format=json 2>/dev/null |
  grep '"profile":{[^}]*"test":true' | grep -oE '"executable":"[^"]+"' | cut -d'"' -f4 | sort -u)
if [ "${#bins[@]}" -eq 0 ]; then
  echo "no Rust test binaries found (cargo test --no-run failed?)" >&2
  exit 1
fi
for bin in "${bins[@]}"; do
  name=$(basename "$bin" | sed -E 's/-[0-9a-f]{16}$//')
  log="$VG_LOGS/rust-$name.log"
  out="$VG_LOGS/rust-$name.out"
  # fewer proptest cases: memcheck is ~30x slower, the shapes are what matter
  PROPTEST_CASES=${PROPTEST_CASES:-16} timeout 1200 "${VG[@]}" --log-file="$log.%p" "$bin" --test-threads=2 >"$out" 2>&1
  rc=$?
  tests=$(grep -E '^test result:' "$out" | tail -1 | sed -E 's/^test result: [A-Za-z]+\. ([0-9]+) passed; ([0-9]+) failed.*/\1 passed, \2 failed/')
  row "rust $name" "$log" "$rc" "${tests:-?}"
done

# LuaJIT: the unit specs in one luajit process (--ignore-lua: no re-exec of busted).
log="$VG_LOGS/luajit-unit.log"
out="$VG_LOGS/luajit-unit.out"
timeout 1200 "${VG[@]}" --log-file="$log.%p" luajit /usr/bin/busted --ignore-lua --run=unit -o TAP >"$out" 2>&1
rc=$?
ok=$(grep -cE '^ok [0-9]+' "$out")
notok=$(grep -cE '^not ok [0-9]+' "$out")
row "luajit unit specs" "$log" "$rc" "$ok passed, $notok failed"

echo
echo "logs: $VG_LOGS"
exit $status

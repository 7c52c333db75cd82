#!/usr/bin/env bash
# make probe-outage: SIGKILL (crash) and SIGSTOP (hang) of each hello plugin server under a small wrk load,
# with fail_open off and on (see tools/probe-outage.lua). Bounded: the whole probe
# is killed after PROBE_TIMEOUT seconds (default 600).
set -euo pipefail
cd "$(dirname "$0")/.."
exec timeout --kill-after=10 "${PROBE_TIMEOUT:-600}" luajit tools/probe-outage.lua "$@"

#!/usr/bin/env bash
# make demo: the engine end to end in a real nginx (see tools/demo.lua).
set -euo pipefail
cd "$(dirname "$0")/.."
exec luajit tools/demo.lua "$@"

#!/usr/bin/env bash
# Set up the environment (tools/setup.sh) and run the whole test suite: every package and the
# integration tests. Extra arguments go to pytest (e.g. -x, -k wbcatt, --runslow).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/tools/setup.sh"
cd "$ROOT"
export HF_HUB_OFFLINE=1 MPLBACKEND=Agg
".venv/bin/ruff" check packages integration-tests tools
exec ".venv/bin/python" -m pytest packages integration-tests -q "$@"

#!/usr/bin/env bash
# The demo: set up the environment (tools/setup.sh), then every method of medimg on small synthetic data with
# ground truth, from ImageNet weights, in about 5 minutes on 2 CPU cores (tools/demo.py; its output and
# index.html go to runs/demo, or --out DIR). Arguments go to tools/demo.py (e.g. --methods crl iis).
# `bash tools/demo.sh --full [methods]` runs the full-size demo instead (tools/demo_full.sh, about an hour).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ "${1:-}" = "--full" ]; then
  shift
  exec bash "$ROOT/tools/demo_full.sh" "$@"
fi
bash "$ROOT/tools/setup.sh"
export HF_HUB_OFFLINE=1 MPLBACKEND=Agg
exec "$ROOT/.venv/bin/python" "$ROOT/tools/demo.py" "$@"

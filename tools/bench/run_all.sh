#!/usr/bin/env bash
# Rerun every benchmark (long: about an hour on 2 CPU cores) and regenerate docs/benchmarks.md.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
PY=".venv/bin/python"
export HF_HUB_OFFLINE=1 MPLBACKEND=Agg
"$PY" tools/bench/loop_overhead.py --repeats 3
"$PY" tools/bench/crl_logic_speed.py
"$PY" tools/bench/baselines.py
"$PY" tools/bench/crl_synthetic.py
"$PY" tools/bench/crl_wbcatt.py
"$PY" tools/bench/report.py

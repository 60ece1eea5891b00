#!/usr/bin/env bash
# Set up the environment (tools/setup.sh) and run the main job on the embedded default data:
# generate the synthetic dermoscopy set with ground-truth concepts, masks and rule, verify it, show
# its card and write a preview of sample images. Each method's issue adds its train/evaluate/explain
# step here. Output goes to runs/demo (override with MEDIMG_DEMO_OUT).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/tools/setup.sh"
cd "$ROOT"
export HF_HUB_OFFLINE=1 MPLBACKEND=Agg
OUT="${MEDIMG_DEMO_OUT:-$ROOT/runs/demo}"
BIN="$ROOT/.venv/bin"
DATA="$OUT/synth-derm"

if [ ! -f "$DATA/dataset.json" ]; then
  "$BIN/medimg" synth synth-derm --n 500 --out "$DATA" --seed 0
fi
"$BIN/medimg" datasets verify "$DATA" --format csv
"$BIN/medimg" datasets preview "$DATA" --format csv --split train --n 16 --out "$OUT/synth-derm-preview.png"
cat "$DATA/card.md"
echo
echo "demo done: data in $DATA, preview in $OUT/synth-derm-preview.png"

#!/usr/bin/env bash
# The full-size demo (`bash tools/demo.sh --full`; the default `bash tools/demo.sh` is tools/demo.py, 5 minutes).
# Set up the environment (tools/setup.sh) and run the main job on the embedded default data:
# generate the synthetic dermoscopy set with ground-truth concepts, masks and rule, verify it, show
# its card, write a preview of sample images, train and evaluate the black-box baseline on it, then
# each method's train / explain steps: CRL, Concepts from Neurons and IIS (both on the baseline just trained),
# CIPL (on synth-cxr) and the DAE counterfactuals (on synth-grade). Output goes to runs/demo-full (override with
# MEDIMG_DEMO_OUT). Arguments pick methods: `bash tools/demo.sh --full crl iis` (default: all five; about an hour
# on 2 CPU cores, of which the DAE's training is 16 minutes).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/tools/setup.sh"
cd "$ROOT"
export HF_HUB_OFFLINE=1 MPLBACKEND=Agg
OUT="${MEDIMG_DEMO_OUT:-$ROOT/runs/demo-full}"
METHODS="${*:-crl neuron-concepts iis cipl dae}"
wants() { [[ " $METHODS " == *" $1 "* ]]; }
# each command gets its own --out, so its run folder is the newest folder there (no output is parsed)
last_run() { ls -d "$1"/*/ | sort | tail -n 1 | sed 's:/$::'; }
BIN="$ROOT/.venv/bin"
DATA="$OUT/synth-derm"

if [ ! -f "$DATA/dataset.json" ]; then
  "$BIN/medimg" synth synth-derm --n 1000 --out "$DATA" --seed 0
fi
"$BIN/medimg" datasets verify "$DATA" --format csv
"$BIN/medimg" datasets preview "$DATA" --format csv --split train --n 16 --out "$OUT/synth-derm-preview.png"
cat "$DATA/card.md"
echo
# The black-box baseline every interpretable method is compared with: train, evaluate on test.
"$BIN/medimg" train-baseline --config baseline-synth-derm --root "$DATA" --device cpu --seed 0 --out "$OUT/runs/baseline"
RUN="$(last_run "$OUT/runs/baseline")"
"$BIN/python" - "$RUN" <<'PY'
import json, sys
m = json.load(open(f"{sys.argv[1]}/metrics.json"))
t = m["test"]
print(f"baseline test accuracy {t['accuracy']:.3f} (95% CI {t['accuracy_ci'][0]:.3f}-{t['accuracy_ci'][1]:.3f}), "
      f"AUROC {t['auroc']:.3f}, {m['wall_time_s']:.0f} s")
PY
IMAGE="$DATA/$("$BIN/python" -c "import pandas as pd, sys; f = pd.read_csv(sys.argv[1]); print(f[f.split == 'test'].path.iloc[0])" "$DATA/labels.csv")"
if wants crl; then
# CRL: concepts -> Boolean rules; the rules it learned and the explanation of one test image.
"$BIN/crl" train --config synthetic-cpu --root "$DATA" --device cpu --seed 0 --out "$OUT/runs/crl"
CRL_RUN="$(last_run "$OUT/runs/crl")"
"$BIN/crl" rules "$CRL_RUN" | head -n 20
"$BIN/crl" explain "$CRL_RUN" "$IMAGE"
"$BIN/python" - "$CRL_RUN" <<'PY'
import json, sys
m = json.load(open(f"{sys.argv[1]}/metrics.json"))
t, r = m["test"], m["rules"]
print(f"CRL test accuracy {t['accuracy']:.3f} (95% CI {t['accuracy_ci'][0]:.3f}-{t['accuracy_ci'][1]:.3f}), "
      f"{r['count']} rules, mean length {r['mean_length']:.2f}, {m['wall_time_s']:.0f} s")
PY
fi
if wants neuron-concepts; then
  # Concepts from Neurons on the baseline: its features -> SAE -> named concepts -> selection -> bottleneck.
  "$BIN/neuron-concepts" run --config synth-derm-cpu --opaque-run "$RUN" --device cpu --seed 0 --out "$OUT/nc"
  NC="$(last_run "$OUT/nc")"
  "$BIN/neuron-concepts" explain "$NC/cbm" "$IMAGE" --out "$OUT/nc-explain.png"
fi
if wants iis; then
  # IIS: the trained baseline's representation against the same architecture at random initialisation.
  "$BIN/iis" score --config synth-derm-cpu --root "$DATA" --backbone "resnet18:$RUN" --backbone resnet18:random \
    --device cpu --seed 0 --out "$OUT/runs/iis"
  IIS_RUN="$(last_run "$OUT/runs/iis")"
  "$BIN/iis" explain "$IIS_RUN" "$IMAGE" --out "$OUT/iis-explain.png"
fi
if wants cipl; then
  # CIPL on synthetic chest X-rays with finding masks: prototypes, reasoning for one image, the gallery.
  CXR="$OUT/synth-cxr"
  [ -f "$CXR/dataset.json" ] || "$BIN/medimg" synth synth-cxr --n 1500 --size 64 --out "$CXR" --seed 0
  "$BIN/cipl" train --config synth-cxr-cpu --root "$CXR" --device cpu --seed 0 --out "$OUT/runs/cipl"
  CIPL_RUN="$(last_run "$OUT/runs/cipl")"
  "$BIN/cipl" reason "$CIPL_RUN" "$CXR/images/cxr_00004.png" --out "$OUT/cipl-reason"
  "$BIN/cipl" gallery "$CIPL_RUN"
fi
if wants dae; then
  # Diffusion-autoencoder counterfactuals on synthetic grades: train, boundary, one image at grades 0..4.
  GRADE="$OUT/synth-grade"
  [ -f "$GRADE/dataset.json" ] || "$BIN/medimg" synth synth-grade --n 3000 --size 32 --out "$GRADE" --seed 0
  "$BIN/dae-cf" train --config synth-grade-cpu --root "$GRADE" --device cpu --seed 0 --out "$OUT/runs/dae"
  DAE_RUN="$(last_run "$OUT/runs/dae")"
  "$BIN/dae-cf" fit-boundary "$DAE_RUN"
  "$BIN/dae-cf" counterfactual "$DAE_RUN" "$(ls "$GRADE"/images/*.png | head -n 1)" --grades 0 1 2 3 4
fi
echo "demo done ($METHODS): data in $DATA, preview in $OUT/synth-derm-preview.png, baseline run in $RUN; every run under $OUT"

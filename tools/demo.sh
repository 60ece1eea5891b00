#!/usr/bin/env bash
# Set up the environment (tools/setup.sh) and run the main job on the embedded default data:
# generate the synthetic dermoscopy set with ground-truth concepts, masks and rule, verify it, show
# its card, write a preview of sample images, train and evaluate the black-box baseline on it, then
# CRL (train, the rules it learned, the explanation of one test image). Each method's issue adds its
# train/evaluate/explain step here. Output goes to runs/demo (override with MEDIMG_DEMO_OUT).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/tools/setup.sh"
cd "$ROOT"
export HF_HUB_OFFLINE=1 MPLBACKEND=Agg
OUT="${MEDIMG_DEMO_OUT:-$ROOT/runs/demo}"
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
"$BIN/medimg" train-baseline --config baseline-synth-derm --root "$DATA" --device cpu --seed 0 --out "$OUT/runs" \
  | tee "$OUT/baseline.log"
RUN="$(tail -n 1 "$OUT/baseline.log" | sed 's/^run folder: //')"
"$BIN/python" - "$RUN" <<'PY'
import json, sys
m = json.load(open(f"{sys.argv[1]}/metrics.json"))
t = m["test"]
print(f"baseline test accuracy {t['accuracy']:.3f} (95% CI {t['accuracy_ci'][0]:.3f}-{t['accuracy_ci'][1]:.3f}), "
      f"AUROC {t['auroc']:.3f}, {m['wall_time_s']:.0f} s")
PY
# CRL: concepts -> Boolean rules; the rules it learned and the explanation of one test image.
"$BIN/crl" train --config synthetic-cpu --root "$DATA" --device cpu --seed 0 --out "$OUT/runs" | tee "$OUT/crl.log"
CRL_RUN="$(tail -n 1 "$OUT/crl.log" | sed 's/^run folder: //')"
"$BIN/crl" rules "$CRL_RUN" | head -n 20
IMAGE="$DATA/$("$BIN/python" -c "import pandas as pd, sys; f = pd.read_csv(sys.argv[1]); print(f[f.split == 'test'].path.iloc[0])" "$DATA/labels.csv")"
"$BIN/crl" explain "$CRL_RUN" "$IMAGE"
"$BIN/python" - "$CRL_RUN" <<'PY'
import json, sys
m = json.load(open(f"{sys.argv[1]}/metrics.json"))
t, r = m["test"], m["rules"]
print(f"CRL test accuracy {t['accuracy']:.3f} (95% CI {t['accuracy_ci'][0]:.3f}-{t['accuracy_ci'][1]:.3f}), "
      f"{r['count']} rules, mean length {r['mean_length']:.2f}, {m['wall_time_s']:.0f} s")
PY
echo "demo done: data in $DATA, preview in $OUT/synth-derm-preview.png, baseline run in $RUN, CRL run in $CRL_RUN"

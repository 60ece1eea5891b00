"""DAE counterfactuals on synth-grade (32 px, ground truth known): the CPU-budget pipeline end to end.

    python tools/bench/dae_synth_grade.py [--n 3000] [--out runs/bench-dae]

1. `medimg synth synth-grade` (32 px) and a short `medimg train-baseline` (the independent image classifier);
2. `dae-cf train --config synth-grade-cpu` (the diffusion autoencoder, no labels);
3. `dae-cf encode` + `dae-cf fit-boundary` (linear SVM for grade > 0, grade calibrated on the distance);
4. `dae-cf evaluate` with each edit of dae_edits.py (ours, `--edit grade`, target grades 0..4; the official
   notebooks' fixed steps, `--edit step`, -900 ... +900 along the normal; the same steps along the class-mean
   difference), each on the validation split (where one is chosen) and on test: latent and image flip rates, Spearman of target vs re-encoded
   grade, proximity, reconstruction error, the decoder's latent-swap response, and the generator's
   measure_structure on every counterfactual (monotone series, effect ratio, removal towards grade 0, and the
   share of the change inside the plaque).

Targets (issues 8 and 21): latent AUROC >= 0.9, calibration Spearman >= 0.8, measured structure monotone in the
target, effect ratio >= 0.5 with >= 70% of the change inside the plaque, and the counterfactual to grade 0
removing at least half of the way to a real grade-0 image (for the chosen edit; both edits' values are kept).
`--dae-run RUN --baseline-run RUN` re-evaluate the runs of an earlier call instead of training again.
Figures go to docs/figures/dae/.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import ROOT, command_line, run_command, run_or_reuse, write_result
from dae_edits import compare_edits, summary

FIGURES = ROOT / "docs" / "figures" / "dae"




def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=3000, help="synth-grade images (70/15/15 split)")
    p.add_argument("--n-eval", type=int, default=40, help="test images given counterfactual series")
    p.add_argument("--out", default=str(ROOT / "runs" / "bench-dae"))
    p.add_argument("--baseline-run", default=None, help="reuse this baseline run instead of training one")
    p.add_argument("--dae-run", default=None,
                   help="reuse this trained DAE run (its training numbers are read from its metrics.json)")
    p.add_argument("--dae-args", nargs=argparse.REMAINDER, default=[], help="extra `dae-cf train` overrides")
    args = p.parse_args()
    out = Path(args.out)
    bins = Path(sys.executable).parent
    short = lambda cmd: shlex.join(cmd).replace(str(out), "runs/bench-dae").replace(str(bins) + "/", "")  # noqa: E731
    data = out / "synth-grade-32"
    data_cmd = ["medimg", "synth", "synth-grade", "--n", str(args.n), "--out", str(data), "--seed", "0",
                "--size", "32"]
    t0 = time.perf_counter()
    if not (data / "dataset.json").exists():
        subprocess.run([str(bins / "medimg"), *data_cmd[1:]], check=True, capture_output=True)
    data_time = time.perf_counter() - t0

    base_cmd = [str(bins / "medimg"), "train-baseline", "--dataset", "csv", "--root", str(data), "--backbone",
                "resnet18", "--image-size", "32", "--epochs", "10", "--batch-size", "64", "--lr", "1e-3",
                "--data.scale_min", "1.0", "--device", "cpu", "--seed", "0", "--out", str(out), "--no-progress"]
    base_run, base_time = run_or_reuse(base_cmd, args.baseline_run, out, echo=True)

    train_cmd = [str(bins / "dae-cf"), "train", "--config", "synth-grade-cpu", "--root", str(data), "--device", "cpu",
                 "--out", str(out), *args.dae_args]
    dae_run, train_time = run_or_reuse(train_cmd, args.dae_run, out, echo=True)  # or an earlier run of this script
    encode_cmd = [str(bins / "dae-cf"), "encode", str(dae_run), "--device", "cpu"]
    _, encode_time, _ = run_command(encode_cmd, echo=True)
    boundary_cmd = [str(bins / "dae-cf"), "fit-boundary", str(dae_run), "--device", "cpu"]
    _, boundary_time, _ = run_command(boundary_cmd, echo=True)
    edits = compare_edits(bins, dae_run, base_run, args.n_eval, short)
    chosen = edits["chosen"]
    eval_dir = edits["folders"][f"test_{chosen}"]

    metrics = json.loads((dae_run / "metrics.json").read_text())
    cf = edits["test"][chosen]
    base = json.loads((base_run / "metrics.json").read_text())
    FIGURES.mkdir(parents=True, exist_ok=True)
    figures = {}
    for name, src in (("counterfactuals", eval_dir / "figures" / "counterfactuals.png"),
                      *((f"counterfactuals_{v}", edits["folders"][f"test_{v}"] / "figures" / "counterfactuals.png")
                        for v in edits["test"]),
                      ("reconstructions", dae_run / "figures" / "reconstructions.png"),
                      ("calibration", dae_run / "figures" / "calibration.png"),
                      ("training_curves", dae_run / "figures" / "training_curves.png")):
        dst = FIGURES / f"synth_grade_{name}.png"
        shutil.copyfile(src, dst)
        figures[name] = str(dst.relative_to(ROOT))
    bt, bg = metrics["boundary"]["test"]["binary"], metrics["boundary"]["test"]["grade"]

    def edit_targets(m: dict) -> dict:
        ms, low = m.get("measure", {}), m.get("towards_lowest", {})
        per_target = ms.get("mean_measure_per_target", [])
        rising = bool(per_target) and bool(np.all(np.diff(per_target) > 0))
        inside = 1 - m["locality"]["outside_fraction"] if "locality" in m else None
        low_inside = 1 - low["locality"]["outside_fraction"] if "locality" in low else None
        return {  # direction: the mean measure rises with every target step and most series never fall
            "measure_monotone": {"value": ms.get("monotone_fraction"),
                                 "target": "mean rises with the target, >= 0.5 of the series monotone",
                                 "met": rising and (ms.get("monotone_fraction") or 0) >= 0.5},
            # size: the move from the lowest to the highest target against the real grade-0 -> grade-4 difference
            "measure_effect_ratio": {"value": ms.get("effect_ratio"), "target": 0.5,
                                     "met": (ms.get("effect_ratio") or 0) >= 0.5},
            "change_inside_plaque": {"value": inside, "target": 0.7, "met": (inside or 0) >= 0.7},
            "removal_towards_grade_0": {"value": low.get("removal_ratio"), "target": 0.5,
                                        "met": (low.get("removal_ratio") or 0) >= 0.5},
            "removal_change_inside_plaque": {"value": low_inside, "target": 0.7, "met": (low_inside or 0) >= 0.7},
            "measure_spearman_pooled": {"value": ms.get("spearman_target_vs_measure")}}

    per_edit = {edit: edit_targets(m) for edit, m in edits["test"].items()}
    targets = {"latent_auroc": {"value": bt["auroc"], "target": 0.9, "met": bt["auroc"] >= 0.9},
               "calibration_spearman": {"value": bg["spearman"], "target": 0.8, "met": bg["spearman"] >= 0.8},
               **per_edit[chosen]}
    result = {
        "command": command_line(),
        "commands": {"data": short(data_cmd), "baseline": short(base_cmd), "train": short(train_cmd),
                     "encode": short(encode_cmd), "fit_boundary": short(boundary_cmd),
                     "evaluate": edits["commands"][f"test_{chosen}"],
                     **{f"evaluate_{k}": v for k, v in edits["commands"].items()}},
        "data": {"n": args.n, "size": 32, "sizes": metrics["sizes"]},
        "train": metrics["train"], "reconstruction_val": metrics.get("reconstruction"),
        "boundary": {k: metrics["boundary"][k] for k in ("calibration", "val", "test", "config")},
        "counterfactuals": summary(edits["test"][chosen]),
        "edits": {"chosen": chosen, "rule": edits["rule"], "targets_by_edit": per_edit,
                  "val": {e: summary(m) for e, m in edits["val"].items()},
                  "test": {e: summary(m) for e, m in edits["test"].items()}},
        "baseline": {"run": str(base_run.relative_to(ROOT)) if base_run.is_relative_to(ROOT) else str(base_run),
                     "test": {k: v for k, v in base["test"].items() if not isinstance(v, dict)},
                     "wall_time_s": base["wall_time_s"]},
        "targets": targets,
        "wall_time_s": {"data": data_time, "baseline": base_time, "train": train_time, "encode": encode_time,
                        "fit_boundary": boundary_time, "evaluate": edits["wall_time_s"][f"test_{chosen}"],
                        **{f"evaluate_{k}": v for k, v in edits["wall_time_s"].items()}},
        "peak_memory_mb": {"train": metrics["peak_memory_mb"], "evaluate": cf["peak_memory_mb"]},
        "figures": figures, "run": str(dae_run.relative_to(ROOT)) if dae_run.is_relative_to(ROOT) else str(dae_run),
    }
    print(json.dumps(targets, indent=1))
    write_result("dae_synth_grade", result)


if __name__ == "__main__":
    main()

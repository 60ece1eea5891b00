"""DAE latent classifier and grade regression on RetinaMNIST next to the medimg-core black-box baseline.

    python tools/bench/dae_retinamnist.py [--out runs/bench-dae] [--baseline RUN] [--dae-run RUN]

The DAE is trained with `dae-cf train --config retinamnist-cpu` on the official training split (28 px images
resized to 32 px, no labels); the linear SVM (grade > 0) and the grade calibration are fitted on the training
latents and tested on the official val and test splits. The black-box baseline is trained here first with
`medimg train-baseline --config baseline-retinamnist` (resnet18 at the native 28 px; `--baseline RUN` reuses an
existing run instead): its softmax gives P(grade > 0) = 1 - p(grade 0) and the expected grade, on the same splits.
A few validation and test images also get counterfactual series with both edits (dae_edits.py: ours, the
smallest move to each target grade, and the official notebooks' fixed steps, -900 ... +900 along the normal),
judged by the baseline (flip rates), one edit chosen on validation; each evaluation also runs the latent-swap
probe (a grade-0 image's x_T rendered with a grade-4 image's z_sem: pixel change and the baseline's expected
grade). `--dae-run RUN` re-evaluates a trained DAE instead of training one.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import ROOT, SHARED, command_line, run_command, run_or_reuse, write_result
from dae_edits import compare_edits, summary
from dae_synth_grade import FIGURES

#: the official repository's released RetinaMNIST latents (128 px DAE trained on GPUs for 1.25 M steps), re-run in
#: /work/shared/research/dae.md: linear SVM on z_sem, val split (n = 120)
OFFICIAL_GPU_VAL = {"auroc": 0.891, "accuracy": 0.850, "grade_mae": 0.728, "grade_spearman": 0.706,
                    "source": "matanat/dae_counterfactual latents/retina_latents.pt, re-run in the research notes"}


def baseline_scores(run_dir: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """The baseline's softmax (N, 5) on an official split, and the true grades."""
    import torch
    from torch.utils.data import DataLoader

    from medimg_core.baseline import load_baseline
    from medimg_core.data import load_dataset
    from medimg_core.data.transforms import TransformConfig, eval_transform

    model, config = load_baseline(run_dir)
    root = config["config"]["data"]["root"]
    tf = eval_transform(TransformConfig(size=config["image_size"], channels=config["in_chans"],
                                        normalize=config["normalize"]))
    ds = load_dataset("retinamnist", root if Path(root).exists() else SHARED / "medmnist", split, transform=tf)
    scores, targets = [], []
    with torch.no_grad():
        for batch in DataLoader(ds, batch_size=200):
            scores.append(torch.softmax(model(batch["image"]), 1).numpy())
            targets.append(batch["target"].numpy())
    return np.concatenate(scores), np.concatenate(targets)


def baseline_metrics(run_dir: Path, split: str, n_boot: int = 1000) -> dict:
    from dae_counterfactual.evaluate import grade_metrics
    from medimg_core.metrics import metrics_with_ci

    scores, grades = baseline_scores(run_dir, split)
    y = (grades >= 1).astype(int)
    binary = metrics_with_ci("binary", y, scores[:, 1:].sum(1), ["0", ">0"], n_boot=n_boot)
    binary.pop("bootstrap")
    return {"binary": binary, "grade_expected": grade_metrics(grades, scores @ np.arange(5), 5, n_boot),
            "grade_argmax": grade_metrics(grades, scores.argmax(1).astype(float), 5, n_boot), "n": int(len(y))}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--baseline", default=None, help="an existing baseline-retinamnist run (default: train one)")
    p.add_argument("--out", default=str(ROOT / "runs" / "bench-dae"))
    p.add_argument("--n-eval", type=int, default=20, help="val and test images given counterfactual series")
    p.add_argument("--dae-run", default=None, help="reuse this trained DAE run instead of training one")
    p.add_argument("--dae-args", nargs=argparse.REMAINDER, default=[], help="extra `dae-cf train` overrides")
    args = p.parse_args()
    out = Path(args.out)
    if not (SHARED / "medmnist" / "retinamnist.npz").is_file():
        raise SystemExit(f"{SHARED / 'medmnist' / 'retinamnist.npz'} not found: this benchmark needs the shared data")
    bins = Path(sys.executable).parent
    base_cmd = [str(bins / "medimg"), "train-baseline", "--config", "baseline-retinamnist", "--root",
                str(SHARED / "medmnist"), "--device", "cpu", "--seed", "0", "--out", str(out), "--no-progress"]
    if args.baseline is None:
        base_run, base_train_time, _ = run_command(base_cmd, creates_in=out, echo=True)
    else:
        base_run, base_train_time = Path(args.baseline), None
    if not (base_run / "metrics.json").is_file():
        raise SystemExit(f"{base_run}: no baseline run here (train one with medimg train-baseline --config "
                         "baseline-retinamnist)")
    short = lambda cmd: (shlex.join(cmd).replace(str(out), "runs/bench-dae").replace(str(bins) + "/", "")  # noqa: E731
                         .replace(str(SHARED), "../shared/data").replace(str(ROOT) + "/", ""))
    train_cmd = [str(bins / "dae-cf"), "train", "--config", "retinamnist-cpu", "--root", str(SHARED / "medmnist"),
                 "--device", "cpu", "--out", str(out), *args.dae_args]
    dae_run, train_time = run_or_reuse(train_cmd, args.dae_run, out, echo=True)
    encode_cmd = [str(bins / "dae-cf"), "encode", str(dae_run), "--device", "cpu"]
    _, encode_time, _ = run_command(encode_cmd, echo=True)
    boundary_cmd = [str(bins / "dae-cf"), "fit-boundary", str(dae_run), "--device", "cpu"]
    _, boundary_time, _ = run_command(boundary_cmd, echo=True)
    edits = compare_edits(bins, dae_run, base_run, args.n_eval, short)
    chosen = edits["chosen"]
    eval_dir = edits["folders"][f"test_{chosen}"]
    t0 = time.perf_counter()
    base = {split: baseline_metrics(base_run, split) for split in ("val", "test")}
    base_time = time.perf_counter() - t0
    from medimg_core.checkpoint import load_config_json
    metrics = json.loads((dae_run / "metrics.json").read_text())
    cf = edits["test"][chosen]
    base_saved = json.loads((base_run / "metrics.json").read_text())
    FIGURES.mkdir(parents=True, exist_ok=True)
    figures = {}
    for name, src in (("counterfactuals", eval_dir / "figures" / "counterfactuals.png"),
                      *((f"counterfactuals_{v}", edits["folders"][f"test_{v}"] / "figures" / "counterfactuals.png")
                        for v in edits["test"]),
                      ("reconstructions", dae_run / "figures" / "reconstructions.png"),
                      ("calibration", dae_run / "figures" / "calibration.png")):
        dst = FIGURES / f"retinamnist_{name}.png"
        shutil.copyfile(src, dst)
        figures[name] = str(dst.relative_to(ROOT))
    result = {
        "command": command_line(),
        "batch_size": load_config_json(dae_run / "checkpoints" / "best")["config"]["train"]["batch_size"],
        "commands": {"train": short(train_cmd), "encode": short(encode_cmd), "fit_boundary": short(boundary_cmd),
                     "evaluate": edits["commands"][f"test_{chosen}"],
                     **{f"evaluate_{k}": v for k, v in edits["commands"].items()},
                     "baseline": short(base_cmd) if args.baseline is None else f"(existing run {base_run})"},
        "train": metrics["train"], "reconstruction_val": metrics.get("reconstruction"),
        "dae": {split: metrics["boundary"][split] for split in ("val", "test")},
        "calibration": metrics["boundary"]["calibration"],
        "baseline": base, "baseline_run": str(base_run.relative_to(ROOT)) if base_run.is_relative_to(ROOT) else
        str(base_run),
        "baseline_saved_test": {k: v for k, v in base_saved["test"].items() if not isinstance(v, dict)},
        "counterfactuals": summary(cf),
        "edits": {"chosen": chosen, "rule": edits["rule"],
                  "val": {e: summary(m) for e, m in edits["val"].items()},
                  "test": {e: summary(m) for e, m in edits["test"].items()}},
        "official_gpu_val": OFFICIAL_GPU_VAL,
        "wall_time_s": {"train": train_time, "encode": encode_time, "fit_boundary": boundary_time,
                        "evaluate": edits["wall_time_s"][f"test_{chosen}"], "baseline_predict": base_time,
                        **{f"evaluate_{k}": v for k, v in edits["wall_time_s"].items()},
                        "baseline_train": base_train_time,
                        "baseline_train_reported": base_saved["wall_time_s"]},
        "peak_memory_mb": {"train": metrics["peak_memory_mb"], "evaluate": cf["peak_memory_mb"]},
        "figures": figures,
        "run": str(dae_run.relative_to(ROOT)) if dae_run.is_relative_to(ROOT) else str(dae_run),
    }
    d, b = result["dae"]["test"], base["test"]
    print(f"test: DAE AUROC {d['binary']['auroc']:.3f} vs baseline {b['binary']['auroc']:.3f}; grade Spearman "
          f"{d['grade']['spearman']:.3f} vs {b['grade_expected']['spearman']:.3f}")
    write_result("dae_retinamnist", result)


if __name__ == "__main__":
    main()

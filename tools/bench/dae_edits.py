"""The counterfactual edits of dae-counterfactual, evaluated with the same metrics, one chosen on validation.

`compare_edits` runs `dae-cf evaluate` on a DAE run for each variant in VARIANTS, on the validation split (where
one is chosen by SELECTION_RULE) and on the test split, so the test numbers of every variant are reported and the
choice was not made on them:

- "grade" (ours): the smallest move to each target grade (`--edit grade`);
- "step" (the official notebooks'): fixed steps along the hyperplane normal, signed: -900 ... +900
  (`--edit step`);
- "step-mean-difference" (ours): the same steps along the class-mean difference of the training latents
  (`--edit step --along mean-difference`).

Used by dae_synth_grade.py and dae_retinamnist.py.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

from common import run_command

VARIANTS: dict[str, list[str]] = {"grade": ["--edit", "grade"], "step": ["--edit", "step", "--along", "normal"],
                                  "step-mean-difference": ["--edit", "step", "--along", "mean-difference"]}
SELECTION_RULE = ("the higher image-classifier flip rate on validation (validity, the paper's yardstick); "
                  "within 0.02 of the best, the higher SSIM to the reconstruction (proximity)")


def _validity(metrics: dict) -> float:
    ic = metrics.get("image_classifier") or metrics["latent"]
    value = ic["flip_rate"]
    return -1.0 if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


def choose_edit(val: dict[str, dict]) -> str:
    """SELECTION_RULE over {variant: metrics of the validation split}."""
    best = max(_validity(m) for m in val.values())
    close = [v for v, m in val.items() if _validity(m) >= best - 0.02]
    return max(close, key=lambda v: val[v]["proximity_to_reconstruction"]["ssim"])


def compare_edits(bins: Path, dae_run: Path, base_run: Path, n_eval: int, short: Callable[[list[str]], str],
                  extra: list[str] | None = None) -> dict:
    """Evaluate every variant on val and test; returns the selection, the commands, every metrics.json, the
    evaluation folders and wall times."""
    out: dict = {"rule": SELECTION_RULE, "val": {}, "test": {}, "commands": {}, "folders": {}, "wall_time_s": {}}
    for split in ("val", "test"):
        for variant, flags in VARIANTS.items():
            cmd = [str(bins / "dae-cf"), "evaluate", str(dae_run), "--split", split, "--n", str(n_eval), *flags,
                   "--oracle", str(base_run), "--device", "cpu", "--figures", "6", *(extra or [])]
            folder, wall, _ = run_command(cmd, creates_in=dae_run / "evaluations", echo=True)
            out[split][variant] = json.loads((folder / "metrics.json").read_text())
            out["commands"][f"{split}_{variant}"] = short(cmd)
            out["folders"][f"{split}_{variant}"] = folder
            out["wall_time_s"][f"{split}_{variant}"] = wall
    out["chosen"] = choose_edit(out["val"])
    return out


KEEP = ("edit", "n_images", "targets", "target_grades", "reconstruction", "latent", "image_classifier",
        "proximity_to_reconstruction", "per_target", "settings", "latent_swap", "locality", "measure",
        "towards_lowest", "peak_memory_mb")


def summary(metrics: dict) -> dict:
    """The parts of one evaluation's metrics.json that the result file keeps (not the series)."""
    return {k: metrics[k] for k in KEEP if k in metrics}

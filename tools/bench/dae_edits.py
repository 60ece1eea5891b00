"""The two counterfactual edits of dae-counterfactual, evaluated with the same metrics, one chosen on validation.

`compare_edits` runs `dae-cf evaluate` four times on a DAE run: on the validation split with `--edit grade`
(ours: the smallest move to each target grade) and `--edit step` (the official notebooks' fixed steps along the
normal, here signed: -900 ... +900), picks one by SELECTION_RULE, and evaluates both on the test split, so the
test numbers of both are reported and the choice was not made on them. Used by dae_synth_grade.py and
dae_retinamnist.py.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

from common import run_command

EDITS = ("grade", "step")
SELECTION_RULE = ("the higher image-classifier flip rate on validation (validity, the paper's yardstick); "
                  "within 0.02 of each other, the higher SSIM to the reconstruction (proximity)")


def _validity(metrics: dict) -> float:
    ic = metrics.get("image_classifier") or metrics["latent"]
    value = ic["flip_rate"]
    return -1.0 if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


def choose_edit(val: dict[str, dict]) -> str:
    """SELECTION_RULE over {"grade": metrics, "step": metrics} of the validation split."""
    grade, step = _validity(val["grade"]), _validity(val["step"])
    if abs(grade - step) > 0.02:
        return "grade" if grade > step else "step"
    ssim = {e: val[e]["proximity_to_reconstruction"]["ssim"] for e in EDITS}
    return "grade" if ssim["grade"] >= ssim["step"] else "step"


def compare_edits(bins: Path, dae_run: Path, base_run: Path, n_eval: int, short: Callable[[list[str]], str],
                  extra: list[str] | None = None) -> dict:
    """Evaluate both edits on val and test; returns the selection, the commands, every metrics.json and the
    evaluation folders (test) and wall times."""
    out: dict = {"rule": SELECTION_RULE, "val": {}, "test": {}, "commands": {}, "folders": {}, "wall_time_s": {}}
    for split in ("val", "test"):
        for edit in EDITS:
            cmd = [str(bins / "dae-cf"), "evaluate", str(dae_run), "--split", split, "--n", str(n_eval), "--edit",
                   edit, "--oracle", str(base_run), "--device", "cpu", "--figures", "6", *(extra or [])]
            folder, wall, _ = run_command(cmd, creates_in=dae_run / "evaluations", echo=True)
            out["val" if split == "val" else "test"][edit] = json.loads((folder / "metrics.json").read_text())
            out["commands"][f"{split}_{edit}"] = short(cmd)
            out["folders"][f"{split}_{edit}"] = folder
            out["wall_time_s"][f"{split}_{edit}"] = wall
    out["chosen"] = choose_edit(out["val"])
    return out


KEEP = ("edit", "n_images", "targets", "target_grades", "reconstruction", "latent", "image_classifier",
        "proximity_to_reconstruction", "per_target", "settings", "latent_swap", "locality", "measure",
        "towards_lowest", "peak_memory_mb")


def summary(metrics: dict) -> dict:
    """The parts of one evaluation's metrics.json that the result file keeps (not the series)."""
    return {k: metrics[k] for k in KEEP if k in metrics}

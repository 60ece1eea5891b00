"""The stages after training, on a run folder: encode the splits to z_sem, then fit the latent boundary.

    encode_run(RUN)          -> RUN/latents/<split>.safetensors (+ .json with the ids)
    fit_boundary_run(RUN)    -> RUN/checkpoints/best/boundary.json, metrics.json["boundary"], figures/calibration.png

The boundary is stored in the checkpoint folder whose encoder made the latents it was fitted on, so that folder
alone rebuilds the counterfactual explainer (`CounterfactualExplainer.from_pretrained`). `fit_boundary` is the
part `CounterfactualExplainer.fit` shares with the command: latents in, boundary and metrics out.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from dae_counterfactual.boundary import LatentBoundary
from dae_counterfactual.config import BoundaryConfig
from dae_counterfactual.metrics import boundary_metrics
from dae_counterfactual.run import (
    encode_dataset,
    eval_datasets,
    latents_path,
    load_dae,
    load_latents,
    require_run_dir,
    save_boundary,
    save_latents,
)
from medimg_core.config import config_to_dict
from medimg_core.data import DatasetCard
from medimg_core.figures import PAPER_RC, save_figure
from medimg_core.runs import Run

SPLITS = ("train", "val", "test")


def encode_run(run_dir: str | Path, splits: tuple[str, ...] = SPLITS, device: str = "cpu", batch_size: int = 64,
               root: str | None = None, progress: bool = True) -> dict[str, Path]:
    """Encode the run's dataset splits into run_dir/latents/ (the EMA encoder, eval transforms)."""
    run = load_dae(run_dir, device)
    run_dir = require_run_dir(run, "encode")
    datasets = eval_datasets(run.cfg, splits, root)
    return {split: save_latents(run_dir, split, encode_dataset(run.model, ds, batch_size, device, progress),
                                run.card.name)
            for split, ds in datasets.items()}


def check_boundary_task(card: DatasetCard) -> None:
    if card.task not in ("binary", "ordinal"):
        raise ValueError(f"{card.name}: the latent boundary needs a binary or ordinal target, "
                         f"this dataset is {card.task}")


def fit_boundary(run: str | Path | Run, latents: dict[str, dict[str, Any]], card: DatasetCard, cfg: BoundaryConfig,
                 n_boot: int = 1000, seed: int = 0) -> tuple[LatentBoundary, dict[str, Any]]:
    """Fit the LatentBoundary on latents["train"] ({"z": (N, D), "targets": (N,)}), measure it on every split
    given, store it in the run's best checkpoint, add metrics.json["boundary"] and figures/calibration.png
    (on the last split of train, val, test given). Returns (boundary, its metrics)."""
    run = run if isinstance(run, Run) else Run(run)
    check_boundary_task(card)
    start = time.perf_counter()
    boundary = LatentBoundary(classifier=cfg.classifier, C=cfg.C, standardize=cfg.standardize,
                              positive_min_grade=cfg.positive_min_grade, class_weight=cfg.class_weight)
    boundary.fit(latents["train"]["z"], latents["train"]["targets"])
    fit_time = time.perf_counter() - start
    save_boundary(boundary, run.checkpoint("best"))
    metrics: dict[str, Any] = {"config": config_to_dict(cfg), "fit_time_s": fit_time,
                               "calibration": {"slope": boundary.slope_, "offset": boundary.offset_,
                                               "r2_train": boundary.calibration_,
                                               "w_norm": float(np.linalg.norm(boundary.coef_))}}
    for split in (s for s in SPLITS if s in latents):
        metrics[split] = boundary_metrics(boundary, latents[split]["z"], latents[split]["targets"], card.num_classes,
                                          n_boot, seed)
    run.update_metrics("boundary", metrics)
    shown = [s for s in SPLITS if s in latents][-1]
    calibration_figure(boundary, latents[shown]["z"], latents[shown]["targets"], run.figures_dir / "calibration.png")
    return boundary, metrics


def fit_boundary_run(run_dir: str | Path, boundary_cfg: BoundaryConfig | None = None, device: str = "cpu",
                     n_boot: int | None = None, seed: int = 0, progress: bool = True) -> dict[str, Any]:
    """Fit the LatentBoundary on the training latents, evaluate on val and test, store it in checkpoints/best.

    Latents missing from run_dir/latents/ are encoded first. Adds metrics.json["boundary"] and
    figures/calibration.png.
    """
    run = load_dae(run_dir, device)
    run_dir = require_run_dir(run, "fit-boundary")
    check_boundary_task(run.card)
    missing = tuple(s for s in SPLITS if not latents_path(run_dir, s).is_file())
    if missing:
        encode_run(run_dir, missing, device, progress=progress)
    latents = {s: load_latents(run_dir, s) for s in SPLITS}
    cfg = boundary_cfg or run.cfg.boundary
    _, metrics = fit_boundary(run_dir, latents, run.card, cfg, run.cfg.bootstrap if n_boot is None else n_boot, seed)
    return metrics


def calibration_figure(boundary: LatentBoundary, z: np.ndarray, grades: np.ndarray, path: Path) -> Path:
    """Signed distance to the hyperplane of latents z (N, D) against the true grade (N,), with the calibration
    line."""
    import matplotlib.pyplot as plt

    d = boundary.distance(z)
    rng = np.random.default_rng(0)
    with plt.rc_context(PAPER_RC):
        fig, ax = plt.subplots(figsize=(4.2, 3.2))
        ax.scatter(d, np.asarray(grades) + rng.uniform(-0.15, 0.15, len(d)), s=8, alpha=0.5,
                   c=np.asarray(grades) >= boundary.positive_min_grade, cmap="coolwarm")
        xs = np.linspace(d.min(), d.max(), 50)
        ax.plot(xs, boundary.slope_ * xs + boundary.offset_, color="black", lw=1,
                label=f"grade = {boundary.slope_:.2f} d + {boundary.offset_:.2f}")
        ax.axvline(0, color="grey", lw=0.8, ls="--")
        ax.set_xlabel("signed distance to the hyperplane d(z)")
        ax.set_ylabel("true grade (jittered)")
        ax.legend(loc="upper left")
        fig.tight_layout()
        return save_figure(fig, path)

"""Image distances and the latent boundary's metrics (pure: arrays and a fitted boundary in).

- `image_distances` / `per_image`: MSE, L1 and SSIM between image batches (N, C, H, W) in [0, 1];
- `grade_metrics`: a calibrated (continuous) grade against the true grade: Spearman and MAE with bootstrap
  intervals, quadratic kappa, accuracy and macro F1 of the rounded grade;
- `boundary_metrics`: the latent classifier's binary metrics (pathology = grade >= positive_min_grade; AUROC
  from the signed distance, with intervals) and its grade metrics.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from scipy.stats import spearmanr
from sklearn.metrics import accuracy_score, cohen_kappa_score, f1_score, roc_auc_score

from dae_counterfactual.boundary import LatentBoundary
from medimg_core.metrics import bootstrap_ci, metrics_with_ci


def _ssim(a: np.ndarray, b: np.ndarray) -> float:
    """SSIM of two (C, H, W) images in [0, 1] (scikit-image, 7x7 window or the largest odd one that fits)."""
    from skimage.metrics import structural_similarity

    side = min(a.shape[-2:])
    win = min(7, side if side % 2 else side - 1)
    return float(structural_similarity(a, b, data_range=1.0, channel_axis=0, win_size=win))


def image_distances(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray) -> dict[str, float]:
    """Mean MSE, L1 and SSIM between image batches (N, C, H, W) in [0, 1]."""
    a = np.clip(np.asarray(a, dtype=np.float64), 0, 1)
    b = np.clip(np.asarray(b, dtype=np.float64), 0, 1)
    if a.shape != b.shape or a.ndim != 4:
        raise ValueError(f"image_distances: expected two (N, C, H, W) batches of one shape, got {a.shape}, {b.shape}")
    return {"mse": float(((a - b) ** 2).mean()), "l1": float(np.abs(a - b).mean()),
            "ssim": float(np.mean([_ssim(x, y) for x, y in zip(a, b, strict=True)]))}


def per_image(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(L1 (N,), SSIM (N,)) between image batches (N, C, H, W) in [0, 1]."""
    a, b = np.clip(a, 0, 1).astype(np.float64), np.clip(b, 0, 1).astype(np.float64)
    return np.abs(a - b).mean(axis=(1, 2, 3)), np.array([_ssim(x, y) for x, y in zip(a, b, strict=True)])


def _spearman(x: Sequence[float], y: Sequence[float]) -> float:
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.size < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return float(spearmanr(x, y).statistic)


def grade_metrics(true: np.ndarray, predicted: np.ndarray, num_grades: int, n_boot: int = 1000,
                  seed: int = 0) -> dict[str, Any]:
    """Calibrated (continuous) grade (N,) vs the true grade (N,): Spearman, MAE (rounded and continuous), QWK,
    accuracy."""
    true = np.asarray(true, dtype=np.float64)
    predicted = np.asarray(predicted, dtype=np.float64)
    rounded = np.clip(np.rint(predicted), 0, num_grades - 1).astype(np.int64)
    truth = true.astype(np.int64)
    spear = bootstrap_ci(_spearman, true, predicted, n_boot=n_boot, seed=seed)
    mae = bootstrap_ci(lambda a, b: float(np.abs(a - b).mean()), truth, rounded, n_boot=n_boot, seed=seed)
    return {"spearman": spear[0], "spearman_ci": [spear[1], spear[2]], "mae": mae[0], "mae_ci": [mae[1], mae[2]],
            "mae_continuous": float(np.abs(true - predicted).mean()),
            "qwk": float(cohen_kappa_score(truth, rounded, labels=np.arange(num_grades), weights="quadratic")),
            "accuracy": float(accuracy_score(truth, rounded)),
            "macro_f1": float(f1_score(truth, rounded, average="macro", zero_division=np.nan)), "n": int(true.size)}


def boundary_metrics(boundary: LatentBoundary, z: np.ndarray, grades: np.ndarray, num_grades: int,
                     n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Binary metrics of the latent classifier on latents z (N, D) (pathology = grade >= positive_min_grade) and
    grade metrics against the true grades (N,)."""
    y = (np.asarray(grades) >= boundary.positive_min_grade).astype(np.int64)
    binary = metrics_with_ci("binary", y, boundary.score_proba(z), ["negative", "positive"], n_boot=n_boot,
                             seed=seed)
    binary.pop("bootstrap", None)
    if len(np.unique(y)) == 2:  # the paper's notebooks report the AUROC of hard predictions
        binary["auroc_hard_labels"] = float(roc_auc_score(y, boundary.predict(z)))
    return {"binary": binary, "grade": grade_metrics(grades, boundary.grade(z), num_grades, n_boot, seed)}

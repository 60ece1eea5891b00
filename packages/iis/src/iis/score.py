"""The score: accuracy retention ratio (ARR) per sparsity ratio and its trapezoid integral (IIS).

    ARR(s) = Acc(concept head at sparsity s) / Acc(linear probe on the representation)
    IIS    = sum_i (s_{i+1} - s_i) * (ARR(s_i) + ARR(s_{i+1})) / 2     over the sorted ratios

Not normalised by the range of s and not clipped: a flat ARR of 1 over the default grid (0 ... 0.98)
gives 0.98, a single ratio gives 0, and a concept head that beats the probe gives ARR > 1.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from iis.config import DEFAULT_RATIOS
from medimg_core.metrics import bootstrap_ci

__all__ = ["DEFAULT_RATIOS", "accuracy_retention", "bootstrap_iis", "bootstrap_iis_difference", "compute_iis",
           "iis_from_correct"]


def _best(value: Any, what: str) -> float:
    """A number, or the maximum of a sequence of numbers (several learning rates)."""
    values = np.asarray(value, dtype=np.float64).reshape(-1)
    if values.size == 0:
        raise ValueError(f"{what}: no accuracy given")
    if not np.isfinite(values).all():
        raise ValueError(f"{what}: accuracies must be finite, got {values.tolist()}")
    if (values < 0).any() or (values > 1).any():
        raise ValueError(f"{what}: accuracies are fractions in [0, 1], got {values.tolist()}")
    return float(values.max())


def accuracy_retention(ratios: Sequence[float] | Mapping[float, Any], accuracies: Sequence[Any] | None = None,
                       probe_accuracy: float | Sequence[float] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(sorted unique ratios (R,), ARR (R,)).

    `ratios` and `accuracies` are aligned; an accuracy may be a number or a sequence (one per learning
    rate: the best is taken); a ratio listed twice keeps its best accuracy; `ratios` may instead be a
    mapping {ratio: accuracy or accuracies}. `probe_accuracy` likewise (the best of several lrs).
    """
    if isinstance(ratios, Mapping):
        if accuracies is not None:
            raise ValueError("pass either a {ratio: accuracy} mapping or ratios and accuracies, not both")
        pairs = list(ratios.items())
    else:
        if accuracies is None:
            raise ValueError("accuracies are missing")
        ratios, accuracies = list(ratios), list(accuracies)
        if len(ratios) != len(accuracies):
            raise ValueError(f"{len(ratios)} ratios but {len(accuracies)} accuracies; expected one per ratio")
        pairs = list(zip(ratios, accuracies, strict=True))
    if not pairs:
        raise ValueError("no sparsity ratio given")
    best: dict[float, float] = {}
    for s, acc in pairs:
        s = float(s)
        if not math.isfinite(s) or not 0.0 <= s < 1.0:
            raise ValueError(f"sparsity ratio {s} is outside [0, 1)")
        a = _best(acc, f"ratio {s}")
        best[s] = max(best.get(s, -1.0), a)
    if probe_accuracy is None:
        raise ValueError("probe_accuracy is missing: the accuracy of the linear probe on the representation")
    probe = _best(probe_accuracy, "probe accuracy")
    if probe <= 0:
        raise ValueError("the probe accuracy is 0: the accuracy retention ratio is undefined")
    order = sorted(best)
    return np.array(order), np.array([best[s] for s in order]) / probe


def compute_iis(ratios: Sequence[float] | Mapping[float, Any], accuracies: Sequence[Any] | None = None,
                probe_accuracy: float | Sequence[float] | None = None) -> float:
    """IIS: the trapezoid integral of ARR over the sorted sparsity ratios.

    >>> compute_iis([0, 0.5], [0.8, 0.6], 0.8)   # 0.5 * (1.0 + 0.75) / 2
    0.4375

    See `accuracy_retention` for the accepted forms (several lrs per ratio, a {ratio: acc} mapping).
    """
    s, arr = accuracy_retention(ratios, accuracies, probe_accuracy)
    return float(np.sum(np.diff(s) * (arr[1:] + arr[:-1]) / 2.0))


def iis_from_correct(correct: np.ndarray, ratios: Sequence[float]) -> float:
    """IIS from per-sample correctness (N, R + 1): R concept-head columns in `ratios` order, then the probe.

    Correctness is 1/0 per sample (or the fraction of labels right for multi-label tasks).
    """
    acc = np.asarray(correct, dtype=np.float64).mean(axis=0)
    return compute_iis(list(ratios), list(acc[:-1]), float(acc[-1]))


def bootstrap_iis(correct: np.ndarray, ratios: Sequence[float], n_boot: int = 1000, alpha: float = 0.05,
                  seed: int = 0) -> tuple[float, float, float]:
    """(IIS, low, high): percentile bootstrap over the evaluation samples.

    Test indices are resampled with replacement; every ratio's head and the probe are re-scored on the
    same resample (their selection on validation is kept), and IIS is recomputed.
    """
    ratios = list(ratios)
    return bootstrap_ci(lambda c: iis_from_correct(c, ratios), np.asarray(correct, dtype=np.float64),
                        n_boot=n_boot, alpha=alpha, seed=seed)


def bootstrap_iis_difference(correct_a: np.ndarray, correct_b: np.ndarray, ratios: Sequence[float],
                             n_boot: int = 1000, alpha: float = 0.05, seed: int = 0) -> tuple[float, float, float]:
    """(IIS_a - IIS_b, low, high): paired bootstrap of two representations scored on the same test samples."""
    a, b = np.asarray(correct_a, dtype=np.float64), np.asarray(correct_b, dtype=np.float64)
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"paired bootstrap needs the same test samples: {a.shape[0]} vs {b.shape[0]} rows")
    ratios = list(ratios)
    k = a.shape[1]
    return bootstrap_ci(lambda c: iis_from_correct(c[:, :k], ratios) - iis_from_correct(c[:, k:], ratios),
                        np.concatenate([a, b], axis=1), n_boot=n_boot, alpha=alpha, seed=seed)

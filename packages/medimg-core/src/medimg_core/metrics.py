"""Evaluation metrics of every method: classification, concept prediction and bootstrap intervals.

Point estimates come from scikit-learn and scipy. The bootstrap of `metrics_with_ci` evaluates the
headline metrics of all resamples at once from resampling counts (a weighted confusion matrix and a
weighted Mann-Whitney AUROC); the tests check that it gives the same values as scikit-learn on every
resample. Other metrics are bootstrapped by calling scikit-learn on each resample.

Conventions
-----------
- Binary, multiclass and ordinal predictions are the argmax of the scores; multilabel labels and
  concepts are predicted present when their probability is strictly above the threshold (0.5), which
  agrees with the argmax of a binary (N,) probability.
- Macro F1 averages over the classes (labels, concepts) that occur in the targets or the predictions;
  a label that is absent from both has an undefined F1 and is left out (scikit-learn's
  ``zero_division=np.nan``).
- An AUROC with a single class in the targets is undefined: NaN, never an error. Means over classes
  skip NaN entries and are NaN only when every entry is.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
from scipy.stats import spearmanr
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    cohen_kappa_score,
    f1_score,
    mean_absolute_error,
    precision_recall_curve,
    roc_auc_score,
)

log = logging.getLogger(__name__)

TASKS: tuple[str, ...] = ("binary", "multiclass", "multilabel", "ordinal")

HEADLINE_KEYS: dict[str, tuple[str, ...]] = {
    "binary": ("accuracy", "balanced_accuracy", "macro_f1", "auroc"),
    "multiclass": ("accuracy", "balanced_accuracy", "macro_f1", "auroc"),
    "ordinal": ("accuracy", "balanced_accuracy", "macro_f1", "auroc", "mae", "qwk"),
    "multilabel": ("accuracy", "balanced_accuracy", "macro_f1", "auroc_mean"),
}

_PROB_TOL = 1e-6  # slack on [0, 1] for float rounding
_ROW_SUM_TOL = 1e-2  # slack on softmax rows summing to 1 (half precision)
_CHUNK_ELEMENTS = 1 << 20  # resample indices drawn per chunk (bounds the memory of the bootstrap)


# --------------------------------------------------------------------------- helpers


def to_numpy(x: Any) -> np.ndarray:
    """Array-like or torch tensor (any device, bf16 included) -> numpy array."""
    if hasattr(x, "detach"):
        x = x.detach().cpu()
        if x.is_floating_point():
            x = x.float()
        return x.numpy()
    return np.asarray(x)


@contextmanager
def _quiet() -> Iterator[None]:
    """Silence the warnings scikit-learn and scipy raise for undefined metrics (we return NaN)."""
    with warnings.catch_warnings(), np.errstate(divide="ignore", invalid="ignore"):
        warnings.simplefilter("ignore")
        yield


def _nanmean(values: Sequence[float] | np.ndarray) -> float:
    arr = np.asarray(values, dtype=np.float64)
    arr = arr[~np.isnan(arr)]
    return float(arr.mean()) if arr.size else math.nan


def _auroc(target: np.ndarray, score: np.ndarray) -> float:
    """AUROC of a 0/1 target; NaN when the target has a single value."""
    target = np.asarray(target).astype(bool)
    if target.all() or not target.any():
        return math.nan
    return float(roc_auc_score(target, score))


def _best_f1(target: np.ndarray, score: np.ndarray) -> float:
    """Max F1 over the thresholds of the precision-recall curve; NaN without positives."""
    target = np.asarray(target).astype(bool)
    if not target.any():
        return math.nan
    precision, recall, _ = precision_recall_curve(target, score)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(denom), where=denom > 0)
    return float(f1.max())


def _best_f1_threshold(target: np.ndarray, score: np.ndarray) -> float:
    """The score threshold (predict positive at score >= it) of the best F1 on the precision-recall curve;
    0.5 (the package's decision threshold) for a label without positives."""
    target = np.asarray(target).astype(bool)
    if not target.any():
        return 0.5
    precision, recall, thresholds = precision_recall_curve(target, score)
    precision, recall = precision[:-1], recall[:-1]  # the last point (recall 0) has no threshold
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(denom), where=denom > 0)
    return float(thresholds[int(np.argmax(f1))])


def best_f1_thresholds(y_true: Any, y_score: Any) -> np.ndarray:
    """Per label, the threshold that maximises F1 on these multilabel data: (L,) floats, a label predicted
    present at score >= its threshold; 0.5 for a label without positives. Choose them on a validation split
    and pass them to `classification_metrics` / `metrics_with_ci` (`val_thresholds`) for the test split.

    y_true: (N, L) 0/1; y_score: (N, L) probabilities."""
    y, s, _ = _validate("multilabel", y_true, y_score, None)
    with _quiet():
        return np.array([_best_f1_threshold(y[:, k], s[:, k]) for k in range(y.shape[1])], dtype=np.float64)


def _check_thresholds(thresholds: Any, n_labels: int) -> np.ndarray:
    arr = np.asarray(thresholds, dtype=np.float64).reshape(-1)
    if arr.shape != (n_labels,) or not np.isfinite(arr).all():
        raise ValueError(f"val_thresholds must be {n_labels} finite values (one per label), got {thresholds!r}")
    return arr


def _check_names(names: Sequence[str] | None, count: int, what: str, default: str) -> list[str]:
    if names is None:
        return [f"{default}_{k}" for k in range(count)]
    names = [str(n) for n in names]
    if len(names) != count:
        raise ValueError(f"{len(names)} {what} name(s) given but the scores have {count} {what} column(s): {names}")
    return names


def _check_finite(arr: np.ndarray, name: str) -> None:
    bad = ~np.isfinite(arr)
    if bad.any():
        raise ValueError(f"{name} contains {int(bad.sum())} NaN/inf value(s) (first at index "
                         f"{tuple(int(i) for i in np.argwhere(bad)[0])})")


def _check_probabilities(score: np.ndarray, name: str, hint: str) -> None:
    lo, hi = float(score.min()), float(score.max())
    if lo < -_PROB_TOL or hi > 1 + _PROB_TOL:
        raise ValueError(f"{name} must be probabilities in [0, 1], got values in [{lo:.4g}, {hi:.4g}]; "
                         f"apply {hint} to logits first")


def _check_binary_values(arr: np.ndarray, name: str) -> None:
    bad = ~np.isin(arr, (0, 1))
    if bad.any():
        values = np.unique(arr[bad])[:5]
        raise ValueError(f"{name} must hold only 0/1 values, found {values.tolist()}")


def _validate(
    task: str, y_true: Any, y_score: Any, class_names: Sequence[str] | None
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Check and normalise inputs -> (y (N,) int64 or (N, L) int64, scores (N, C) float64, names).

    Binary scores always come back as (N, 2) [p0, p1].
    """
    if task not in TASKS:
        raise ValueError(f"task {task!r} is not one of {TASKS}")
    y = to_numpy(y_true)
    s = to_numpy(y_score).astype(np.float64)
    if y.shape[:1] != s.shape[:1]:
        raise ValueError(f"y_true has {y.shape[0] if y.ndim else 0} rows (shape {y.shape}) but y_score has "
                         f"{s.shape[0] if s.ndim else 0} (shape {s.shape})")
    if y.shape[0] == 0:
        raise ValueError("no samples: y_true and y_score are empty")
    _check_finite(s, "y_score")
    if task == "multilabel":
        if y.ndim != 2 or s.shape != y.shape:
            raise ValueError(f"multilabel needs y_true and y_score of the same shape (N, L), got y_true "
                             f"{y.shape} and y_score {s.shape}")
        if np.isnan(y.astype(np.float64)).any():
            raise ValueError("multilabel y_true contains NaN; partially annotated targets go to concept_metrics")
        _check_binary_values(y, "multilabel y_true")
        _check_probabilities(s, "multilabel y_score", "a sigmoid")
        return y.astype(np.int64), s, _check_names(class_names, s.shape[1], "label", "label")

    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise ValueError(f"{task} y_true must be (N,) class indices, got shape {y.shape}")
    yf = y.astype(np.float64)
    if np.isnan(yf).any() or (yf != np.round(yf)).any():
        raise ValueError(f"{task} y_true must hold integer class indices, found NaN or fractional values")
    y = y.astype(np.int64)
    if task == "binary":
        if s.ndim == 2 and s.shape[1] == 1:
            s = s[:, 0]
        if s.ndim == 1:
            _check_probabilities(s, "binary y_score", "a sigmoid")
            s = np.stack([1.0 - s, s], axis=1)
        elif s.ndim != 2 or s.shape[1] != 2:
            raise ValueError(f"binary y_score must be (N,) probabilities of class 1 or (N, 2), got {s.shape}")
    elif s.ndim != 2 or s.shape[1] < 2:
        raise ValueError(f"{task} y_score must be (N, C) class probabilities with C >= 2, got shape {s.shape}")
    _check_probabilities(s, f"{task} y_score", "a softmax")
    row_sums = s.sum(axis=1)
    if np.abs(row_sums - 1).max() > _ROW_SUM_TOL:
        i = int(np.abs(row_sums - 1).argmax())
        raise ValueError(f"{task} y_score rows must sum to 1 (softmax probabilities); row {i} sums to "
                         f"{row_sums[i]:.4g}")
    n_classes = s.shape[1]
    if y.min() < 0 or y.max() >= n_classes:
        raise ValueError(f"{task} y_true has labels out of range [0, {n_classes - 1}] for {n_classes} classes: "
                         f"min {int(y.min())}, max {int(y.max())}")
    return y, s, _check_names(class_names, n_classes, "class", "class")


# --------------------------------------------------------------------------- point metrics


def classification_metrics(
    task: str, y_true: Any, y_score: Any, class_names: Sequence[str] | None = None, val_thresholds: Any = None
) -> dict[str, float]:
    """Metrics of a classifier for a DatasetCard task.

    y_true: (N,) int class indices (binary, multiclass, ordinal) or (N, L) 0/1 (multilabel).
    y_score: (N, C) class probabilities; binary also (N,) probability of class 1 or (N, 2);
    multilabel (N, L) per-label probabilities.

    Keys: accuracy, balanced_accuracy, macro_f1 and
    - binary: auroc;
    - multiclass, ordinal: auroc (one-vs-rest macro over classes present) and auroc/<class>;
    - ordinal also: mae (argmax grade), qwk (quadratic kappa), spearman (true grade vs expected grade);
    - multilabel: accuracy and balanced_accuracy are means over labels at 0.5, auroc/<label>,
      auroc_mean; with `val_thresholds` (L,) (per-label thresholds chosen on a validation split,
      `best_f1_thresholds`) also f1_val_threshold_mean (the mean over labels of the F1 at those
      thresholds) and, beside it, f1_test_tuned_mean (the mean over labels of the best F1 over the
      thresholds of the evaluated data themselves: what CIPL's released code reports as mean F1; an
      optimistic number, since the threshold is chosen on the data it is scored on).
    Undefined values (an AUROC with one class) are NaN.
    """
    y, s, names = _validate(task, y_true, y_score, class_names)
    if val_thresholds is not None and task != "multilabel":
        raise ValueError(f"val_thresholds apply to multilabel tasks only, not {task!r}")
    with _quiet():
        if task == "multilabel":
            out = _multilabel_metrics(y, s, names)
            if val_thresholds is not None:
                thr = _check_thresholds(val_thresholds, y.shape[1])
                per = f1_score(y, (s >= thr).astype(np.int64), average=None, zero_division=np.nan)
                out["f1_val_threshold_mean"] = _nanmean(per)
                out["f1_test_tuned_mean"] = _nanmean([_best_f1(y[:, k], s[:, k]) for k in range(y.shape[1])])
            return out
        return _single_label_metrics(task, y, s, names)


def _single_label_metrics(task: str, y: np.ndarray, s: np.ndarray, names: list[str]) -> dict[str, float]:
    pred = s.argmax(axis=1)
    out = {
        "accuracy": float(accuracy_score(y, pred)),
        "balanced_accuracy": float(balanced_accuracy_score(y, pred)),
        "macro_f1": float(f1_score(y, pred, average="macro", zero_division=np.nan)),
    }
    if task == "binary":
        out["auroc"] = _auroc(y == 1, s[:, 1])
        return out
    per_class = [_auroc(y == k, s[:, k]) for k in range(s.shape[1])]
    out["auroc"] = _nanmean(per_class)
    out.update({f"auroc/{name}": value for name, value in zip(names, per_class, strict=True)})
    if task == "ordinal":
        grades = np.arange(s.shape[1])
        out["mae"] = float(mean_absolute_error(y, pred))
        out["qwk"] = float(cohen_kappa_score(y, pred, labels=grades, weights="quadratic"))
        expected = (s / s.sum(axis=1, keepdims=True)) @ grades
        out["spearman"] = float(spearmanr(y, expected).statistic)
    return out


def _multilabel_metrics(y: np.ndarray, s: np.ndarray, names: list[str]) -> dict[str, float]:
    pred = (s > 0.5).astype(np.int64)
    labels = range(y.shape[1])
    out = {
        "accuracy": float(np.mean([accuracy_score(y[:, k], pred[:, k]) for k in labels])),
        "balanced_accuracy": float(np.mean([balanced_accuracy_score(y[:, k], pred[:, k]) for k in labels])),
        "macro_f1": float(f1_score(y, pred, average="macro", zero_division=np.nan)),
    }
    per_label = [_auroc(y[:, k], s[:, k]) for k in labels]
    out.update({f"auroc/{name}": value for name, value in zip(names, per_label, strict=True)})
    out["auroc_mean"] = _nanmean(per_label)
    return out


def concept_metrics(
    c_true: Any, c_score: Any, concept_names: Sequence[str] | None = None, threshold: float = 0.5
) -> dict[str, float]:
    """Concept prediction metrics over the annotated entries only.

    c_true: (N, K) 0/1 with NaN where a concept is not annotated; c_score: (N, K) probabilities.
    A concept is predicted present when its score is > threshold.

    As published by CRL (Gao et al., MICCAI 2025; `compute_concept_metric` in the official obiyoag/crl
    metrics.py), averaged per concept over the concepts with at least one annotated positive (the others are
    skipped): concept_macro_f1 (per concept, the mean of the positive-class and negative-class F1, i.e.
    scikit-learn's average="macro"; a class absent from both truth and prediction is left out, one absent from the
    truth only scores 0) and concept_accuracy (the mean of the per-concept accuracies). concept_with_positives
    is how many concepts these means cover.

    Ours, named for what they are: concept_positive_f1_mean (the positive-class F1 per concept, NaN where the
    concept has no annotated positive and none predicted, averaged over the others) and concept_accuracy_pooled
    (one accuracy over every annotated entry of every concept, concepts without positives included).

    Also concept_auroc_mean (over concepts with both values annotated), concept_annotated_fraction, and per
    concept concept_accuracy/<name>, concept_macro_f1/<name>, concept_positive_f1/<name>, concept_auroc/<name>
    (NaN when undefined; the per-concept values are given for every annotated concept, also those the published
    means skip).
    """
    t = to_numpy(c_true).astype(np.float64)
    s = to_numpy(c_score).astype(np.float64)
    if t.ndim == 1:
        t = t[:, None]
    if s.ndim == 1:
        s = s[:, None]
    if t.ndim != 2 or t.shape != s.shape:
        raise ValueError(f"c_true and c_score must have the same shape (N, K), got {t.shape} and {s.shape}")
    if t.shape[0] == 0:
        raise ValueError("no samples: c_true and c_score are empty")
    _check_finite(s, "c_score")
    _check_probabilities(s, "c_score", "a sigmoid")
    annotated = ~np.isnan(t)
    _check_binary_values(t[annotated], "c_true (annotated entries)")
    names = _check_names(concept_names, t.shape[1], "concept", "concept")
    pred = s > threshold
    per_acc, per_macro, per_pos, per_auc = [], [], [], []
    has_positive = np.zeros(t.shape[1], dtype=bool)
    with _quiet():
        for k in range(t.shape[1]):
            m = annotated[:, k]
            if not m.any():
                for values in (per_acc, per_macro, per_pos, per_auc):
                    values.append(math.nan)
                continue
            tk, pk = t[m, k].astype(np.int64), pred[m, k].astype(np.int64)
            has_positive[k] = bool(tk.any())
            per_acc.append(float(accuracy_score(tk, pk)))
            per_macro.append(float(f1_score(tk, pk, average="macro", zero_division=0.0)))
            per_pos.append(float(f1_score(tk, pk, zero_division=np.nan)))
            per_auc.append(_auroc(tk, s[m, k]))
        published = np.flatnonzero(has_positive)
        out = {
            "concept_macro_f1": _nanmean([per_macro[k] for k in published]),
            "concept_accuracy": _nanmean([per_acc[k] for k in published]),
            "concept_with_positives": float(len(published)),
            "concept_positive_f1_mean": _nanmean(per_pos),
            "concept_accuracy_pooled": (float(accuracy_score(t[annotated].astype(np.int64), pred[annotated]))
                                        if annotated.any() else math.nan),
            "concept_auroc_mean": _nanmean(per_auc),
            "concept_annotated_fraction": float(annotated.mean()),
        }
    for prefix, values in (("concept_accuracy", per_acc), ("concept_macro_f1", per_macro),
                           ("concept_positive_f1", per_pos), ("concept_auroc", per_auc)):
        out.update({f"{prefix}/{name}": value for name, value in zip(names, values, strict=True)})
    return out


# --------------------------------------------------------------------------- bootstrap


def _index_chunks(n: int, n_boot: int, seed: int) -> Iterator[np.ndarray]:
    """Resample indices (rows, n) in chunks, drawn from one seeded Generator (deterministic in n, n_boot, seed)."""
    rng = np.random.default_rng(seed)
    rows = max(1, _CHUNK_ELEMENTS // n)
    for start in range(0, n_boot, rows):
        yield rng.integers(0, n, size=(min(rows, n_boot - start), n))


def group_ids(groups: Any, n: int) -> np.ndarray:
    """Group labels (N,) (patient ids, any hashable values) -> int ids (N,) in [0, G); refuses a length other
    than `n` and missing labels (None, NaN, empty), naming the first."""
    values = np.asarray(groups, dtype=object)
    if values.ndim != 1 or len(values) != n:
        raise ValueError(f"groups must be one label per sample: {n} samples, got shape {values.shape}")
    for i, g in enumerate(values):
        if g is None or (isinstance(g, float) and math.isnan(g)) or (isinstance(g, str) and not g.strip()):
            raise ValueError(f"groups[{i}] is missing ({g!r}); every sample needs its group (e.g. patient id)")
    return np.unique(values.astype(str), return_inverse=True)[1].reshape(-1)


def _group_count_chunks(ids: np.ndarray, n_boot: int, seed: int) -> Iterator[np.ndarray]:
    """Resampling counts (rows, N) of a grouped bootstrap, in chunks: each resample draws G groups with
    replacement (G = the number of groups in `ids` (N,)) and every sample counts as often as its group was drawn."""
    rng = np.random.default_rng(seed)
    n_groups = int(ids.max()) + 1
    rows = max(1, _CHUNK_ELEMENTS // max(n_groups, len(ids)))
    for start in range(0, n_boot, rows):
        b = min(rows, n_boot - start)
        draws = rng.integers(0, n_groups, size=(b, n_groups))
        counts = np.bincount((draws + n_groups * np.arange(b)[:, None]).ravel(),
                             minlength=b * n_groups).reshape(b, n_groups)
        yield counts[:, ids]


def _percentile_interval(values: Sequence[float] | np.ndarray, alpha: float) -> tuple[float, float]:
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return math.nan, math.nan
    low, high = np.percentile(values, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return float(low), float(high)


def _check_bootstrap_args(n_boot: int, alpha: float) -> None:
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")


def bootstrap_ci(
    metric_fn: Callable[..., float],
    *arrays: Any,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
    return_skipped: bool = False,
    groups: Any = None,
) -> tuple[float, float, float] | tuple[float, float, float, int]:
    """Percentile bootstrap: (point, low, high) of `metric_fn(*arrays)` at level 1 - alpha.

    arrays: aligned along their first axis (N, ...); rows are resampled with replacement by a
    numpy Generator seeded with `seed`. `groups` (N,) (e.g. patient ids): resample the groups instead, each
    drawn group bringing all its rows (a cluster bootstrap: rows of one patient are not independent, and
    resampling them one by one makes the interval too narrow). Resamples whose metric is NaN/inf or raises
    ValueError (undefined, for example one class only) are skipped and counted; `return_skipped=True` adds
    that count as a fourth value. With no valid resample the interval is (NaN, NaN).
    """
    _check_bootstrap_args(n_boot, alpha)
    if not arrays:
        raise ValueError("bootstrap_ci needs at least one array to resample")
    arrays = tuple(to_numpy(a) for a in arrays)
    lengths = {a.shape[0] if a.ndim else 0 for a in arrays}
    if len(lengths) != 1:
        raise ValueError(f"bootstrap_ci: arrays differ in length along axis 0: {[a.shape for a in arrays]}")
    n = lengths.pop()
    if n == 0:
        raise ValueError("bootstrap_ci: the arrays are empty")
    point = float(metric_fn(*arrays))
    values: list[float] = []
    skipped, last_error = 0, None
    with _quiet():
        for chunk in _resample_indices(n, n_boot, seed, groups):
            for idx in chunk:
                try:
                    value = float(metric_fn(*(a[idx] for a in arrays)))
                except (ValueError, ZeroDivisionError, FloatingPointError) as exc:
                    skipped, last_error = skipped + 1, exc
                    continue
                if math.isfinite(value):
                    values.append(value)
                else:
                    skipped += 1
    if skipped:
        log.log(logging.WARNING if skipped > n_boot // 10 else logging.DEBUG,
                "bootstrap: %d of %d resamples undefined and skipped%s", skipped, n_boot,
                f" (last error: {last_error})" if last_error else "")
    low, high = _percentile_interval(values, alpha)
    return (point, low, high, skipped) if return_skipped else (point, low, high)


def _resample_indices(n: int, n_boot: int, seed: int, groups: Any = None) -> Iterator[Sequence[np.ndarray]]:
    """Chunks of resample index arrays: rows resampled (`_index_chunks`), or with `groups` whole groups
    (`_group_count_chunks`; a resample's length is then the number of rows its groups hold)."""
    if groups is None:
        yield from _index_chunks(n, n_boot, seed)
        return
    rows = np.arange(n)
    for counts in _group_count_chunks(group_ids(groups, n), n_boot, seed):
        yield [np.repeat(rows, c) for c in counts]


def _group_sum(weights: np.ndarray, groups: np.ndarray, n_groups: int) -> np.ndarray:
    """Sum the columns of weights (B, N) by group id (N,) in [0, n_groups) -> (B, n_groups)."""
    order = np.argsort(groups, kind="stable")
    sorted_groups = groups[order]
    starts = np.flatnonzero(np.r_[True, sorted_groups[1:] != sorted_groups[:-1]])
    out = np.zeros((weights.shape[0], n_groups))
    out[:, sorted_groups[starts]] = np.add.reduceat(weights[:, order], starts, axis=1)
    return out


def _weighted_auroc(target: np.ndarray, score: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """AUROC (Mann-Whitney, ties count 1/2) of each row of resampling counts (B, N) -> (B,); NaN if undefined."""
    order = np.argsort(score, kind="stable")
    sorted_score = score[order]
    starts = np.flatnonzero(np.r_[True, sorted_score[1:] != sorted_score[:-1]])
    w = weights[:, order]
    pos_mask = target[order].astype(bool)
    pos = np.add.reduceat(np.where(pos_mask, w, 0.0), starts, axis=1)
    neg = np.add.reduceat(np.where(pos_mask, 0.0, w), starts, axis=1)
    neg_below = np.cumsum(neg, axis=1) - neg
    n_pos, n_neg = pos.sum(axis=1), neg.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        auc = (pos * (neg_below + 0.5 * neg)).sum(axis=1) / (n_pos * n_neg)
    auc[(n_pos == 0) | (n_neg == 0)] = np.nan
    return auc


def _rows_nanmean(values: np.ndarray) -> np.ndarray:
    """Mean over axis 1 skipping NaN; NaN for all-NaN rows, without warnings."""
    valid = ~np.isnan(values)
    count = valid.sum(axis=1)
    total = np.where(valid, values, 0.0).sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def _f1_from_counts(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> np.ndarray:
    denom = 2 * tp + fp + fn
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(denom > 0, 2 * tp / np.where(denom > 0, denom, 1), np.nan)


def _vectorised_keys(task: str, names: list[str], val_thresholds: bool = False) -> set[str]:
    keys = {"accuracy", "balanced_accuracy", "macro_f1"}
    if task == "binary":
        return keys | {"auroc"}
    keys |= {f"auroc/{name}" for name in names}
    if task == "multilabel":
        return keys | {"auroc_mean"} | ({"f1_val_threshold_mean"} if val_thresholds else set())
    keys.add("auroc")
    return keys | {"mae", "qwk"} if task == "ordinal" else keys


def _weighted_metrics(
    task: str, y: np.ndarray, s: np.ndarray, names: list[str], counts: np.ndarray, keys: set[str],
    val_thresholds: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """The `keys` (from `_vectorised_keys`) of each resample given as counts (B, N) -> {key: (B,)}."""
    w = counts.astype(np.float64)
    total = w.sum(axis=1)
    out: dict[str, np.ndarray] = {}
    want_auroc = any(k.startswith("auroc") for k in keys)
    if task == "multilabel":
        pred = s > 0.5
        yb = y.astype(bool)
        n_labels = y.shape[1]
        cms = np.stack([_group_sum(w, yb[:, k] * 2 + pred[:, k], 4) for k in range(n_labels)], axis=1)
        tn, fp, fn, tp = (cms[..., i] for i in range(4))  # (B, L) each
        with np.errstate(divide="ignore", invalid="ignore"):
            out["accuracy"] = ((tp + tn) / total[:, None]).mean(axis=1)
            recall_pos = np.where(tp + fn > 0, tp / (tp + fn), np.nan)
            recall_neg = np.where(tn + fp > 0, tn / (tn + fp), np.nan)
        bal = np.nanmean(np.stack([recall_neg, recall_pos]), axis=0)  # a label always has one class
        out["balanced_accuracy"] = bal.mean(axis=1)
        out["macro_f1"] = _rows_nanmean(_f1_from_counts(tp, fp, fn))
        if "f1_val_threshold_mean" in keys:
            at = s >= val_thresholds
            cms = np.stack([_group_sum(w, yb[:, k] * 2 + at[:, k], 4) for k in range(n_labels)], axis=1)
            out["f1_val_threshold_mean"] = _rows_nanmean(_f1_from_counts(cms[..., 3], cms[..., 1], cms[..., 2]))
        if want_auroc:
            per = np.stack([_weighted_auroc(y[:, k], s[:, k], w) for k in range(n_labels)], axis=1)
            out["auroc_mean"] = _rows_nanmean(per)
            out.update({f"auroc/{name}": per[:, k] for k, name in enumerate(names)})
        return {k: v for k, v in out.items() if k in keys}

    n_classes = s.shape[1]
    pred = s.argmax(axis=1)
    cm = _group_sum(w, y * n_classes + pred, n_classes * n_classes).reshape(-1, n_classes, n_classes)
    tp = np.diagonal(cm, axis1=1, axis2=2)
    true_count, pred_count = cm.sum(axis=2), cm.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        out["accuracy"] = tp.sum(axis=1) / total
        out["balanced_accuracy"] = _rows_nanmean(np.where(true_count > 0, tp / true_count, np.nan))
    out["macro_f1"] = _rows_nanmean(_f1_from_counts(tp, pred_count - tp, true_count - tp))
    if want_auroc:
        if task == "binary":
            out["auroc"] = _weighted_auroc(y == 1, s[:, 1], w)
        else:
            per = np.stack([_weighted_auroc(y == k, s[:, k], w) for k in range(n_classes)], axis=1)
            out["auroc"] = _rows_nanmean(per)
            out.update({f"auroc/{name}": per[:, k] for k, name in enumerate(names)})
    if task == "ordinal" and keys & {"mae", "qwk"}:
        grades = np.arange(n_classes)
        distance = np.abs(grades[:, None] - grades[None, :])
        out["mae"] = (cm * distance).sum(axis=(1, 2)) / total
        # cohen_kappa_score(weights="quadratic"): 1 - sum(W * O) / sum(W * E), E = outer(marginals) / n
        expected = true_count[:, :, None] * pred_count[:, None, :] / total[:, None, None]
        observed = (cm * distance**2).sum(axis=(1, 2))
        chance = (expected * distance**2).sum(axis=(1, 2))
        with np.errstate(divide="ignore", invalid="ignore"):
            out["qwk"] = np.where(chance != 0, 1 - observed / np.where(chance != 0, chance, 1), np.nan)
    return {k: v for k, v in out.items() if k in keys}


def metrics_with_ci(
    task: str,
    y_true: Any,
    y_score: Any,
    class_names: Sequence[str] | None = None,
    keys: Sequence[str] | None = None,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
    groups: Any = None,
    val_thresholds: Any = None,
) -> dict[str, Any]:
    """`classification_metrics` plus percentile bootstrap intervals of the headline `keys`.

    Returns every point metric `{key: value}`, with `key + "_ci": [low, high]` after each key of
    `keys` (default `HEADLINE_KEYS[task]`), and `"bootstrap": {"n_boot", "alpha", "seed",
    "n_samples", "skipped": {key: count}}` (resamples where a metric was undefined).
    `groups` (N,) (e.g. patient ids): resample groups, not samples (see `bootstrap_ci`); "bootstrap" then
    also says `"resampled": "groups"` and `"n_groups"`. `val_thresholds` (multilabel, (L,), chosen on a
    validation split by `best_f1_thresholds`): adds f1_val_threshold_mean (with an interval by default) and
    f1_test_tuned_mean (point only: re-tuning the thresholds on every resample is not done), and the
    thresholds as `"val_thresholds": {label: value}`.
    """
    _check_bootstrap_args(n_boot, alpha)
    y, s, names = _validate(task, y_true, y_score, class_names)
    point = classification_metrics(task, y, s, names, val_thresholds)
    thresholds = None if val_thresholds is None else _check_thresholds(val_thresholds, y.shape[1])
    default_keys = keys is None
    keys = list(HEADLINE_KEYS[task] if keys is None else keys)
    if default_keys and thresholds is not None:
        keys.append("f1_val_threshold_mean")
    unknown = [k for k in keys if k not in point]
    if unknown:
        raise ValueError(f"metrics_with_ci: unknown key(s) {unknown} for task {task!r}; available: {sorted(point)}")
    fast = set(keys) & _vectorised_keys(task, names, thresholds is not None)
    slow = [k for k in keys if k not in fast]
    samples: dict[str, list[np.ndarray]] = {k: [] for k in keys}
    n = y.shape[0]
    ids = None if groups is None else group_ids(groups, n)
    chunks = _index_chunks(n, n_boot, seed) if ids is None else _group_count_chunks(ids, n_boot, seed)
    for chunk in chunks:
        if ids is None:
            counts = np.bincount((chunk + n * np.arange(len(chunk))[:, None]).ravel(),
                                 minlength=len(chunk) * n).reshape(len(chunk), n) if fast else None
            indices: Sequence[np.ndarray] = chunk
        else:
            counts, indices = chunk, [np.repeat(np.arange(n), c) for c in chunk] if slow else []
        if fast:
            for k, v in _weighted_metrics(task, y, s, names, counts, fast, thresholds).items():
                samples[k].append(v)
        if slow:
            rows = [classification_metrics(task, y[idx], s[idx], names, thresholds) for idx in indices]
            for k in slow:
                samples[k].append(np.array([r[k] for r in rows], dtype=np.float64))
    out: dict[str, Any] = {}
    skipped: dict[str, int] = {}
    for k, v in point.items():
        out[k] = v
        if k in samples:
            values = np.concatenate(samples[k])
            finite = np.isfinite(values)
            skipped[k] = int((~finite).sum())
            out[f"{k}_ci"] = list(_percentile_interval(values[finite], alpha))
    if any(count > n_boot // 10 for count in skipped.values()):
        log.warning("bootstrap: undefined resamples skipped per metric: %s of %d", skipped, n_boot)
    out["bootstrap"] = {"n_boot": n_boot, "alpha": alpha, "seed": seed, "n_samples": int(n), "skipped": skipped}
    if ids is not None:
        out["bootstrap"].update(resampled="groups", n_groups=int(ids.max()) + 1)
    if thresholds is not None:
        out["val_thresholds"] = {name: float(v) for name, v in zip(names, thresholds, strict=True)}
    return out

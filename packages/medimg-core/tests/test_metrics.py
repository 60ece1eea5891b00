"""Metrics against hand-computed values, degenerate inputs, and the bootstrap."""

from __future__ import annotations

import math

import numpy as np
import pytest

from medimg_core.metrics import (
    HEADLINE_KEYS,
    _index_chunks,
    _vectorised_keys,
    _weighted_metrics,
    best_f1_thresholds,
    bootstrap_ci,
    classification_metrics,
    concept_metrics,
    metrics_with_ci,
)

# Hand-worked binary example: pred = [0, 1, 1, 0, 1, 0]; 4 of 6 right; per class tp 2, fp 1, fn 1 -> F1 2/3;
# recalls 2/3 and 2/3; AUROC: positives .8, .4, .9 beat 3 + 2 + 3 of the 9 negative pairs -> 8/9.
Y_BIN = np.array([0, 0, 1, 1, 1, 0])
P_BIN = np.array([0.1, 0.6, 0.8, 0.4, 0.9, 0.2])


def test_binary_hand_computed():
    m = classification_metrics("binary", Y_BIN, P_BIN)
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["balanced_accuracy"] == pytest.approx(2 / 3)
    assert m["macro_f1"] == pytest.approx(2 / 3)
    assert m["auroc"] == pytest.approx(8 / 9)


def test_binary_score_layouts_agree():
    a = classification_metrics("binary", Y_BIN, P_BIN)
    b = classification_metrics("binary", Y_BIN, P_BIN[:, None])
    c = classification_metrics("binary", Y_BIN, np.stack([1 - P_BIN, P_BIN], axis=1), ["neg", "pos"])
    assert a == b == c


def test_perfect_and_reversed_auroc():
    y = np.array([0, 0, 1, 1])
    assert classification_metrics("binary", y, np.array([0.1, 0.2, 0.8, 0.9]))["auroc"] == 1.0
    assert classification_metrics("binary", y, np.array([0.9, 0.8, 0.2, 0.1]))["auroc"] == 0.0


def test_single_class_auroc_is_nan_not_an_error():
    m = classification_metrics("binary", np.zeros(4, dtype=int), np.array([0.1, 0.2, 0.6, 0.3]))
    assert math.isnan(m["auroc"])
    assert m["accuracy"] == pytest.approx(0.75)


def test_multiclass_perfect_and_per_class_keys():
    y = np.array([0, 1, 2, 2])
    s = np.eye(3)[y] * 0.8 + 0.2 / 3
    m = classification_metrics("multiclass", y, s, ["a", "b", "c"])
    assert m["accuracy"] == 1.0 and m["macro_f1"] == 1.0 and m["auroc"] == 1.0
    assert m["auroc/a"] == m["auroc/b"] == m["auroc/c"] == 1.0


def test_multiclass_absent_class_auroc_nan_and_skipped_in_mean():
    y = np.array([0, 0, 1, 1])  # class 2 never occurs
    s = np.array([[0.7, 0.2, 0.1], [0.6, 0.3, 0.1], [0.2, 0.7, 0.1], [0.1, 0.8, 0.1]])
    m = classification_metrics("multiclass", y, s)
    assert math.isnan(m["auroc/class_2"])
    assert m["auroc"] == pytest.approx(1.0)


def test_ordinal_perfect_agreement_and_monotone_spearman():
    y = np.array([0, 1, 2, 3, 4])
    m = classification_metrics("ordinal", y, np.eye(5)[y] * 0.9 + 0.02)
    assert m["qwk"] == pytest.approx(1.0) and m["mae"] == 0.0 and m["spearman"] == pytest.approx(1.0)
    # argmax is always grade 0 or 1, but the expected grade rises with the true grade: Spearman 1
    s = np.array([[0.9, 0.1, 0, 0, 0], [0.8, 0.1, 0.1, 0, 0], [0.6, 0.2, 0.1, 0.1, 0],
                  [0.3, 0.4, 0.1, 0.1, 0.1], [0.2, 0.3, 0.1, 0.2, 0.2]])
    assert classification_metrics("ordinal", y, s)["spearman"] == pytest.approx(1.0)


def test_ordinal_mae_hand_computed():
    y = np.array([0, 1, 2])
    s = np.array([[0.1, 0.8, 0.1], [0.1, 0.8, 0.1], [0.8, 0.1, 0.1]])  # pred [1, 1, 0] -> |errors| 1, 0, 2
    assert classification_metrics("ordinal", y, s)["mae"] == pytest.approx(1.0)


def test_multilabel_hand_computed():
    y = np.array([[1, 0, 1], [0, 0, 1], [1, 0, 0], [0, 0, 1]])
    s = np.array([[0.9, 0.2, 0.6], [0.3, 0.1, 0.4], [0.8, 0.7, 0.3], [0.2, 0.4, 0.9]])
    m = classification_metrics("multilabel", y, s, ["x", "y", "z"])
    # label x perfect (4/4), y 3/4 (one false positive), z 3/4 (0.4 missed) -> mean 10/12
    assert m["accuracy"] == pytest.approx(10 / 12)
    assert m["auroc/x"] == 1.0
    assert math.isnan(m["auroc/y"])  # all zeros
    assert m["auroc/z"] == pytest.approx(1.0)  # positives .6 .4 .9 vs negative .3
    assert m["auroc_mean"] == pytest.approx(1.0)
    assert "f1_test_tuned_mean" not in m and "f1_best_mean" not in m  # only beside a validation-threshold F1
    # F1: x 1; y tp 0 fp 1 -> 0; z tp 2 fn 1 -> 0.8
    assert m["macro_f1"] == pytest.approx((1 + 0 + 0.8) / 3)


def test_concept_metrics_ignore_unannotated_entries():
    nan = np.nan
    c_true = np.array([[1, nan], [0, 1], [nan, 0], [1, 1]])
    c_score = np.array([[0.9, 0.99], [0.2, 0.7], [0.9, 0.1], [0.4, 0.8]])  # scores under NaN would be wrong
    m = concept_metrics(c_true, c_score, ["a", "b"])
    assert m["concept_accuracy_pooled"] == pytest.approx(5 / 6)  # only (3, a) is wrong
    assert m["concept_accuracy/a"] == pytest.approx(2 / 3) and m["concept_accuracy/b"] == 1.0
    assert m["concept_accuracy"] == pytest.approx((2 / 3 + 1) / 2)  # both concepts have a positive
    assert m["concept_positive_f1/a"] == pytest.approx(2 / 3)
    assert m["concept_positive_f1_mean"] == pytest.approx(5 / 6)
    # a: truth (1, 0, 1), predicted (1, 0, 0): positive F1 2/3, negative F1 2/3; b: all right
    assert m["concept_macro_f1/a"] == pytest.approx(2 / 3) and m["concept_macro_f1/b"] == 1.0
    assert m["concept_macro_f1"] == pytest.approx(5 / 6)
    assert m["concept_auroc/a"] == 1.0 and m["concept_auroc_mean"] == 1.0
    assert m["concept_annotated_fraction"] == pytest.approx(6 / 8)


def test_concept_metrics_published_and_ours_on_a_hand_computed_case():
    """The published definitions (per-concept macro F1 and accuracy, averaged over the concepts with a positive)
    against ours (positive-class F1 mean, pooled accuracy) where they differ; c has no positive."""
    c_true = np.array([[1, 1, 0], [0, 1, 0], [0, 0, 0], [0, 0, 0]], dtype=float)
    c_pred = np.array([[1, 1, 0], [1, 1, 0], [0, 0, 0], [0, 0, 1]], dtype=float)
    m = concept_metrics(c_true, 0.1 + 0.8 * c_pred, ["a", "b", "c"])
    # a: tp 1, fp 1 -> positive F1 2/3; negatives: 2 right, 1 predicted positive -> negative F1 4/5
    assert m["concept_macro_f1/a"] == pytest.approx((2 / 3 + 4 / 5) / 2)
    assert m["concept_positive_f1/a"] == pytest.approx(2 / 3)
    # c: no positive, one false alarm -> positive F1 0, negative F1 6/7; reported, but skipped by the means
    assert m["concept_macro_f1/c"] == pytest.approx(3 / 7) and m["concept_accuracy/c"] == pytest.approx(3 / 4)
    assert m["concept_with_positives"] == 2
    assert m["concept_macro_f1"] == pytest.approx(((2 / 3 + 4 / 5) / 2 + 1) / 2)  # 0.867
    assert m["concept_accuracy"] == pytest.approx((3 / 4 + 1) / 2)  # 0.875
    assert m["concept_positive_f1_mean"] == pytest.approx((2 / 3 + 1 + 0) / 3)  # 0.556
    assert m["concept_accuracy_pooled"] == pytest.approx(10 / 12)  # 0.833
    # a concept whose annotated entries hold no positive is skipped too, whatever its unannotated entries
    c_true[:, 2] = [np.nan, np.nan, 0, 0]
    m = concept_metrics(c_true, 0.1 + 0.8 * c_pred, ["a", "b", "c"])
    assert m["concept_with_positives"] == 2 and m["concept_accuracy"] == pytest.approx(0.875)
    # no concept with a positive: the published means are undefined (NaN), ours are not
    m = concept_metrics(np.zeros((2, 2)), np.full((2, 2), 0.2))
    assert math.isnan(m["concept_macro_f1"]) and math.isnan(m["concept_accuracy"])
    assert m["concept_accuracy_pooled"] == 1.0 and m["concept_with_positives"] == 0


def test_concept_metrics_unannotated_or_single_valued_concept_is_nan():
    c_true = np.array([[1, np.nan, 0], [0, np.nan, 0]])
    m = concept_metrics(c_true, np.array([[0.8, 0.5, 0.1], [0.3, 0.5, 0.2]]))
    assert math.isnan(m["concept_auroc/concept_1"]) and math.isnan(m["concept_auroc/concept_2"])
    assert m["concept_auroc_mean"] == 1.0


@pytest.mark.parametrize(
    ("task", "y", "s", "match"),
    [
        ("binary", np.array([0, 1, 1]), np.array([0.2, 0.7]), "3 rows"),
        ("binary", np.array([0, 1]), np.array([0.2, np.nan]), "NaN"),
        ("multiclass", np.array([0, 3]), np.full((2, 3), 1 / 3), "out of range"),
        ("multiclass", np.array([0, 1]), np.array([[2.0, -1.0], [0.5, 3.0]]), "logits"),
        ("multiclass", np.array([0, 1]), np.array([[0.9, 0.9], [0.5, 0.5]]), "sum to 1"),
        ("multilabel", np.array([[0, 1]]), np.array([[0.2, 0.3, 0.1]]), "same shape"),
        ("multilabel", np.array([[0, 2]]), np.array([[0.2, 0.3]]), "0/1"),
        ("regression", np.array([0]), np.array([0.5]), "not one of"),
    ],
)
def test_clear_errors(task, y, s, match):
    with pytest.raises(ValueError, match=match):
        classification_metrics(task, y, s)


def test_class_names_count_and_concept_shape_errors():
    with pytest.raises(ValueError, match="name"):
        classification_metrics("multiclass", np.array([0, 1]), np.eye(3)[[0, 1]], ["a", "b"])
    with pytest.raises(ValueError, match="same shape"):
        concept_metrics(np.zeros((3, 2)), np.zeros((3, 3)))
    with pytest.raises(ValueError, match="0/1"):
        concept_metrics(np.array([[2.0]]), np.array([[0.5]]))


def _data(task: str, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    if task == "multilabel":
        y = (rng.random((n, 3)) < [0.5, 0.3, 0.05]).astype(int)
        return y, np.clip(0.6 * y + 0.5 * rng.random((n, 3)), 0, 1)
    c = {"binary": 2, "multiclass": 4, "ordinal": 4}[task]
    y = rng.choice(c, size=n, p=[0.4, 0.6] if c == 2 else [0.4, 0.3, 0.25, 0.05])
    z = rng.normal(size=(n, c))
    z[np.arange(n), y] += 1.0
    z = np.round(z, 1)  # ties in scores
    return y, np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)


@pytest.mark.parametrize("task", ["binary", "multiclass", "ordinal", "multilabel"])
def test_vectorised_bootstrap_matches_sklearn_on_every_resample(task):
    y, s = _data(task, 30)
    point = classification_metrics(task, y, s)
    names = [k.split("/", 1)[1] for k in point if k.startswith("auroc/")] or ["class_0", "class_1"]
    keys = _vectorised_keys(task, names)
    assert keys <= set(point)
    for chunk in _index_chunks(len(y), 25, seed=3):
        counts = np.stack([np.bincount(idx, minlength=len(y)) for idx in chunk])
        fast = _weighted_metrics(task, y, s, names, counts, keys)
        for row, idx in enumerate(chunk):
            ref = classification_metrics(task, y[idx], s[idx])
            for key in keys:
                assert fast[key][row] == pytest.approx(ref[key], abs=1e-9, nan_ok=True), (key, row)


def test_bootstrap_ci_contains_point_and_is_seeded():
    rng = np.random.default_rng(1)
    x = rng.normal(size=200)
    point, low, high = bootstrap_ci(np.mean, x, n_boot=300, seed=5)
    assert point == pytest.approx(x.mean())
    assert low < point < high
    assert bootstrap_ci(np.mean, x, n_boot=300, seed=5) == (point, low, high)
    assert bootstrap_ci(np.mean, x, n_boot=300, seed=6) != (point, low, high)


def test_bootstrap_ci_skips_undefined_resamples():
    y = np.array([0] * 9 + [1])  # most resamples of 10 miss the single positive
    p = np.linspace(0.1, 0.9, 10)

    def auroc(a, b):
        return classification_metrics("binary", a, b)["auroc"]

    point, low, high, skipped = bootstrap_ci(auroc, y, p, n_boot=100, seed=0, return_skipped=True)
    assert point == 1.0 and 0 < skipped < 100 and low == high == 1.0
    with pytest.raises(ValueError, match="length"):
        bootstrap_ci(auroc, y, p[:5])


def test_metrics_with_ci_structure_and_agreement_with_bootstrap_ci():
    y, s = _data("ordinal", 60, seed=2)
    out = metrics_with_ci("ordinal", y, s, keys=("accuracy", "qwk", "spearman"), n_boot=30, seed=1)
    assert out["bootstrap"]["n_boot"] == 30 and set(out["bootstrap"]["skipped"]) == {"accuracy", "qwk", "spearman"}
    for key in ("accuracy", "qwk", "spearman"):
        low, high = out[f"{key}_ci"]
        assert low <= out[key] <= high
        ref = bootstrap_ci(lambda a, b, k=key: classification_metrics("ordinal", a, b)[k], y, s, n_boot=30, seed=1)
        assert (out[key], low, high) == pytest.approx(ref)
    assert "mae" in out and "mae_ci" not in out  # every point metric, intervals for the asked keys
    again = metrics_with_ci("ordinal", y, s, keys=("accuracy", "qwk", "spearman"), n_boot=30, seed=1)
    assert again == out


@pytest.mark.parametrize("task", ["binary", "multiclass", "ordinal", "multilabel"])
def test_metrics_with_ci_default_keys(task):
    y, s = _data(task, 40)
    out = metrics_with_ci(task, y, s, n_boot=20)
    for key in HEADLINE_KEYS[task]:
        assert isinstance(out[key], float) and len(out[f"{key}_ci"]) == 2
    with pytest.raises(ValueError, match="unknown key"):
        metrics_with_ci(task, y, s, keys=("nope",), n_boot=5)


# --------------------------------------------------------------------------- bootstrap by group (patient)


def _clustered(n_patients: int = 30, per_patient: int = 8, seed: int = 0):
    """Images of one patient share their value: the rows are far from independent."""
    rng = np.random.default_rng(seed)
    patient_value = rng.normal(size=n_patients)
    x = np.repeat(patient_value, per_patient) + 0.01 * rng.normal(size=n_patients * per_patient)
    groups = np.repeat([f"p{i:03d}" for i in range(n_patients)], per_patient)
    return x, groups


def test_grouped_bootstrap_is_wider_on_clustered_data():
    x, groups = _clustered()
    point, low, high = bootstrap_ci(np.mean, x, n_boot=400, seed=0)
    g_point, g_low, g_high = bootstrap_ci(np.mean, x, n_boot=400, seed=0, groups=groups)
    assert g_point == point
    # 8 near-copies per patient: the honest interval is about sqrt(8) ~ 2.8 times the per-image one
    assert (g_high - g_low) > 2 * (high - low)
    assert g_low < point < g_high


def test_grouped_bootstrap_with_singleton_groups_is_the_plain_one():
    y, s = _data("multilabel", 50, seed=3)
    plain = metrics_with_ci("multilabel", y, s, n_boot=40, seed=2)
    single = metrics_with_ci("multilabel", y, s, n_boot=40, seed=2, groups=[f"{i:03d}" for i in range(50)])
    assert single.pop("bootstrap")["n_groups"] == 50 and "resampled" not in plain.pop("bootstrap")
    assert single == plain  # each image its own group: the same draws, the same intervals


def test_grouped_metrics_with_ci_agrees_with_grouped_bootstrap_ci():
    y, s = _data("ordinal", 60, seed=2)
    groups = np.arange(60) // 4  # 15 patients of 4 images
    out = metrics_with_ci("ordinal", y, s, keys=("accuracy", "qwk", "spearman"), n_boot=30, seed=1, groups=groups)
    assert out["bootstrap"]["resampled"] == "groups" and out["bootstrap"]["n_groups"] == 15
    for key in ("accuracy", "qwk", "spearman"):  # vectorised (accuracy, qwk) and per-resample (spearman) paths
        ref = bootstrap_ci(lambda a, b, k=key: classification_metrics("ordinal", a, b)[k], y, s, n_boot=30, seed=1,
                           groups=groups)
        assert (out[key], *out[f"{key}_ci"]) == pytest.approx(ref)
    plain = metrics_with_ci("ordinal", y, s, keys=("accuracy",), n_boot=30, seed=1)
    assert plain["accuracy_ci"] != out["accuracy_ci"]


def test_grouped_bootstrap_refuses_bad_groups():
    x = np.arange(6.0)
    with pytest.raises(ValueError, match="one label per sample"):
        bootstrap_ci(np.mean, x, groups=["a", "b"])
    with pytest.raises(ValueError, match=r"groups\[2\] is missing"):
        bootstrap_ci(np.mean, x, groups=["a", "a", None, "b", "b", "c"])


# --------------------------------------------------------------------------- F1 at validation thresholds


def test_f1_at_validation_thresholds_by_hand():
    # validation: x separable between 0.5 and 0.7 -> threshold 0.7 (the lowest positive score); z's best F1 is
    # at 0.4 (tp 3, fp 1: F1 6/7, against 0.8 at 0.6); y has no positive -> 0.5
    y_val = np.array([[1, 0, 1], [0, 0, 1], [1, 0, 0], [0, 0, 1], [0, 0, 0]])
    s_val = np.array([[0.9, 0.2, 0.6], [0.5, 0.1, 0.4], [0.7, 0.7, 0.3], [0.2, 0.4, 0.9], [0.1, 0.1, 0.5]])
    thr = best_f1_thresholds(y_val, s_val)
    assert thr.tolist() == [0.7, 0.5, 0.4]
    # test: x at 0.7: tp 1 (0.8), fn 1 (0.6) -> F1 2/3; y at 0.5: fp 1 (0.6), no positive -> 0;
    # z at 0.4: tp 2 (0.4, 0.9), fp 1 (0.45), fn 0 -> 4/5
    y = np.array([[1, 0, 1], [1, 0, 0], [0, 0, 1], [0, 0, 0]])
    s = np.array([[0.8, 0.6, 0.4], [0.6, 0.1, 0.2], [0.1, 0.3, 0.9], [0.3, 0.2, 0.45]])
    m = classification_metrics("multilabel", y, s, ["x", "y", "z"], val_thresholds=thr)
    assert m["f1_val_threshold_mean"] == pytest.approx((2 / 3 + 0 + 4 / 5) / 3)
    # tuned on the test data themselves: x 1 (at 0.6); z 0.8 (at 0.4: tp 2, fp 1; at 0.45: 0.5; at 0.9: 2/3);
    # y has no positive (skipped)
    assert m["f1_test_tuned_mean"] == pytest.approx((1 + 0.8) / 2)
    with pytest.raises(ValueError, match="3 finite values"):
        classification_metrics("multilabel", y, s, val_thresholds=[0.5, 0.5])
    with pytest.raises(ValueError, match="multilabel tasks only"):
        classification_metrics("binary", Y_BIN, P_BIN, val_thresholds=[0.5])


def test_val_threshold_f1_interval_matches_sklearn_on_every_resample():
    y, s = _data("multilabel", 40, seed=4)
    y_val, s_val = _data("multilabel", 40, seed=5)
    thr = best_f1_thresholds(y_val, s_val)
    names = ["class_0", "class_1", "class_2"]
    keys = _vectorised_keys("multilabel", names, True)
    assert "f1_val_threshold_mean" in keys
    for chunk in _index_chunks(len(y), 20, seed=3):
        counts = np.stack([np.bincount(idx, minlength=len(y)) for idx in chunk])
        fast = _weighted_metrics("multilabel", y, s, names, counts, keys, thr)
        for row, idx in enumerate(chunk):
            ref = classification_metrics("multilabel", y[idx], s[idx], val_thresholds=thr)
            assert fast["f1_val_threshold_mean"][row] == pytest.approx(ref["f1_val_threshold_mean"], nan_ok=True)
    out = metrics_with_ci("multilabel", y, s, names, n_boot=30, val_thresholds=thr)
    low, high = out["f1_val_threshold_mean_ci"]
    assert low <= out["f1_val_threshold_mean"] <= high and "f1_test_tuned_mean_ci" not in out
    assert out["f1_test_tuned_mean"] >= out["f1_val_threshold_mean"]
    assert out["val_thresholds"] == dict(zip(names, thr.tolist(), strict=True))

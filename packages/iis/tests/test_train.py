"""The sweep on cached features: heads trained on train, selected on val, scored on held-out test."""

import numpy as np
import pytest
import torch

from iis import SweepConfig, score_representation
from iis.model import LinearProbe
from iis.train import fit_head

SWEEP = SweepConfig(ratios=(0.0, 0.5, 0.9), lrs=(1e-2, 1e-1), epochs=8, batch_size=64)


def _data(n: int, seed: int, d: int = 12, k: int = 3):
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(0).normal(size=(k, d)) * 2
    y = rng.integers(0, k, n)
    x = centres[y] + rng.normal(size=(n, d))
    return {"features": torch.tensor(x, dtype=torch.float32), "targets": torch.tensor(y)}


def test_score_representation_end_to_end():
    train, val, test = _data(300, 1), _data(100, 2), _data(120, 3)
    concepts = torch.randn(20, 12, generator=torch.Generator().manual_seed(0))
    r = score_representation(train, val, test, concepts=concepts, sweep=SWEEP, n_boot=100, progress=False)
    assert r.ratios == [0.0, 0.5, 0.9] and r.kept == [19, 9, 1] and r.num_concepts == 20
    assert r.correct.shape == (120, 4) and r.n_test == 120
    assert r.probe["test_accuracy"] > 0.8  # the classes are linearly separable
    assert r.arr == pytest.approx([a / r.probe["test_accuracy"] for a in r.test_accuracy])
    assert r.iis_ci[0] <= r.iis <= r.iis_ci[1]
    assert set(r.head_states) == {"s0", "s0.5", "s0.9", "probe"}
    assert all(lr in SWEEP.lrs for lr in r.selected_lr)
    assert r.test_accuracy[2] < r.test_accuracy[0]  # one concept per image loses accuracy
    d = r.to_dict()
    assert len(d["per_ratio"]) == 3 and d["grid_val"]["0.5"].keys() == {"0.01", "0.1"}
    again = score_representation(train, val, test, concepts=concepts, sweep=SWEEP, n_boot=100, progress=False)
    assert again.iis == r.iis and again.selected_lr == r.selected_lr  # seeded


def test_selection_never_looks_at_the_test_labels():
    train, val, test = _data(300, 1), _data(100, 2), _data(120, 3)
    shuffled = {"features": test["features"], "targets": test["targets"][torch.randperm(120)]}
    concepts = torch.randn(10, 12, generator=torch.Generator().manual_seed(1))
    a = score_representation(train, val, test, concepts=concepts, sweep=SWEEP, n_boot=10, progress=False)
    b = score_representation(train, val, shuffled, concepts=concepts, sweep=SWEEP, n_boot=10, progress=False)
    assert a.val_accuracy == b.val_accuracy and a.selected_lr == b.selected_lr and a.best_epoch == b.best_epoch
    assert a.test_accuracy != b.test_accuracy


def test_fit_head_keeps_the_best_validation_epoch():
    train, val = _data(200, 1), _data(80, 2)
    fit = fit_head(lambda: LinearProbe(12, 3), train["features"], train["targets"], val["features"],
                   val["targets"], 0.05, SWEEP)
    assert fit.val_accuracy == max(fit.val_curve) and fit.val_curve[fit.best_epoch - 1] == fit.val_accuracy
    assert len(fit.val_curve) == SWEEP.epochs


def test_multilabel_targets():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 6)).astype(np.float32)
    y = (x[:, :3] > 0).astype(np.float32)
    split = [(x[:120], y[:120]), (x[120:160], y[120:160]), (x[160:], y[160:])]
    r = score_representation(*split, concepts=torch.randn(8, 6), sweep=SWEEP, multilabel=True, n_boot=10,
                             progress=False)
    assert 0.8 < r.probe["test_accuracy"] <= 1.0  # label-wise accuracy


def test_bad_inputs():
    train, val, test = _data(50, 1), _data(20, 2), _data(20, 3)
    with pytest.raises(ValueError, match="another representation"):
        score_representation(train, val, test, concepts=torch.randn(5, 7), sweep=SWEEP, progress=False)
    bad = {"features": torch.full((20, 12), float("nan")), "targets": test["targets"]}
    with pytest.raises(ValueError, match="NaN"):
        score_representation(train, val, bad, concepts=torch.randn(5, 12), sweep=SWEEP, progress=False)
    with pytest.raises(ValueError, match="library or the concept vectors"):
        score_representation(train, val, test, sweep=SWEEP, progress=False)
    with pytest.raises(ValueError, match="twice"):
        SweepConfig(ratios=(0.1, 0.1))
    with pytest.raises(ValueError, match="outside"):
        SweepConfig(ratios=(0.0, 1.0))


def test_bias_only_floor_by_hand():
    from iis.sweep import SATURATION_IIS, bias_only_baseline

    train = torch.tensor([0, 1, 1, 2, 1])  # majority: class 1
    test = torch.tensor([1, 0, 1, 2])
    prediction, correct = bias_only_baseline(train, test, multilabel=False, k=3)
    assert prediction == [1] and correct.tolist() == [1, 0, 1, 0]
    labels = torch.tensor([[1, 0], [1, 1], [1, 0]])  # label 0 mostly on, label 1 mostly off
    prediction, correct = bias_only_baseline(labels, torch.tensor([[1, 0], [0, 0]]), multilabel=True, k=2)
    assert prediction == [1, 0] and correct.tolist() == [1.0, 0.5]
    train_d, val_d, test_d = _data(300, 1), _data(100, 2), _data(120, 3)
    r = score_representation(train_d, val_d, test_d, concepts=torch.randn(20, 12), sweep=SWEEP, n_boot=10,
                             progress=False)
    majority = int(torch.bincount(train_d["targets"]).argmax())
    expected = float((test_d["targets"] == majority).float().mean())
    assert r.bias_only["test_accuracy"] == pytest.approx(expected)
    assert r.bias_only["arr"] == pytest.approx(expected / r.probe["test_accuracy"])
    grid = r.ratios[-1] - r.ratios[0]  # a constant ARR integrates to ARR x the grid's range
    assert r.bias_only["iis"] == pytest.approx(r.bias_only["arr"] * grid)
    assert r.bias_only["arr"] < min(r.arr)  # separable classes: every head clears the floor
    d = r.to_dict()
    assert d["bias_only"] == r.bias_only and d["saturated"] == (r.iis >= SATURATION_IIS)

"""The IIS integral and its bootstrap, against hand computations."""

import random

import numpy as np
import pytest

from iis import DEFAULT_RATIOS, accuracy_retention, compute_iis
from iis.score import bootstrap_iis, bootstrap_iis_difference, iis_from_correct

#: the worked example: accuracies per ratio of the default grid, probe 0.80
TABLE = [0.76, 0.76, 0.75, 0.74, 0.72, 0.68, 0.62, 0.50]


def test_worked_example_by_hand():
    # intervals: 0.1*(0.95+0.95)/2, 0.2*(0.95+0.9375)/2, 0.2*(0.9375+0.925)/2, 0.2*(0.925+0.9)/2,
    # 0.2*(0.9+0.85)/2, 0.05*(0.85+0.775)/2, 0.03*(0.775+0.625)/2
    parts = [0.095, 0.18875, 0.18625, 0.1825, 0.175, 0.040625, 0.021]
    assert compute_iis(DEFAULT_RATIOS, TABLE, 0.80) == pytest.approx(sum(parts), abs=1e-12)
    assert compute_iis(DEFAULT_RATIOS, TABLE, 0.80) == pytest.approx(0.889125, abs=1e-12)


def test_flat_arr_of_one_gives_the_range_of_the_grid():
    assert compute_iis(DEFAULT_RATIOS, [0.7] * 8, 0.7) == pytest.approx(0.98, abs=1e-12)
    assert compute_iis([0.0, 0.5], [0.9, 0.9], 0.9) == pytest.approx(0.5)


def test_one_ratio_gives_zero():
    assert compute_iis([0.7], [0.9], 0.8) == 0.0


def test_ratio_order_does_not_matter():
    pairs = list(zip(DEFAULT_RATIOS, TABLE, strict=True))
    random.Random(3).shuffle(pairs)
    ratios, accs = zip(*pairs, strict=True)
    assert compute_iis(ratios, accs, 0.8) == pytest.approx(0.889125, abs=1e-12)
    assert compute_iis(dict(pairs), probe_accuracy=0.8) == pytest.approx(0.889125, abs=1e-12)


def test_several_learning_rates_take_the_best():
    accs = [[a - 0.1, a, a - 0.05] for a in TABLE]
    assert compute_iis(DEFAULT_RATIOS, accs, [0.7, 0.8]) == pytest.approx(0.889125, abs=1e-12)
    # a ratio listed twice keeps its best accuracy
    assert compute_iis([0.0, 0.5, 0.5], [0.8, 0.2, 0.6], 0.8) == pytest.approx(0.5 * (1 + 0.75) / 2)


def test_arr_is_not_clipped():
    s, arr = accuracy_retention([0.0, 0.5], [0.9, 0.85], 0.8)
    assert s.tolist() == [0.0, 0.5]
    assert arr == pytest.approx([1.125, 1.0625])


@pytest.mark.parametrize(("ratios", "accs", "probe", "message"), [
    ([0.0, 1.0], [0.5, 0.5], 0.8, "outside"),
    ([0.0, 0.5], [0.5], 0.8, "one per ratio"),
    ([0.0], [1.2], 0.8, "fractions"),
    ([0.0], [0.5], 0.0, "undefined"),
    ([0.0], [float("nan")], 0.8, "finite"),
    ([], [], 0.8, "no sparsity ratio"),
])
def test_bad_input_is_refused(ratios, accs, probe, message):
    with pytest.raises(ValueError, match=message):
        compute_iis(ratios, accs, probe)


def test_missing_probe_is_refused():
    with pytest.raises(ValueError, match="probe_accuracy is missing"):
        compute_iis([0.0, 0.5], [0.5, 0.5])


def test_iis_from_correctness_and_bootstrap():
    rng = np.random.default_rng(0)
    correct = (rng.random((400, 3)) < [0.8, 0.6, 0.9]).astype(float)
    ratios = [0.0, 0.5]
    acc = correct.mean(0)
    expected = 0.5 * (acc[0] / acc[2] + acc[1] / acc[2]) / 2
    assert iis_from_correct(correct, ratios) == pytest.approx(expected)
    point, low, high = bootstrap_iis(correct, ratios, n_boot=200, seed=1)
    assert point == pytest.approx(expected) and low < point < high
    assert bootstrap_iis(correct, ratios, n_boot=200, seed=1) == (point, low, high)  # deterministic
    diff = bootstrap_iis_difference(correct, correct, ratios, n_boot=50)
    assert diff == (0.0, 0.0, 0.0)

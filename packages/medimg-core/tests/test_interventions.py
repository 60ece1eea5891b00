"""Concept interventions against hand-computed curves."""

import numpy as np
import pytest

from medimg_core.interventions import intervention_curve, intervention_orders, plot_intervention_curves


def _label_is_concept_0(values: np.ndarray) -> np.ndarray:
    """A label predictor that reads only concept 0 (thresholded at 0.5): class 1 when it is present."""
    return (values[:, 0] > 0.5).astype(int)


# four images; the label equals concept 0; the model gets concept 0 wrong on images 0 and 1
TRUTH = np.array([[1, 0, 1], [0, 1, 1], [1, 1, 0], [0, 0, 0]], dtype=float)
TARGETS = TRUTH[:, 0].astype(int)
PROBS = np.array([[0.45, 0.1, 0.9], [0.60, 0.9, 0.8], [0.9, 0.95, 0.2], [0.1, 0.3, 0.05]])


def test_uncertainty_order_by_hand():
    # images 0 and 1 are least sure of concept 0 (|0.45 - 0.5| and |0.60 - 0.5| are their smallest), so k = 1 fixes
    # both; images 2 and 3 have it right already
    curve = intervention_curve(_label_is_concept_0, PROBS, PROBS, TRUTH, TARGETS, order="uncertainty")
    assert curve["k"] == [0, 1, 2, 3]
    assert curve["accuracy"] == [0.5, 1.0, 1.0, 1.0]
    assert curve["balanced_accuracy"][0] == 0.5 and curve["accuracy_sd"] == [0, 0, 0, 0]
    orders = intervention_orders(PROBS, "uncertainty")[0]
    assert orders[0].tolist() == [0, 1, 2]  # distances 0.05, 0.4, 0.4: the tie keeps the concept order
    assert orders[2].tolist() == [2, 0, 1]  # 0.4, 0.45, 0.3


def test_random_order_averages_orders():
    curve = intervention_curve(_label_is_concept_0, PROBS, PROBS, TRUTH, TARGETS, order="random", n_orders=6, seed=3)
    orders = intervention_orders(PROBS, "random", 6, seed=3)
    assert all(sorted(o[0]) == [0, 1, 2] and (o == o[0]).all() for o in orders)  # one permutation for all images
    # after k corrections an order fixes images 0 and 1 once concept 0 is among its first k concepts
    expected = [np.mean([1.0 if 0 in o[0][:k] else 0.5 for o in orders]) for k in range(4)]
    assert curve["accuracy"] == pytest.approx(expected) and curve["accuracy"][-1] == 1.0
    sd = [np.std([1.0 if 0 in o[0][:k] else 0.5 for o in orders], ddof=1) for k in range(4)]
    assert curve["accuracy_sd"] == pytest.approx(sd)


def test_unknown_truth_keeps_the_prediction_and_bad_input_is_refused(tmp_path):
    truth = TRUTH.copy()
    truth[0, 0] = np.nan  # image 0's concept 0 is not annotated: it stays wrong
    curve = intervention_curve(_label_is_concept_0, PROBS, PROBS, truth, TARGETS, order="uncertainty", steps=[0, 3])
    assert curve["k"] == [0, 3] and curve["accuracy"] == [0.5, 0.75]
    with pytest.raises(ValueError, match="expected one of"):
        intervention_curve(_label_is_concept_0, PROBS, PROBS, TRUTH, TARGETS, order="greedy")
    with pytest.raises(ValueError, match="0, 1 or NaN"):
        intervention_curve(_label_is_concept_0, PROBS, PROBS, TRUTH * 2, TARGETS)
    with pytest.raises(ValueError, match="do not match"):
        intervention_curve(_label_is_concept_0, PROBS, PROBS[:3], TRUTH, TARGETS)
    with pytest.raises(ValueError, match="steps must lie"):
        intervention_curve(_label_is_concept_0, PROBS, PROBS, TRUTH, TARGETS, steps=[5])
    curve_r = intervention_curve(_label_is_concept_0, PROBS, PROBS, TRUTH, TARGETS, order="random", n_orders=2)
    path = plot_intervention_curves({"model": {"random": curve_r, "uncertainty": curve}}, tmp_path / "c.png")
    assert path.stat().st_size > 1000

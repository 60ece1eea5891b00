"""The estimator contract of medimg-core (fit, predict, explain, save, load, the run folder) for
InterpretabilityScore, on every task type IIS scores here: binary (synth-derm) and multiclass (synth-grade's
images with the grades read as classes). timm's test_resnet at random weights, 32 px, a short sweep."""

import pytest

from iis import InterpretabilityScore
from medimg_core.testing import tiny_splits
from medimg_core.testing.conformance import check_estimator

#: settings that score in seconds (the ones of integration-tests/test_end_to_end.py's iis command)
TINY = {"backbones": ["test_resnet:random"], "data__image_size": 32, "elements__images_per_class": 2,
        "elements__slic_segments": [10], "library__num_concepts": 12, "sweep__ratios": [0.0, 0.5, 0.9],
        "sweep__lrs": [0.01, 0.1], "sweep__epochs": 3, "sweep__batch_size": 32, "bootstrap": 20, "device": "cpu",
        "progress": False}


@pytest.mark.parametrize("task", ["binary", "multiclass"])
def test_interpretability_score_keeps_the_estimator_contract(task, tmp_path, monkeypatch):
    monkeypatch.setenv("MEDIMG_HOME", str(tmp_path / "home"))
    splits = tiny_splits(task, n=48, size=32)
    model = check_estimator(lambda: InterpretabilityScore("synth-derm-cpu", out=str(tmp_path / "runs"), **TINY),
                            splits, tmp_path)
    score = model.scores_["test_resnet:random"]
    assert score["iis_ci"][0] <= score["iis"] <= score["iis_ci"][1]
    assert score["n_test"] == len(splits["val"])  # scored on the val split given to fit
    assert model.ratio_ == 0.0  # the sparsest head keeping top_k = 10 of 12 concepts (s = 0.5 keeps 5)

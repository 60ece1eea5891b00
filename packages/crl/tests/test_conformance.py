"""The estimator contract (medimg_core.testing.conformance) on every task type CRL supports, and its refusals."""

import pytest

from crl import ConceptRuleLearner
from medimg_core.testing import tiny_splits
from medimg_core.testing.conformance import check_estimator

TINY = {"model__backbone": "test_resnet", "model__logic_layers": [16, 16], "data__image_size": 32,
        "train__epochs": 1, "train__batch_size": 8, "device": "cpu", "bootstrap": 20, "train__progress": False}


@pytest.mark.parametrize("task", ["binary", "multiclass"])  # synth-derm (6 concepts); synth-grade as classes (1)
def test_conformance(task, tmp_path):
    splits = tiny_splits(task, n=48, size=32)
    fitted = check_estimator(lambda: ConceptRuleLearner("synthetic-cpu", out=str(tmp_path / "runs"), **TINY), splits,
                             tmp_path)
    assert fitted.rules_ is not None and fitted.rules_.class_names == list(splits["train"].card.class_names)
    assert fitted.predict_concepts(splits["test"]).shape == (len(splits["test"]), splits["train"].card.num_concepts)


@pytest.mark.parametrize("task, message", [("multilabel", "multi-label tasks are not supported")])
def test_unsupported_tasks_are_refused_before_a_run_folder_exists(task, message, tmp_path):
    splits = tiny_splits(task, n=24, size=32)
    with pytest.raises(ValueError, match=message):
        ConceptRuleLearner("synthetic-cpu", out=str(tmp_path / "runs"), **TINY).fit(splits["train"], splits["val"])
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())

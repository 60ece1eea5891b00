"""The estimator contract of medimg-core (`check_estimator`) on every task the method supports: ordinal grades
(synth-grade, the paper's setting) and a binary label (synth-derm), with a tiny DAE at 16 px."""

from __future__ import annotations

import numpy as np
import pytest

from dae_counterfactual import CounterfactualExplainer, CounterfactualSeries
from medimg_core.testing import tiny_splits
from medimg_core.testing.conformance import check_estimator


@pytest.mark.parametrize("task", ["ordinal", "binary"])
def test_counterfactual_explainer_keeps_the_estimator_contract(task, tmp_path, tiny_params):
    splits = tiny_splits(task, n=48, size=32)
    transforms = {k: v.transform for k, v in splits.items()}
    model = check_estimator(lambda: CounterfactualExplainer("synth-grade-cpu", out=str(tmp_path / "runs"),
                                                            **tiny_params), splits, tmp_path)
    assert {k: v.transform for k, v in splits.items()} == transforms  # fit works on copies
    # the classes are the latent boundary's: grade >= 1 on synth-grade, the two labels of a binary set
    expected = ["grade < 1", "grade >= 1"] if task == "ordinal" else list(splits["train"].card.class_names)
    assert model.classes_ == expected
    # predict_proba is (1 - sigmoid(d), sigmoid(d)) of the signed distance d of the image's z_sem
    x = model._with_eval_transform(splits["test"])[0]["image"][None]
    d = model.boundary_.distance(model.model_.encode(x).numpy())
    np.testing.assert_allclose(model.predict_proba(x)[:, 1], 1 / (1 + np.exp(-d)), rtol=1e-6)
    # explain: the other class by default; the preset's edit is fixed steps towards it along the class-mean
    # difference, so each step moves the distance by the same multiple of that direction's cosine with the normal
    series = model.explain(x[0])
    assert isinstance(series, CounterfactualSeries)
    assert series.predicted == int(d[0] > 0) and series.target == 1 - series.predicted
    edit = model.dae_config_.counterfactual
    assert (edit.edit, edit.along, series.mode) == ("step", "mean-difference", "step")
    assert list(series.targets) == sorted(edit.steps)
    cosine = float(model.boundary_.edit_direction("mean-difference") @ model.boundary_.normal_)
    sign = 1.0 if series.target == 1 else -1.0
    expected = series.distance + sign * series.targets / np.sqrt(model.boundary_.n_features_in_) * cosine
    np.testing.assert_allclose(series.edited_distances, expected, rtol=1e-6, atol=1e-9)
    if task == "ordinal":
        assert model.grades_of(0) == [0] and model.grades_of(1) == [1, 2, 3, 4]
    text = series.to_text()
    assert f"moved to {model.classes_[series.target]}" in text
    assert len(series.to_text(top_k=1).splitlines()) <= 4

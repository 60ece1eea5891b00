"""CIPLClassifier keeps the estimator contract (medimg_core.testing.conformance) on every task type it trains on:
multi-label (synth-cxr, findings against "No Finding"), binary (synth-derm) and multiclass (synth-grade's grades
read as classes); timm's test_resnet at 32 px, two epochs with a push after each."""

import pytest

from cipl import CIPLClassifier
from medimg_core.estimator import with_transform
from medimg_core.testing import tiny_splits
from medimg_core.testing.conformance import check_estimator


@pytest.mark.parametrize("task", ["multilabel", "binary", "multiclass"])
def test_cipl_estimator_conformance(task, tmp_path, tiny_settings):
    splits = tiny_splits(task, n=48, size=32)
    transforms = {name: ds.transform for name, ds in splits.items()}
    fitted = check_estimator(lambda: CIPLClassifier("synth-cxr-cpu", out=str(tmp_path / "runs"), **tiny_settings), splits,
                             tmp_path)
    # fit trains on copies (the pair views, the push set's evaluation transform): the caller's datasets are untouched
    assert all(splits[name].transform is tf for name, tf in transforms.items())
    card = splits["train"].card
    if task == "multilabel":  # the findings are scored; the reference class is a prototype class only
        assert fitted.classes_ == list(card.class_names)
        assert fitted.labels_.class_names[-1] == "No Finding"
    else:
        assert fitted.classes_ == list(card.class_names) == list(fitted.labels_.class_names)
    assert fitted.push_index_ is not None and fitted.push_index_.folder is not None
    sample = with_transform(splits["test"], fitted.preprocess_.eval_transform())[0]
    reasoning = fitted.explain(sample)
    assert reasoning.image_id == str(sample["id"])
    assert "(from " in reasoning.to_text()  # the push index names each prototype's source image

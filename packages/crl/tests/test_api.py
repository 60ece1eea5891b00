"""The estimator on checkpoint folders: self-contained in features mode, run folders of the older layout, the
explanation protocol."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from crl import ConceptRuleLearner, explain_image, load_crl, load_rules_of
from crl.train import FROZEN_BACKBONE
from medimg_core.checkpoint import CheckpointError
from medimg_core.explain import Explanation as ExplanationProtocol
from medimg_core.pretrained import load_pretrained
from medimg_core.testing import tiny_splits

TINY = {"model__backbone": "test_resnet", "model__logic_layers": [8, 8], "data__image_size": 32,
        "train__epochs": 2, "train__batch_size": 8, "device": "cpu", "bootstrap": 20, "train__progress": False}


@pytest.fixture(scope="module")
def features_fit(tmp_path_factory):
    """A features-mode CRL fitted on tiny synth-derm splits (its feature cache in its own folder)."""
    tmp = tmp_path_factory.mktemp("crl-features")
    splits = tiny_splits("binary", n=48, size=32)
    transforms = {k: v.transform for k, v in splits.items()}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MEDIMG_HOME", str(tmp / "home"))
        model = ConceptRuleLearner("synthetic-cpu", mode="features", out=str(tmp / "runs"), **TINY)
        model.fit(splits["train"], splits["val"])
    assert {k: v.transform for k, v in splits.items()} == transforms  # fit copies; the datasets stay as given
    return model, splits, tmp


def _batch(model, dataset, n=6):
    return torch.stack([model._with_eval_transform(dataset)[i]["image"] for i in range(n)])


def test_features_mode_checkpoints_rebuild_the_model_alone(features_fit, tmp_path):
    model, splits, _ = features_fit
    run = Path(model.run_)
    for name in ("best", "last"):
        assert (run / "checkpoints" / name / FROZEN_BACKBONE).is_file(), name
    assert not (run / FROZEN_BACKBONE).exists()  # the run folder keeps no second copy
    for folder in (run, run / "checkpoints" / "best"):
        assert (folder / "rules.json").is_file() and (folder / "rules.txt").is_file(), folder
    # checkpoints/best moved away from its run folder still rebuilds backbone + CRL + rules
    alone = shutil.copytree(run / "checkpoints" / "best", tmp_path / "alone")
    batch = _batch(model, splits["test"])
    for loaded in (ConceptRuleLearner.from_pretrained(alone), load_pretrained(alone)):
        assert isinstance(loaded, ConceptRuleLearner) and loaded.run_ is None
        np.testing.assert_array_equal(loaded.predict_proba(batch), model.predict_proba(batch))
        assert loaded.rules_.to_json() == model.rules_.to_json()
        assert loaded.explain(batch[0]).to_text() == model.explain(batch[0]).to_text()
    network, _ = load_crl(alone)
    assert network.backbone is not None and not network.training


def test_predict_concepts_are_what_the_rules_read(features_fit):
    model, splits, _ = features_fit
    batch = _batch(model, splits["test"])
    concepts = model.predict_concepts(batch)
    assert concepts.shape == (6, 6) and set(np.unique(concepts)) <= {0.0, 1.0}
    explanation = model.explain(batch[2])
    np.testing.assert_array_equal(explanation.concepts, concepts[2])
    np.testing.assert_allclose(explanation.scores, model.rules_.scores(concepts[2:3])[0])


def _to_old_layout(run: Path, out: Path) -> Path:
    """A copy of a run folder in the layout written before the checkpoint contract: the frozen backbone in the run
    folder only, the rules in the run folder only, config.json with CRL's keys and no preprocess/format/versions
    (the keys the old `train_crl` wrote, plus the versions `save_checkpoint` adds)."""
    old = shutil.copytree(run, out)
    shutil.copyfile(old / "checkpoints" / "best" / FROZEN_BACKBONE, old / FROZEN_BACKBONE)
    for name in ("best", "last"):
        folder = old / "checkpoints" / name
        (folder / FROZEN_BACKBONE).unlink()
        for rules in ("rules.json", "rules.txt"):
            (folder / rules).unlink(missing_ok=True)
        config = json.loads((folder / "config.json").read_text())
        keep = ("kind", "config", "card", "in_chans", "in_features", "medimg_core_version", "torch_version")
        (folder / "config.json").write_text(json.dumps({k: config[k] for k in keep}))
    return old


def test_run_folders_of_the_older_layout_load_and_convert(features_fit, tmp_path):
    model, splits, _ = features_fit
    old = _to_old_layout(Path(model.run_), tmp_path / "old-run")
    batch = _batch(model, splits["test"])
    expected = model.predict_proba(batch)
    for path in (old, old / "checkpoints" / "best"):  # the run folder, or its checkpoint inside it
        loaded = ConceptRuleLearner.from_pretrained(path)
        np.testing.assert_array_equal(loaded.predict_proba(batch), expected)
        assert loaded.preprocess_ == model.preprocess_  # rebuilt from the saved config
        assert loaded.explain(batch[0]).to_text() == model.explain(batch[0]).to_text()
    assert load_rules_of(old).to_json() == model.rules_.to_json()
    image = tmp_path / "image.png"
    Image.fromarray(splits["test"].table.images[0]).save(image)
    assert explain_image(old, image).to_text() == model.explain(image).to_text()

    # its checkpoint folder alone lacks the frozen backbone: the error says how to convert
    alone = shutil.copytree(old / "checkpoints" / "best", tmp_path / "old-alone")
    with pytest.raises(CheckpointError, match=f"copy RUN/{FROZEN_BACKBONE} into"):
        ConceptRuleLearner.from_pretrained(alone)
    # ... and save_pretrained writes the old run out as one self-contained checkpoint folder
    converted = ConceptRuleLearner.from_pretrained(old).save_pretrained(tmp_path / "converted")
    config = json.loads((converted / "config.json").read_text())
    assert config["format"] == 2 and config["preprocess"] == model.checkpoint_config_["preprocess"]
    assert config["in_features"] == model.checkpoint_config_["in_features"]
    moved = shutil.move(converted, tmp_path / "elsewhere" / "converted")
    again = ConceptRuleLearner.from_pretrained(moved)
    np.testing.assert_array_equal(again.predict_proba(batch), expected)
    assert again.rules_.to_json() == model.rules_.to_json()


def test_explanations_implement_the_protocol(features_fit, tmp_path):
    model, splits, _ = features_fit
    x = _batch(model, splits["test"], 1)[0]
    explanation = model.explain(x)
    assert isinstance(explanation, ExplanationProtocol)
    assert explanation.target == explanation.predicted
    other = 1 - explanation.predicted
    by_name = model.explain(x, target=model.classes_[other])
    assert by_name.target == other and by_name.predicted == explanation.predicted
    assert f"contribution to {model.classes_[other]}:" in by_name.to_text()
    with pytest.raises(ValueError, match="not a class"):
        model.explain(x, target="martian")
    data = json.loads(json.dumps(explanation.to_dict()))
    assert data["predicted"] == explanation.predicted and len(data["concepts"]) == 6
    assert explanation.figure(tmp_path / "f" / "e.png", top_k=1).stat().st_size > 1000

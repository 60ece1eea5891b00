"""InterpretabilityScore beyond the shared contract: the split roles of fit, self-contained checkpoints, run
folders written before this format (a real one, by iis 0.1, in tests/data), and the old names."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from iis import Explanation, InterpretabilityScore, explain_image
from iis.api import selection_split
from medimg_core.checkpoint import CheckpointError
from medimg_core.estimator import with_transform
from medimg_core.pretrained import load_pretrained
from medimg_core.synthetic import generate
from medimg_core.testing import tiny_splits

DATA = Path(__file__).parent / "data"
OLD_RUN = DATA / "iis-0.1-run"
TINY = {"data__image_size": 32, "elements__images_per_class": 2, "elements__slic_segments": [10],
        "library__num_concepts": 12, "sweep__ratios": [0.0, 0.5, 0.9], "sweep__lrs": [0.01, 0.1], "sweep__epochs": 3,
        "sweep__batch_size": 32, "bootstrap": 20, "device": "cpu", "progress": False}


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        path = tmp_path_factory.mktemp("medimg-home")
        mp.setenv("MEDIMG_HOME", str(path))
        yield path


@pytest.fixture(scope="module")
def splits():
    return tiny_splits("binary", n=48, size=32)


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory):
    """test_resnet weights from another seed, as a .safetensors file: a representation that is not a random init."""
    from safetensors.torch import save_file

    from medimg_core.models import create_backbone

    torch.manual_seed(7)
    path = tmp_path_factory.mktemp("weights") / "other.safetensors"
    save_file(create_backbone("test_resnet").model.state_dict(), str(path))
    return path


@pytest.fixture(scope="module")
def fitted(home, splits, weights_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    model = InterpretabilityScore("synth-derm-cpu", backbones=["test_resnet:random", f"test_resnet:{weights_file}"],
                                  out=str(out), **TINY)
    return model.fit(splits["train"], splits["val"])


def _sample(model: InterpretabilityScore, dataset, index: int = 0) -> dict:
    """Sample `index` of `dataset` through the model's stored preprocessing."""
    return with_transform(dataset, model.preprocess_.eval_transform())[index]


def test_selection_split_is_seeded_stratified_and_disjoint():
    targets = np.array([0] * 20 + [1] * 6 + [2] * 1)
    fit, select = selection_split(targets, 0.2, seed=0)
    assert np.intersect1d(fit, select).size == 0 and len(fit) + len(select) == len(targets)
    assert np.bincount(targets[select], minlength=3).tolist() == [4, 1, 0]  # a single image stays for fitting
    again, _ = selection_split(targets, 0.2, seed=0)
    assert np.array_equal(fit, again) and not np.array_equal(select, selection_split(targets, 0.2, seed=1)[1])
    multi = np.array([[1, 0], [1, 0], [0, 1], [0, 1], [0, 0], [0, 0]])
    assert len(selection_split(multi, 0.5, 0)[1]) == 3
    with pytest.raises(ValueError, match=r"in \(0, 1\)"):
        selection_split(targets, 1.0)


def test_fit_scores_val_selects_on_part_of_train_and_leaves_the_datasets_alone(fitted, splits):
    assert splits["train"].transform is None and splits["val"].transform is None
    metrics = fitted.run_.metrics()
    fit_part, select_part = selection_split(splits["train"].targets, 0.2, 0)
    assert metrics["sizes"] == {"train": len(fit_part), "val": len(select_part), "test": len(splits["val"])}
    assert "the val set given to fit" in metrics["split_roles"]["test"]
    assert metrics["backbone"] == "test_resnet:random vs test_resnet:other.safetensors"
    assert list(fitted.scores_) == ["test_resnet:random", "test_resnet:other.safetensors"]
    for score in fitted.scores_.values():
        assert score["n_test"] == len(splits["val"]) and len(score["per_ratio"]) == 3
    assert set(fitted.heads_) == {"s0", "s0.5", "s0.9", "probe"}
    assert (Path(fitted.run_) / "checkpoints" / "best" / "config.json").is_file()
    with pytest.raises(ValueError, match="pass val"):
        InterpretabilityScore(backbones=["test_resnet:random"], **TINY).fit(splits["train"])
    with pytest.raises(ValueError, match="no backbone to score"):
        InterpretabilityScore(**TINY).fit(splits["train"], splits["val"])


def test_predict_uses_the_chosen_backbone_and_ratio(fitted, splits):
    test = splits["test"]
    first = fitted.predict_proba(test)
    second = InterpretabilityScore.from_pretrained(fitted.run_, backbone=1)
    assert second.backbone_.spec.label == "test_resnet:other.safetensors"
    assert not np.allclose(second.predict_proba(test), first)
    by_label = InterpretabilityScore.from_pretrained(fitted.run_, backbone="test_resnet:other.safetensors")
    np.testing.assert_array_equal(by_label.predict_proba(test), second.predict_proba(test))
    sparse = InterpretabilityScore.from_pretrained(fitted.run_, ratio=0.9)
    assert sparse.ratio_ == 0.9 and len(sparse.explain(_sample(sparse, test)).concept_index) <= 1
    with pytest.raises(ValueError, match="was not swept"):
        InterpretabilityScore.from_pretrained(fitted.run_, ratio=0.3)
    with pytest.raises(ValueError, match="is not in"):
        InterpretabilityScore.from_pretrained(fitted.run_, backbone="resnet18:random")
    assert isinstance(load_pretrained(fitted.run_), InterpretabilityScore)


def test_checkpoint_is_self_contained(fitted, splits, weights_file, tmp_path):
    second = InterpretabilityScore.from_pretrained(fitted.run_, backbone=1)
    saved = second.save_pretrained(tmp_path / "heads")
    names = {p.name for p in saved.iterdir()}
    assert {"config.json", "model.safetensors", "README.md", "library.safetensors", "library.json", "backbone.json",
            "backbone.safetensors", "concept_pictures.safetensors"} <= names
    config = json.loads((saved / "config.json").read_text())
    assert config["kind"] == "iis-heads" and config["preprocess"]["image_size"] == 32
    assert config["score"]["iis"] == second.scores_["test_resnet:other.safetensors"]["iis"]
    moved = tmp_path / "moved"
    shutil.copytree(saved, moved)  # neither the run, the weights file nor the training images are needed
    weights_file.rename(weights_file.with_suffix(".gone"))
    try:
        loaded = InterpretabilityScore.from_pretrained(moved)
        np.testing.assert_array_equal(loaded.predict_proba(splits["test"]), second.predict_proba(splits["test"]))
        explanation = loaded.explain(_sample(loaded, splits["test"]))
        assert any(p is not None for p in explanation.pictures)  # the concept pictures travel with the heads
    finally:
        weights_file.with_suffix(".gone").rename(weights_file)
    assert "backbone.safetensors" not in {p.name for p in (Path(fitted.run_) / "checkpoints" / "best").iterdir()}


def test_explanation_protocol_and_old_names(fitted, splits, tmp_path):
    x = _sample(fitted, splits["test"])
    explanation = fitted.explain(x, target=1)
    assert isinstance(explanation, Explanation) and explanation.target == 1 and explanation.explained == 1
    assert explanation.predicted == int(fitted.predict_proba(x["image"])[0].argmax())
    data = explanation.to_dict()
    assert json.loads(json.dumps(data))["target"] == 1 and data["concepts"][0]["index"] == explanation.concept_index[0]
    rows = [line for line in explanation.to_text(top_k=2).splitlines() if "(activation" in line]
    assert len(rows) == 2 and "(bias)" in explanation.to_text(top_k=2)
    assert fitted.explain(x, target="malignant").target == fitted.classes_.index("malignant")
    image = tmp_path / "x.png"
    from PIL import Image

    Image.fromarray(splits["test"].load_image(0)).save(image)
    by_target = explain_image(fitted.run_, image, target=0)
    by_old_name = explain_image(fitted.run_, image, target_class=0)
    assert by_target.to_text() == by_old_name.to_text() and by_old_name.target == 0
    with pytest.raises(ValueError, match="disagree"):
        explain_image(fitted.run_, image, target=0, target_class=1)


def test_the_old_import_path_of_explain_image_says_where_it_moved():
    import iis.api
    import iis.explain

    assert iis.api.explain_image is explain_image
    with pytest.raises(ImportError, match=r"moved to iis\.api\.explain_image"):
        from iis.explain import explain_image as _  # noqa: F401
    with pytest.raises(ImportError, match=r"moved to iis\.api\.explain_image"):
        iis.explain.explain_image  # noqa: B018
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        iis.explain.nothing  # noqa: B018


# -- run folders written before this change ----------------------------------------------------------------
@pytest.fixture(scope="module")
def old_data(tmp_path_factory):
    """The synth-derm images the old run was scored on (regenerated: the generator is seeded)."""
    return generate("synth-derm", n=60, out=tmp_path_factory.mktemp("old") / "data", seed=0, size=32)


def _expected():
    return json.loads((DATA / "iis-0.1-run-expected.json").read_text())


def test_a_run_folder_of_iis_0_1_loads_and_explains_as_it_did(old_data, home, tmp_path):
    assert not (OLD_RUN / "checkpoints").exists() and not (OLD_RUN / "backbones" / "0-test_resnet-random" /
                                                            "heads" / "library.json").exists()
    for case in _expected()["explanations"]:
        model = InterpretabilityScore.from_pretrained(OLD_RUN, ratio=case["ratio"], top_k=case["top_k"],
                                                      root=str(old_data))
        explanation = model.explain(old_data / "images" / case["image"])
        assert explanation.to_text(case["top_k"]) == case["text"]
        np.testing.assert_allclose(explanation.probabilities, case["probabilities"], rtol=1e-6)
        assert sum(p is not None for p in explanation.pictures) == case["pictures"] > 0
    assert model.scores_["test_resnet:random"]["iis"] == json.loads((OLD_RUN / "metrics.json").read_text())[
        "backbones"][0]["result"]["iis"]


def test_an_old_run_converts_to_a_self_contained_checkpoint(old_data, home, tmp_path):
    run = tmp_path / "old-run"
    shutil.copytree(OLD_RUN, run)
    case = _expected()["explanations"][0]
    converted = InterpretabilityScore.from_pretrained(run, root=str(old_data)).save_pretrained(tmp_path / "new")
    shutil.rmtree(run)  # the converted folder stands alone
    model = InterpretabilityScore.from_pretrained(converted, top_k=case["top_k"])
    explanation = model.explain(old_data / "images" / case["image"])
    assert explanation.to_text(case["top_k"]) == case["text"]
    assert sum(p is not None for p in explanation.pictures) == case["pictures"]  # stored at conversion
    assert isinstance(load_pretrained(converted), InterpretabilityScore)


def test_an_old_heads_folder_alone_says_how_to_convert(tmp_path):
    heads = tmp_path / "heads"
    shutil.copytree(OLD_RUN / "backbones" / "0-test_resnet-random" / "heads", heads)
    with pytest.raises(CheckpointError, match=r"save_pretrained\(NEW_FOLDER\)"):
        InterpretabilityScore.from_pretrained(heads)
    with pytest.raises(CheckpointError, match="neither an `iis score` run folder"):
        InterpretabilityScore.from_pretrained(tmp_path)


def test_head_state_reads_a_head_of_either_format_from_its_old_import_path(fitted):
    from iis.pipeline import head_state

    old = head_state(OLD_RUN / "backbones" / "0-test_resnet-random" / "heads", "s0.5")
    assert {"linear.weight", "linear.bias"} <= set(old) and old["linear.weight"].shape[1] == 12
    new = head_state(fitted.run_ / "checkpoints" / "best", "probe")
    assert all(torch.equal(new[k], fitted.heads_["probe"][k]) for k in fitted.heads_["probe"])
    with pytest.raises(KeyError, match=r"no head 's0.7'; saved heads: \['probe', 's0', 's0.5', 's0.9'\]"):
        head_state(fitted.run_ / "checkpoints" / "best", "s0.7")

"""ConceptsFromNeurons keeps the estimator contract (medimg_core.testing.conformance) on binary and multiclass
data, and reads pipeline, stage and checkpoint folders alike."""

import json
from pathlib import Path

import numpy as np
import pytest

from medimg_core.pretrained import load_pretrained
from medimg_core.testing import tiny_splits
from medimg_core.testing.conformance import check_estimator
from neuron_concepts import ConceptsFromNeurons, Explanation
from neuron_concepts.folders import FEATURES_FILE, load_features, stage_chain

#: the sizes of the end-to-end test: every stage runs in seconds on 32 px images
TINY = {"model__backbone": "test_resnet", "data__image_size": 32, "train__epochs": 1, "train__batch_size": 16,
        "train__num_workers": 0, "sae__expansion": 2, "sae__batch_size": 32, "sae__epochs": 10, "sae__eval_every": 5,
        "naming__figures": 2, "naming__top_n": 6, "cav__top_n": 10, "cav__n_negative": 20, "cav__min_positives": 3,
        "select__k": 12, "cbm__n_nonzero": 4, "cbm__c_search_steps": 1, "bootstrap": 20, "device": "cpu",
        "progress": False, "naming__min_auroc": 0.6}  # few latents of a 1-epoch model reach the default floor


@pytest.mark.parametrize("task, n", [("binary", 48), ("multiclass", 96)])
def test_conformance(task, n, tmp_path):
    splits = tiny_splits(task, n=n, size=32)
    before = {k: ds.transform for k, ds in splits.items()}
    model = check_estimator(lambda: ConceptsFromNeurons("synth-derm-cpu", out=str(tmp_path / "runs"), **TINY),
                            splits, tmp_path)
    assert {k: ds.transform for k, ds in splits.items()} == before  # fit works on copies of the datasets
    assert model.run_.name == "cbm" and (Path(model.run_).parent / "pipeline.json").is_file()
    # the checkpoint holds everything that predicts from an image
    names = {p.name for p in model.checkpoint_.iterdir()}
    assert {"model.safetensors", "sae.safetensors", "sae.json", "cbm.safetensors", "cbm.json", "config.json",
            "README.md"} <= names
    config = json.loads((model.checkpoint_ / "config.json").read_text())
    assert config["kind"] == "neuron-concepts" and config["num_concepts"] == model.cbm_.concepts.shape[0]
    assert config["task"] == splits["train"].card.task


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cfn")
    with pytest.MonkeyPatch.context() as mp:  # module scope runs before the per-test MEDIMG_HOME fixture
        mp.setenv("MEDIMG_HOME", str(tmp / "medimg-home"))
        splits = tiny_splits("binary", n=48, size=32)
        model = ConceptsFromNeurons("synth-derm-cpu", out=str(tmp / "runs"), **TINY).fit(splits["train"],
                                                                                            splits["val"])
    return model, splits


def test_from_pretrained_takes_the_pipeline_its_cbm_stage_and_the_checkpoint(fitted):
    model, splits = fitted
    expected = model.predict_proba(splits["test"])
    cbm_dir = Path(model.run_)
    for path in (cbm_dir.parent, cbm_dir, model.checkpoint_):
        loaded = ConceptsFromNeurons.from_pretrained(path)
        np.testing.assert_array_equal(loaded.predict_proba(splits["test"]), expected)
    assert isinstance(load_pretrained(model.checkpoint_), ConceptsFromNeurons)
    with pytest.raises(ValueError, match="this is a 'sae' stage folder"):
        ConceptsFromNeurons.from_pretrained(cbm_dir.parent / "sae")


def test_the_encode_stage_keeps_its_features(fitted, monkeypatch, tmp_path):
    """The pipeline reads its features from its own folder: the feature cache may go away."""
    model, _ = fitted
    encode = stage_chain(model.run_)["encode"]
    monkeypatch.setenv("MEDIMG_HOME", str(tmp_path / "empty-home"))
    feats = load_features(encode)
    assert set(feats) >= {"train", "val"} and "test" not in feats  # fit(train, val): no test split
    assert feats["train"]["features"].shape[0] == len(feats["train"]["ids"])


def test_explanation_protocol_and_old_argument_names(fitted):
    model, splits = fitted
    sample = model._with_eval_transform(splits["test"])[0]  # a sample dict with a preprocessed image
    e = model.explain(sample, target=1)
    assert isinstance(e, Explanation) and e.target == 1 and e.explained == 1
    assert e.to_text(top_k=2) == e.to_text(k=2) == e.to_text(2)
    assert len(e.top(2)) <= 2 and e.contributions.sum() + e.residual == pytest.approx(e.logit, abs=1e-9)
    with pytest.raises(TypeError, match="disagree"):
        e.to_text(top_k=2, k=3)
    d = json.loads(json.dumps(e.to_dict()))
    assert d["target"] == 1 and len(d["concepts"]) == int((e.contributions != 0).sum())
    with pytest.raises(ValueError, match="unknown class"):
        model.explain(sample, target="purple")


def test_fit_without_validation_is_refused_clearly(tmp_path):
    splits = tiny_splits("binary", n=48, size=32)
    with pytest.raises(ValueError, match="needs a validation dataset"):
        ConceptsFromNeurons("synth-derm-cpu", out=str(tmp_path), **TINY).fit(splits["train"])
    assert not list(tmp_path.iterdir())  # refused before any folder was made


def test_features_json_records_every_split(fitted):
    model, _ = fitted
    encode = stage_chain(model.run_)["encode"]
    splits = json.loads((encode / FEATURES_FILE).read_text())["splits"]
    for split, entry in splits.items():
        assert (encode / entry["file"]).is_file() and entry["n"] == len(entry["ids"]), split


def test_public_names_and_earlier_import_paths():
    """The package's names load on first use; the earlier module paths (train, model) give the same objects."""
    import neuron_concepts
    from neuron_concepts import bottleneck, opaque, sae, selection, stages, train
    from neuron_concepts import model as old_model

    for name in neuron_concepts.__all__:
        assert getattr(neuron_concepts, name) is not None, name
    assert (train.encode, train.name, train.cav, train.select) == (stages.encode_stage, stages.name_stage,
                                                                   stages.cav_stage, stages.select_stage)
    assert (train._opaque_data, train._eval_datasets) == (opaque.opaque_data, opaque.eval_datasets)
    assert (old_model.SparseAutoencoder, old_model.facility_location, old_model.ConceptBottleneck) == (
        sae.SparseAutoencoder, selection.facility_location, bottleneck.ConceptBottleneck)
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        neuron_concepts.nothing  # noqa: B018

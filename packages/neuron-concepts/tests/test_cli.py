"""The `neuron-concepts` command end to end on a tiny synthetic dataset (timm test model, 32 px)."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import neuron_concepts
from medimg_core.synthetic import generate
from neuron_concepts.cli import main

TINY = ["--device", "cpu", "--model.backbone", "test_resnet", "--data.image_size", "32", "--train.epochs", "1",
        "--train.batch_size", "16", "--train.num_workers", "0", "--sae.expansion", "2", "--sae.batch_size", "32",
        "--sae.epochs", "10", "--sae.eval_every", "5", "--naming.figures", "5", "--naming.top_n", "6",
        "--cav.top_n", "10", "--cav.n_negative", "20", "--select.k", "12", "--cbm.n_nonzero", "4",
        "--cbm.c_search_steps", "1", "--bootstrap", "20", "--no-progress",
        # a 1-epoch model on 56 images: few latents reach the default naming floor (0.8); enough reach 0.6
        "--naming.min_auroc", "0.6"]


def test_help_and_version():
    runner = CliRunner()
    result = runner.invoke(main, ["--help"])
    assert result.exit_code == 0, result.output
    for command in ("run", "train-opaque", "encode", "train-sae", "name", "cav", "select", "train-cbm", "explain"):
        assert command in result.output
    result = runner.invoke(main, ["--version"])
    assert result.exit_code == 0 and neuron_concepts.__version__ in result.output
    for command in ("run", "train-sae", "name", "select", "explain"):
        result = runner.invoke(main, [command, "--help"])
        assert result.exit_code == 0 and "--" in result.output, command


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("nc")
    with pytest.MonkeyPatch.context() as mp:  # module scope runs before the per-test MEDIMG_HOME fixture
        mp.setenv("MEDIMG_HOME", str(tmp / "medimg-home"))
        data = generate("synth-derm", n=80, out=tmp / "data", seed=0, size=32)
        result = CliRunner().invoke(main, ["run", "--config", "synth-derm-cpu", "--root", str(data), "--out",
                                           str(tmp / "runs"), *TINY], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    folder = next((tmp / "runs").iterdir())
    return data, folder


def test_run_writes_every_stage(pipeline):
    _, folder = pipeline
    summary = json.loads((folder / "metrics.json").read_text())
    stages = json.loads((folder / "pipeline.json").read_text())["stages"]
    assert set(stages) == {"opaque", "encode", "sae", "name", "cav", "select", "cbm"}
    for stage in ("encode", "sae", "name", "cav", "select", "cbm"):
        assert (folder / stage / "config.yaml").is_file() and (folder / stage / "metrics.json").is_file(), stage
        assert json.loads((folder / stage / "stage.json").read_text())["stage"] == stage
    assert (folder / stages["opaque"] / "checkpoints" / "best" / "model.safetensors").is_file()
    for name in ("sae/sae.safetensors", "sae/sae.json", "sae/figures/sae_training.png", "name/names.json",
                 "name/names.csv", "name/figures/top_latents.png", "cav/cavs.safetensors", "select/selection.json",
                 "cbm/cbm.safetensors", "cbm/figures/concept_importance.png"):
        assert (folder / name).is_file(), name
    assert 1 <= len(list((folder / "name" / "latents").glob("latent_*.png"))) <= 5
    assert set(summary["wall_time_s"]) >= {"opaque", "encode", "sae", "name", "cav", "select", "cbm", "total"}
    assert 0 <= summary["cbm_test"]["accuracy"] <= 1 and len(summary["opaque_test"]["accuracy_ci"]) == 2
    sae = json.loads((folder / "sae" / "metrics.json").read_text())
    assert {"r2", "l0", "dead_fraction"} <= set(sae["train"])
    names = json.loads((folder / "name" / "names.json").read_text())
    naming = json.loads((folder / "name" / "metrics.json").read_text())
    floor = naming["min_auroc"]
    assert any(r["source"] == "gt-attribute" for r in names)
    for r in names:  # named at or above the floor; unnamed below it, with the candidate it missed
        assert r["source"] in ("gt-attribute", "none")
        assert (r["score"] >= floor) if r["source"] == "gt-attribute" else (r["score"] is None or r["score"] < floor)
        assert r["source"] != "none" or r["name"] == f"latent {r['latent']}"
    assert naming["named"] + naming["unnamed"] == naming["alive"] == len(names)
    assert naming["named"] == sum(r["source"] != "none" for r in names)
    sweep = {row["floor"]: row for row in naming["floor_sweep_val"]}
    assert sweep[0.5]["named"] >= sweep[floor]["named"] == naming["named"] >= sweep[0.95]["named"]
    checked = naming["concept_naming_test"]
    assert [r["concept"] for r in checked] == list(json.loads((folder / "encode" / "features.json").read_text())
                                                    ["card"]["concept_names"])
    assert naming["concepts_named_confirmed_test"] == sum(r["confirmed"] for r in checked)
    assert naming["label_relevant"] == ["irregular_border", "blue_white_veil", "streaks"]
    assert naming["relevant_named_confirmed_test"] <= naming["concepts_named_confirmed_test"]
    assert "naming_accuracy" not in naming  # the circular measure is gone
    cavs = json.loads((folder / "cav" / "cavs.json").read_text())
    assert {c["latent"] for c in cavs} <= {r["latent"] for r in names if r["source"] != "none"}
    matching = naming["concept_matching"]
    assert [r["concept"] for r in matching][:2] == ["irregular_border", "blue_white_veil"]
    assert "named_correctly" not in matching[0]
    table = (folder / "cbm" / "concepts.md").read_text()
    assert "naming score" in table and table.count("| gt-attribute |") == 12 and floor == 0.6
    selection = json.loads((folder / "select" / "selection.json").read_text())
    assert len(selection) == 12 and all(np.diff([s["gain"] for s in selection]) <= 1e-9)
    encoded = json.loads((folder / "encode" / "features.json").read_text())["splits"]
    assert set(encoded) == {"train", "val", "test"}
    for entry in encoded.values():  # kept in the encode folder, extracted through medimg's feature cache
        assert (folder / "encode" / entry["file"]).is_file() and len(entry["ids"]) == entry["n"]
        assert "medimg-home/features/" in entry["cache_entry"] and entry["cache_entry"].endswith(".safetensors")
    best = folder / "cbm" / "checkpoints" / "best"  # the pipeline's model, self-contained
    for name in ("config.json", "model.safetensors", "sae.safetensors", "cbm.safetensors", "README.md"):
        assert (best / name).is_file(), name


def test_encoded_features_are_the_heads_input(pipeline):
    from medimg_core.baseline import load_baseline
    from neuron_concepts.folders import load_features, stage_chain
    from neuron_concepts.opaque import eval_datasets, opaque_data

    _, folder = pipeline
    chain = stage_chain(folder / "cbm")
    assert set(chain) == {"opaque", "encode", "sae", "name", "cav", "select", "cbm"}
    feats = load_features(chain["encode"])
    model, _ = load_baseline(chain["opaque"])
    _, _, bcfg, card = opaque_data(chain["opaque"])
    data = bcfg.data
    test = eval_datasets(data, card)["test"]
    images = torch.stack([test[i]["image"] for i in range(len(test))])
    with torch.no_grad():
        logits = model(images)
        via_head = model.head(feats["test"]["features"])
    torch.testing.assert_close(via_head, logits, atol=1e-5, rtol=1e-5)
    assert feats["test"]["ids"] == list(test.ids)


def test_stages_rerun_alone_and_explain(pipeline, tmp_path):
    data, folder = pipeline
    runner = CliRunner()
    result = runner.invoke(main, ["train-sae", str(folder / "encode"), "--kind", "topk", "--sae.k", "4",
                                  "--sae.epochs", "5", "--sae.resample_every", "2", "--no-progress"],
                           catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert (folder / "sae-2" / "sae.safetensors").is_file() and (folder / "sae" / "sae.safetensors").is_file()
    meta = json.loads((folder / "sae-2" / "stage.json").read_text())
    assert meta["parent"] == "../encode"
    m = json.loads((folder / "sae-2" / "metrics.json").read_text())
    assert m["kind"] == "topk" and m["train"]["l0"] <= 4 + 1e-9 and m["resampling"]
    result = runner.invoke(main, ["name", str(folder / "sae-2"), "--backend", "mock", "--sources",
                                  "annotations,backend", "--naming.figures", "2", "--no-progress"],
                           catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert (folder / "name-2" / "names.json").is_file()
    result = runner.invoke(main, ["select", str(folder / "cav"), "--k", "5", "--select.discriminative_weight", "0.5",
                                  "--no-progress"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    result = runner.invoke(main, ["train-cbm", str(folder / "select-2"), "--cbm.C", "1.0", "--no-progress"],
                           catch_exceptions=False)
    assert result.exit_code == 0, result.output
    cbm = json.loads((folder / "cbm-2" / "metrics.json").read_text())
    assert cbm["k"] == 5 and cbm["C"] == 1.0
    image = sorted((data / "images").iterdir())[0]
    result = runner.invoke(main, ["explain", str(folder / "cbm"), str(image), "--out", str(tmp_path / "e.png"),
                                  "--class", "malignant"])
    assert result.exit_code == 0, result.output
    assert "logit of 'malignant'" in result.output and (tmp_path / "e.png").stat().st_size > 1000
    assert "coefficient" in result.output and "naming score" in result.output and "(gt-attribute)" in result.output
    # the text's decomposition adds up
    from neuron_concepts.api import explain_image
    from neuron_concepts.train import load_cbm

    e = explain_image(folder / "cbm", image)
    assert e.contributions.sum() + e.residual == pytest.approx(e.logit, abs=1e-9)
    # each contribution is the image's coefficient times the concept's class weight: its sign is shown
    cbm = load_cbm(folder / "cbm")
    np.testing.assert_allclose(e.coefficients * cbm.concept_weights()[e.target], e.contributions, atol=1e-9)
    selection = json.loads((folder / "select" / "selection.json").read_text())
    assert e.naming_scores == [s["score"] for s in selection] == cbm.naming_scores
    for i in e.top(3):
        line = next(t for t in e.to_text().splitlines() if e.concept_names[i] in t)
        assert f"coefficient {e.coefficients[i]:+.3f}" in line and f"naming score {e.naming_scores[i]:.3f}" in line
        assert ("against" in line) == (e.coefficients[i] < 0)
    entry = e.to_dict()["concepts"][0]
    assert {"coefficient", "naming_score", "naming_source"} <= set(entry) and entry["naming_source"] == "gt-attribute"
    # a stage refuses the wrong kind of folder, in one line
    result = runner.invoke(main, ["cav", str(folder / "sae")])
    assert result.exit_code == 1 and "this is a 'sae' stage folder" in result.output
    assert "Traceback" not in result.output
    result = runner.invoke(main, ["name", str(folder / "sae"), "--sources", "file,vocabulary"])
    assert result.exit_code != 0 and "none is usable here" in result.output
    result = runner.invoke(main, ["explain", str(folder / "cbm"), str(image), "--class", "purple"])
    assert result.exit_code != 0 and "unknown class" in str(result.exception)


def test_run_resume_keeps_finished_stages_and_reruns_the_rest(pipeline, tmp_path):
    """An interrupted pipeline (its opaque training and its cav stage did not finish) continues with
    `run --resume`: the opaque run is finished in place, encode/sae/name are kept, cav/select/cbm rerun."""
    import shutil

    from neuron_concepts.folders import stage_chain

    _, folder = pipeline
    copy = tmp_path / folder.name
    shutil.copytree(folder, copy, symlinks=True)
    record = json.loads((copy / "pipeline.json").read_text())
    record["stages"].update({s: s for s in ("encode", "sae", "name", "cav", "select", "cbm")})
    (copy / "pipeline.json").write_text(json.dumps(record))
    opaque = copy / record["stages"]["opaque"]
    (opaque / "metrics.json").unlink()
    (copy / "cav" / "metrics.json").unlink()
    result = CliRunner().invoke(main, ["run", "--resume", str(copy), "--no-progress"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    stages = json.loads((copy / "pipeline.json").read_text())["stages"]
    assert [stages[s] for s in ("encode", "sae", "name")] == ["encode", "sae", "name"]
    assert all(stages[s] != s for s in ("cav", "select", "cbm"))  # new folders: cav-2 (or -3), ...
    assert (opaque / "metrics.json").is_file() and (copy / stages["cbm"] / "metrics.json").is_file()
    chain = stage_chain(copy / stages["cbm"])
    assert chain["name"] == (copy / "name").resolve() and chain["cav"] == (copy / stages["cav"]).resolve()
    assert json.loads((copy / "metrics.json").read_text())["cbm_test"]["accuracy"] >= 0
    result = CliRunner().invoke(main, ["run", "--resume", str(copy), "--seed", "1"])
    assert result.exit_code == 2 and "only --progress/--no-progress" in result.output


def test_a_stage_with_out_starts_a_new_pipeline(pipeline, tmp_path):
    _, folder = pipeline
    result = CliRunner().invoke(main, ["select", str(folder / "cav"), "--k", "4", "--out", str(tmp_path / "branch"),
                                       "--no-progress"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    (branch,) = (tmp_path / "branch").iterdir()
    assert json.loads((branch / "pipeline.json").read_text())["stages"] == {"select": "select"}
    assert json.loads((branch / "select" / "metrics.json").read_text())["k"] == 4


def test_run_checks_its_naming_sources_before_training(tmp_path, monkeypatch):
    """A naming source that cannot work fails `run` before the opaque model trains (not after the SAE), with the
    error the name stage gives, and leaves no pipeline folder behind."""
    import neuron_concepts.pipeline as pipeline_module

    def no_training(*args, **kwargs):
        raise AssertionError("the opaque model trained before the naming sources were checked")

    monkeypatch.setattr(pipeline_module, "train_opaque", no_training)
    data = generate("synth-derm", n=20, out=tmp_path / "data", seed=0, size=32)
    out = tmp_path / "runs"
    cases = {("--naming.sources", "file", "--naming.names_file", str(tmp_path / "names.json")):
             "naming.names_file: " + str(tmp_path / "names.json") + ": names file not found",
             ("--naming.sources", "vocabulary"): "none is usable here",
             ("--naming.sources", "vocabulary", "--naming.vocabulary", str(tmp_path / "v.txt"), "--naming.reports",
              str(tmp_path / "r.csv")): "vocabulary file not found",
             ("--naming.sources", "annotations", "--naming.min_auroc", "2"): "naming.min_auroc 2"}
    for args, message in cases.items():
        result = CliRunner().invoke(main, ["run", "--config", "synth-derm-cpu", "--root", str(data), "--out", str(out),
                                           *TINY, *args])
        assert result.exit_code == 1 and message in result.output, (args, result.output)
        assert "Traceback" not in result.output
        assert not out.exists() or not any(out.iterdir()), args  # no pipeline folder, no trained model
    # the same check on a dataset without concept annotations, read from its card
    plain = generate("synth-derm", n=20, out=tmp_path / "plain", seed=0, size=32)
    dataset = json.loads((plain / "dataset.json").read_text())
    del dataset["concept_columns"], dataset["mask_columns"]
    (plain / "dataset.json").write_text(json.dumps(dataset))
    result = CliRunner().invoke(main, ["run", "--config", "synth-derm-cpu", "--root", str(plain), "--out", str(out),
                                       *TINY])
    assert result.exit_code == 1 and "none is usable here" in result.output, result.output
    assert not out.exists() or not any(out.iterdir())


def test_run_needs_a_root(tmp_path):
    result = CliRunner().invoke(main, ["run", "--config", "synth-derm-cpu", "--out", str(tmp_path)])
    assert result.exit_code != 0 and "--root" in result.output


def test_multilabel_dataset_through_an_existing_baseline_run(tmp_path):
    """synth-cxr (5 findings, multi-label, grayscale): a baseline trained by medimg-core (per-label BCE) is
    dissected with --opaque-run; the CBM is one logistic regression per finding."""
    from medimg_core.baseline import BaselineConfig, train_baseline
    from medimg_core.config import load_config

    data = generate("synth-cxr", n=60, out=tmp_path / "data", seed=0, size=32)
    cfg = load_config(BaselineConfig, None, {"data.root": str(data), "data.image_size": "32", "model.backbone":
                                             "test_resnet", "train.epochs": "1", "train.batch_size": "16",
                                             "train.num_workers": "0", "out": str(tmp_path / "base"),
                                             "bootstrap": "20", "device": "cpu", "train.progress": "false"})
    baseline = train_baseline(cfg)
    result = CliRunner().invoke(main, ["run", "--opaque-run", str(baseline), "--out", str(tmp_path / "runs"),
                                       "--config", "synth-derm-cpu", *TINY], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    folder = next((tmp_path / "runs").iterdir())
    assert "synth-cxr" in folder.name
    summary = json.loads((folder / "metrics.json").read_text())
    assert summary["stages"]["opaque"] == str(Path(baseline).resolve()) and "opaque" not in summary["wall_time_s"]
    assert "auroc_mean" in summary["cbm_test"] and "auroc_mean" in summary["opaque_test"]
    from neuron_concepts.train import load_cbm

    cbm = load_cbm(folder / "cbm")
    assert cbm.task == "multilabel" and cbm.W_.shape[0] == 5
    encode_cfg = (folder / "encode" / "config.yaml").read_text()
    assert "dataset: csv" in encode_cfg and "test_resnet" in encode_cfg  # the opaque run's data and model


def _as_written_before(pipeline_dir, copy):
    """A copy of a pipeline as neuron-concepts wrote it before its encode stage kept the features and its cbm
    stages a checkpoint: features.json points into the feature cache, no cbm folder has checkpoints/, and the
    opaque baseline's checkpoint has no stored preprocessing."""
    import shutil

    shutil.copytree(pipeline_dir, copy, symlinks=True)
    meta = json.loads((copy / "encode" / "features.json").read_text())
    for entry in meta["splits"].values():
        (copy / "encode" / entry.pop("file")).unlink()
        entry["path"] = entry.pop("cache_entry")
        del entry["ids"]
    (copy / "encode" / "features.json").write_text(json.dumps(meta))
    for checkpoints in copy.glob("cbm*/checkpoints"):
        shutil.rmtree(checkpoints)
    opaque = copy / json.loads((copy / "pipeline.json").read_text())["stages"]["opaque"]
    config = json.loads((opaque / "checkpoints" / "best" / "config.json").read_text())
    del config["preprocess"]
    (opaque / "checkpoints" / "best" / "config.json").write_text(json.dumps(config))
    return copy


def test_a_pipeline_written_before_still_loads_and_explains(pipeline, tmp_path):
    """Old-layout pipelines: the model is read from the stage folders (same predictions, same explanation,
    saved as a self-contained checkpoint); features come from the cache while it lasts, and once it is gone a
    stage says how to encode again instead of re-extracting behind the user's back."""
    from neuron_concepts import ConceptsFromNeurons
    from neuron_concepts.folders import load_features

    data, folder = pipeline
    old = _as_written_before(folder, tmp_path / "old")
    image = sorted((data / "images").iterdir())[0]
    new, loaded = ConceptsFromNeurons.from_pretrained(folder / "cbm"), ConceptsFromNeurons.from_pretrained(old / "cbm")
    assert loaded.run_.name == "cbm" and not (old / "cbm" / "checkpoints").exists()  # nothing written into it
    assert "layout" in loaded.checkpoint_config_ and loaded.preprocess_ == new.preprocess_
    np.testing.assert_array_equal(loaded.predict_proba(image), new.predict_proba(image))
    assert loaded.explain(image).to_text() == new.explain(image).to_text()
    assert type(ConceptsFromNeurons.from_pretrained(old)) is ConceptsFromNeurons  # the pipeline folder too
    saved = loaded.save_pretrained(tmp_path / "saved")
    assert "layout" not in json.loads((saved / "config.json").read_text()) and (saved / "model.safetensors").is_file()
    np.testing.assert_array_equal(ConceptsFromNeurons.from_pretrained(saved).predict_proba(image),
                                  new.predict_proba(image))
    result = CliRunner().invoke(main, ["explain", str(old / "cbm"), str(image), "--out", str(tmp_path / "e.png")])
    assert result.exit_code == 0 and "logit of" in result.output, result.output
    # the features: read from the cache entries the old folder names, while they exist ...
    old_feats, feats = load_features(old / "encode"), load_features(folder / "encode")
    for split in ("train", "val", "test"):
        assert torch.equal(old_feats[split]["features"], feats[split]["features"])
        assert old_feats[split]["ids"] == feats[split]["ids"]
    # ... and once one is gone, an error that says what to run (no silent re-extraction)
    entry = Path(json.loads((old / "encode" / "features.json").read_text())["splits"]["train"]["path"])
    moved = tmp_path / entry.name
    entry.rename(moved)
    try:
        with pytest.raises(OSError, match="neuron-concepts encode"):
            load_features(old / "encode")
        result = CliRunner().invoke(main, ["train-sae", str(old / "encode"), "--no-progress"])
        assert result.exit_code == 1 and "is gone or changed" in result.output, result.output
        assert sorted(p.name for p in old.glob("sae*")) == sorted(p.name for p in folder.glob("sae*"))  # no new folder
    finally:
        moved.rename(entry)


def test_sae_inputs_benchmark_on_a_tiny_pipeline(pipeline, tmp_path):
    """tools/bench/neuron_concepts_sae_inputs.py --quick on a copy of the tiny pipeline: one SAE per input through
    the CLI (the whitened one included), scored per concept; the result file has the documented structure and
    renders. Structure only: 3-epoch SAEs on 56 images mean nothing."""
    import shutil
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[3]
    script = root / "tools" / "bench" / "neuron_concepts_sae_inputs.py"
    if not script.is_file():
        pytest.skip("tools/bench is not in this checkout")
    _, folder = pipeline
    copy = tmp_path / "pipeline"
    shutil.copytree(folder, copy)
    result = CliRunner().invoke(main, ["train-sae", str(copy / "encode"), "--sae.whiten", "true",
                                       "--sae.standardize", "true", "--no-progress"])
    assert result.exit_code != 0 and "sae.whiten: exclusive with sae.standardize" in str(result.output) + str(
        result.exception)
    same = subprocess.run([sys.executable, str(script), "--pipelines", str(copy), str(folder), "--quick"],
                          capture_output=True, text=True)
    assert same.returncode != 0 and "the same seed (0)" in same.stderr, same.stderr[-2000:]
    proc = subprocess.run([sys.executable, str(script), "--pipelines", str(copy), "--quick", "--results-dir",
                           str(tmp_path / "bench"), "--result", "sae_inputs_tiny"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    out = json.loads((tmp_path / "bench" / "sae_inputs_tiny.json").read_text())
    concepts = out["concepts"]
    assert set(out["label_relevant"]) <= set(concepts) and len(concepts) > len(out["label_relevant"])
    assert list(out["variants"]) == ["published", "standardised", "whitened"] and out["quick"]
    (run,) = out["runs"]
    assert set(run["probe_test_auroc"]) == set(concepts)
    for label, v in run["variants"].items():
        sae_dir = copy / Path(v["sae_dir"]).name
        stage_cfg = (sae_dir / "config.yaml").read_text()
        assert f"whiten: {'true' if label == 'whitened' else 'false'}" in stage_cfg
        assert f"standardize: {'true' if label == 'standardised' else 'false'}" in stage_cfg
        assert (v["whitening"] is not None) == (label == "whitened")
        assert set(v["concepts"]) == set(concepts) and set(v["sae_test"]) == {"r2", "l0", "dead_fraction", "alive"}
        for row in v["concepts"].values():
            assert row["test_auroc"] is None or 0 <= row["test_auroc"] <= 1
    summary = out["summary"]["variants"]["whitened"]
    assert set(summary["test_auroc"]) == set(concepts) and summary["r2"]["n"] == 1
    sys.path.insert(0, str(script.parent))
    try:
        from render_neuron_concepts_sae import RENDERERS
    finally:
        sys.path.remove(str(script.parent))
    text = "\n".join(RENDERERS["neuron_concepts_sae_inputs"](out))
    assert "Quick run" in text and all(f"| {c}" in text for c in concepts) and "| whitened |" in text

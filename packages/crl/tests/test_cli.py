"""The `crl` command end to end on a tiny synthetic dataset (tiny timm model, 32 px, two epochs)."""

import json
import shutil

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import crl
from crl.cli import main
from medimg_core.synthetic import generate
from medimg_core.testing import write_image


def test_help_and_version():
    runner = CliRunner()
    result = runner.invoke(main, ["--help"])
    assert result.exit_code == 0 and "Concept Rule Learner" in result.output
    for command in ("train", "evaluate", "rules", "explain", "split"):
        assert command in result.output
    assert crl.__version__ in runner.invoke(main, ["--version"]).output


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("crl")
    data = generate("synth-derm", n=80, out=tmp / "data", seed=0, size=32)
    runner = CliRunner()
    result = runner.invoke(main, ["train", "--config", "synthetic-cpu", "--root", str(data), "--out", str(tmp / "runs"),
                                  "--device", "cpu", "--model.backbone", "test_resnet", "--data.image_size", "32",
                                  "--train.epochs", "2", "--bootstrap", "20", "--model.logic_layers", "[16, 16]",
                                  "--no-progress"],
                           catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return data, next((tmp / "runs").iterdir())


def test_train_writes_rules_metrics_and_checkpoints(trained):
    _, run = trained
    for name in ("config.yaml", "metrics.json", "metrics.jsonl", "rules.json", "rules.txt",
                 "checkpoints/best/model.safetensors", "checkpoints/best/rules.json", "checkpoints/best/rules.txt",
                 "figures/training_curves.png", "figures/confusion_test.png"):
        assert (run / name).is_file(), name
    metrics = json.loads((run / "metrics.json").read_text())
    assert {"count", "mean_length", "fidelity_test"} <= set(metrics["rules"])
    assert metrics["rules"]["fidelity_train"] == 1.0  # exact by construction on the patterns it was read from
    assert 0.0 <= metrics["rules"]["fidelity_test"] <= 1.0
    compact = metrics["rules"]["compact"]  # 6 concepts: an exact formula per class, exact on the training patterns
    assert compact["method"] == "exact" and [c["class"] for c in compact["classes"]] == ["benign", "malignant"]
    assert all(c["fidelity_train"] == 1.0 and 0.0 <= c["fidelity_test"] <= 1.0 for c in compact["classes"])
    assert f"malignant <=> {compact['classes'][1]['rule']}" in (run / "rules.txt").read_text()
    assert json.loads((run / "rules.json").read_text())["compact"] == compact
    assert len(metrics["test"]["accuracy_ci"]) == 2
    # the published concept metrics under their names, ours under names that say what they are
    assert {"concept_macro_f1", "concept_accuracy", "concept_with_positives", "concept_positive_f1_mean",
            "concept_accuracy_pooled", "concept_macro_f1/streaks"} <= set(metrics["test_concepts"])


def test_rules_explain_and_evaluate(trained, tmp_path):
    data, run = trained
    runner = CliRunner()
    result = runner.invoke(main, ["rules", str(run)])
    assert result.exit_code == 0 and "rules over 6 concepts" in result.output
    assert result.output == (run / "rules.txt").read_text() + "\n"  # the printed text is the saved list
    assert runner.invoke(main, ["rules", str(run / "checkpoints" / "best")]).output == result.output
    as_json = runner.invoke(main, ["rules", str(run), "--json"])
    assert as_json.exit_code == 0 and as_json.output == (run / "rules.json").read_text() + "\n"
    image = next((data / "images").iterdir())
    result = runner.invoke(main, ["explain", str(run), str(image), "--out", str(tmp_path / "e.png")])
    assert result.exit_code == 0, result.output
    assert "prediction:" in result.output and (tmp_path / "e.png").stat().st_size > 1000
    assert "the network's prediction:" in result.output and "compact rule: " in result.output
    result = runner.invoke(main, ["evaluate", str(run), "--dataset", "csv", "--root", str(data)])
    assert result.exit_code == 0, result.output
    report = json.loads((run / "eval-csv-test.json").read_text())
    c = report["concepts"]
    assert f"concepts, as published (mean over the {int(c['concept_with_positives'])} concepts" in result.output
    assert f"macro-F1 {c['concept_macro_f1']:.4f}" in result.output
    assert f"positive-class F1 mean {c['concept_positive_f1_mean']:.4f}" in result.output
    # the compact rules' fidelity on the evaluated split: on the run's own test split, what training measured
    saved = json.loads((run / "rules.json").read_text())["compact"]
    compact = report["compact"]
    assert compact["method"] == saved["method"] == "exact" and not compact["computed_now"]
    assert compact["fidelity_on_split"]["per_class"] == {e["class"]: e["fidelity_test"] for e in saved["classes"]}
    assert "compact rules" in result.output


def test_evaluate_condenses_the_rules_of_a_run_from_before_compact_rules(trained, tmp_path):
    data, run = trained
    old = shutil.copytree(run, tmp_path / "old")
    for rules_file in (old / "rules.json", old / "checkpoints" / "best" / "rules.json"):
        payload = json.loads(rules_file.read_text())
        saved = payload.pop("compact")
        rules_file.write_text(json.dumps(payload))
    result = CliRunner().invoke(main, ["evaluate", str(old), "--dataset", "csv", "--root", str(data), "--no-progress"])
    assert result.exit_code == 0, result.output
    compact = json.loads((old / "eval-csv-test.json").read_text())["compact"]
    assert compact["computed_now"] and [e["rule"] for e in compact["classes"]] == [e["rule"] for e in saved["classes"]]


def test_run_folders_of_the_older_layout(trained, tmp_path):
    """An end2end run folder as written before the checkpoint contract (the rules in the run folder only,
    config.json without preprocess/format/versions): `crl rules` and `crl explain` read it as before."""
    data, run = trained
    old = shutil.copytree(run, tmp_path / "old")
    for name in ("best", "last"):
        folder = old / "checkpoints" / name
        for rules in ("rules.json", "rules.txt"):
            (folder / rules).unlink(missing_ok=True)
        config = json.loads((folder / "config.json").read_text())
        keep = ("kind", "config", "card", "in_chans", "in_features", "medimg_core_version", "torch_version")
        (folder / "config.json").write_text(json.dumps({k: config[k] for k in keep}))
    runner = CliRunner()
    expected = runner.invoke(main, ["rules", str(run)]).output
    image = next((data / "images").iterdir())
    explained = runner.invoke(main, ["explain", str(run), str(image), "--out", str(tmp_path / "new.png")])
    assert explained.exit_code == 0, explained.output
    for folder in (old, old / "checkpoints" / "best"):
        result = runner.invoke(main, ["rules", str(folder)])
        assert result.exit_code == 0 and result.output == expected, result.output
        result = runner.invoke(main, ["explain", str(folder), str(image), "--out", str(tmp_path / "old.png")])
        assert result.exit_code == 0, result.output
        assert result.output.rsplit("wrote", 1)[0] == explained.output.rsplit("wrote", 1)[0]
    (old / "rules.json").unlink()
    result = runner.invoke(main, ["rules", str(old)])
    assert result.exit_code == 1 and "no rules.json in this checkpoint folder or its run folder" in result.output
    result = runner.invoke(main, ["rules", str(tmp_path)])
    assert result.exit_code == 1 and str(tmp_path) in result.output and "Traceback" not in result.output


def test_train_refuses_data_without_concepts(tmp_path):
    for c in ("a", "b"):
        for i in range(6):
            write_image(tmp_path / "d" / c / f"{i}.png", size=8)
    result = CliRunner().invoke(main, ["train", "--config", "synthetic-cpu", "--root", str(tmp_path / "d"),
                                       "--out", str(tmp_path / "runs"), "--data.options.n_folds", "3"])
    assert result.exit_code != 0 and "needs concept annotations" in str(result.exception or result.output)


def test_split_writes_once(tmp_path):
    data = generate("synth-derm", n=30, out=tmp_path / "d", seed=0, size=32)
    runner = CliRunner()
    args = ["split", "--dataset", "csv", "--root", str(data), "--out", str(tmp_path / "folds.json"), "--n-folds", "3"]
    # the synthetic set has its own split column, so the generic loader needs no folds: use a copy without it
    import pandas as pd

    frame = pd.read_csv(data / "labels.csv")
    frame.drop(columns=["split"]).to_csv(data / "nosplit.csv", index=False)
    descriptor = json.loads((data / "dataset.json").read_text())
    descriptor.update(csv="nosplit.csv", split_column=None)
    (data / "dataset.json").write_text(json.dumps(descriptor))
    result = runner.invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "30 images in 3 folds" in result.output
    result = runner.invoke(main, args)
    assert result.exit_code != 0 and "never overwritten" in result.output


def test_skin_folds_then_ddi_out_of_distribution(tmp_path):
    """The published skin protocol on fixtures: a fold file, training on Fitzpatrick17k + SkinCon
    (48 concepts), then `crl evaluate` on DDI with its SkinCon concepts."""
    from medimg_core.testing import write_ddi_fixture, write_fitzpatrick17k_skincon_fixture

    skin = write_fitzpatrick17k_skincon_fixture(tmp_path / "fitz", n_benign=15, n_malignant=15, n_missing_images=0)
    ddi = write_ddi_fixture(tmp_path / "ddi")
    runner = CliRunner()
    folds = tmp_path / "folds.json"
    result = runner.invoke(main, ["split", "--dataset", "fitzpatrick17k-skincon", "--root", str(skin),
                                  "--out", str(folds)])
    assert result.exit_code == 0, result.output
    result = runner.invoke(main, ["train", "--config", "skin", "--root", str(skin), "--out", str(tmp_path / "runs"),
                                  "--device", "cpu", "--model.backbone", "test_resnet", "--model.pretrained", "false",
                                  "--data.image_size", "32", "--train.epochs", "1", "--train.batch_size", "8",
                                  "--bootstrap", "20", "--model.logic_layers", "[8, 8]",
                                  "--data.options.split_file", str(folds), "--data.options.fold", "1"],
                           catch_exceptions=False)
    assert result.exit_code == 0, result.output
    run = next((tmp_path / "runs").iterdir())
    assert "fold1" in run.name
    # the skin config's protocol: test = fold 1, train + val = the 4 other folds, val carved and recorded
    fold_of = json.loads(folds.read_text())["folds"]
    assert (tmp_path / "folds-fold1-val0.1.json").is_file()
    sizes = json.loads((run / "metrics.json").read_text())["sizes"]
    assert sizes["test"] == sum(f == 1 for f in fold_of.values()) == 6
    assert sizes["train"] + sizes["val"] == 24 and 1 <= sizes["val"] <= 4  # 30 images: 4 of 5 folds, ~10 % val
    preprocess = json.loads((run / "checkpoints" / "best" / "config.json").read_text())["preprocess"]
    assert preprocess["eval_resize"] == "short-side-center-crop"  # the official evaluation transform, saved
    result = runner.invoke(main, ["evaluate", str(run), "--dataset", "ddi", "--root", str(ddi)])
    assert result.exit_code == 0, result.output
    report = json.loads((run / "eval-ddi-test.json").read_text())
    # the paper's DDI test set (SkinCon-annotated, not flagged) under its name, the whole set beside it
    assert report["subset"] == "skincon-annotated" and report["n"] == 10 and "as published" in report["protocol"]
    assert "concepts" in report and "accuracy" in report["test"]
    assert report["all_images"]["subset"] == "all" and report["all_images"]["n"] == 12
    whole = dict(report["all_images"]["concepts"])  # flagged / unannotated images have no concepts: same scores
    assert whole.pop("concept_annotated_fraction") == pytest.approx(10 / 12)
    assert report["concepts"].pop("concept_annotated_fraction") == 1.0 and whole == report["concepts"]
    assert "subset skincon-annotated (as published" in result.output and "all images (ours" in result.output
    result = runner.invoke(main, ["evaluate", str(run), "--dataset", "ddi", "--root", str(ddi), "-o", "subset=all",
                                  "--out", str(tmp_path / "all.json")])
    assert result.exit_code == 0, result.output
    alone = json.loads((tmp_path / "all.json").read_text())
    assert alone["subset"] == "all" and alone["n"] == 12 and "all_images" not in alone
    assert alone["test"] == report["all_images"]["test"]


def test_training_on_cached_frozen_features(tmp_path):
    data = generate("synth-derm", n=60, out=tmp_path / "data", seed=1, size=32)
    args = ["train", "--config", "synthetic-cpu", "--root", str(data), "--out", str(tmp_path / "runs"),
            "--device", "cpu", "--model.backbone", "test_resnet", "--data.image_size", "32", "--mode", "features",
            "--train.epochs", "3", "--train.batch_size", "8", "--bootstrap", "20", "--model.logic_layers", "[8, 8]"]
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    run = next((tmp_path / "runs").iterdir())
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["mode"] == "features" and metrics["epochs_run"] == 3
    cache = list((tmp_path / "medimg-home" / "features").rglob("*.safetensors"))
    assert len(cache) == 3  # train, val and test features were cached once
    for checkpoint in ("best", "last"):  # every checkpoint folder holds the frozen backbone it reads features of
        assert (run / "checkpoints" / checkpoint / "frozen_backbone.safetensors").is_file()
    # the reloaded model (frozen backbone + CRL) predicts the test split exactly as during training
    result = CliRunner().invoke(main, ["evaluate", str(run), "--dataset", "csv", "--root", str(data)])
    assert result.exit_code == 0, result.output
    again = json.loads((run / "eval-csv-test.json").read_text())
    assert again["test"]["accuracy"] == metrics["test"]["accuracy"]
    assert again["test"]["auroc"] == pytest.approx(metrics["test"]["auroc"], abs=1e-6)  # same scores
    image = next((data / "images").iterdir())
    result = CliRunner().invoke(main, ["explain", str(run), str(image), "--out", str(tmp_path / "e.png")])
    assert result.exit_code == 0, result.output


def test_intervene_writes_curves_for_crl_and_a_bottleneck(trained, tmp_path):
    _, run = trained
    result = CliRunner().invoke(main, ["intervene", str(run), "--orders", "2", "--out", str(tmp_path), "--no-progress"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "| CRL | random |" in result.output and "| logistic-regression bottleneck | uncertainty |" in result.output
    report = json.loads((tmp_path / "interventions-test.json").read_text())
    assert report["concepts"] and set(report["curves"]) == {"CRL", "logistic-regression bottleneck"}
    # the bottleneck's own test metrics: its accuracy is the k = 0 point of its curves
    bottleneck = report["bottleneck_metrics"]
    assert bottleneck["accuracy"] == pytest.approx(report["curves"]["logistic-regression bottleneck"]["random"]["accuracy"][0])
    assert bottleneck["accuracy_ci"][0] <= bottleneck["accuracy"] <= bottleneck["accuracy_ci"][1]
    for counts in report["predicted_class_counts"].values():
        assert len(counts) == 2 and sum(counts) == report["n"]
    for by_order in report["curves"].values():
        for curve in by_order.values():
            assert curve["k"] == list(range(7)) and all(0 <= a <= 1 for a in curve["accuracy"])
    # with every concept set to its annotation, CRL's logic layers read exactly the annotated concepts
    from crl.api import ConceptRuleLearner
    from medimg_core.data import load_dataset

    estimator = ConceptRuleLearner.from_pretrained(run)
    test = load_dataset("csv", trained[0], "test")
    truth = np.stack([test[i]["concepts"].numpy() for i in range(len(test))])
    targets = np.array([int(test[i]["target"]) for i in range(len(test))])

    expected = (estimator.model_.predict_from_concepts(torch.from_numpy(truth > 0.5)).argmax(1).numpy() == targets)
    assert report["curves"]["CRL"]["random"]["accuracy"][-1] == pytest.approx(float(expected.mean()))
    assert (tmp_path / "interventions-test.png").stat().st_size > 1000

"""The `cipl` command end to end on tiny synthetic data (timm's test_resnet, 32 px, two epochs)."""

import json

import pytest
from click.testing import CliRunner

import cipl
from cipl.cli import CONFIGS, main
from medimg_core.synthetic import generate

TINY = ["--device", "cpu", "--model.backbone", "test_resnet", "--model.output_stride", "8", "--data.image_size", "32",
        "--train.epochs", "2", "--train.batch_size", "8", "--model.prototypes_per_class", "2",
        "--model.prototype_dim", "16", "--model.reduce_dim", "16", "--schedule.warm_epochs", "1",
        "--schedule.push_epochs", "[1, 2]", "--schedule.last_layer_epochs", "1", "--bootstrap", "20"]


def test_help_and_version():
    runner = CliRunner()
    result = runner.invoke(main, ["--help"])
    assert result.exit_code == 0, result.output
    for command in ("train", "push", "evaluate", "reason", "gallery"):
        assert command in result.output
    assert cipl.__version__ in runner.invoke(main, ["--version"]).output
    for command in ("train", "push", "evaluate", "reason", "gallery"):
        result = runner.invoke(main, [command, "--help"])
        assert result.exit_code == 0 and "--device" in result.output and "--seed" in result.output


def test_depends_on_core():
    import medimg_core

    assert medimg_core.__version__


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cipl")
    data = generate("synth-cxr", n=90, out=tmp / "data", seed=0, size=32)
    result = CliRunner().invoke(main, ["train", "--config", "synth-cxr-cpu", "--root", str(data),
                                       "--out", str(tmp / "runs"), *TINY], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return data, next((tmp / "runs").iterdir())


def test_train_writes_metrics_prototypes_and_figures(trained):
    _, run = trained
    for name in ("config.yaml", "metrics.json", "metrics.jsonl", "checkpoints/best/model.safetensors",
                 "figures/training_curves.png", "prototypes/epoch-001/prototypes.json",
                 "prototypes/epoch-002/0000_overlay.png"):
        assert (run / name).exists(), name
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["monitor"] == "val/pushed_auroc_mean"
    assert metrics["classes"][-1] == "No Finding" and len(metrics["outputs"]) == 5
    assert {"auroc_mean", "auroc_mean_ci", "f1_val_threshold_mean", "f1_val_threshold_mean_ci", "f1_test_tuned_mean",
            "val_thresholds", "accuracy"} <= set(metrics["test"])
    assert "f1_best_mean" not in metrics["test"] and "f1_test_tuned_mean_ci" not in metrics["test"]
    assert "auroc/nodule" in metrics["test"]
    loc = metrics["test_localisation"]
    assert "all_present/pointing_game" in loc and 0 <= loc["all_present/iou_mean"] <= 1
    # the selected checkpoint is a pushed one, and its push folder is recorded
    assert metrics["best_epoch"] in (1, 2) and metrics["prototypes"].startswith("prototypes/epoch-")
    index = json.loads((run / "checkpoints" / "best" / "push_index.json").read_text())
    assert index["directory"] == metrics["prototypes"] and index["epoch"] == metrics["best_epoch"]
    # where the push put each finding's prototypes (No Finding has no mask: 5 classes x 2 prototypes)
    placement = metrics["prototype_placement"]
    assert sum(placement[f"n/{name}"] for name in metrics["outputs"]) == 10
    assert 0 <= placement["on_finding"] <= 1
    assert len(list((run / "figures" / "gallery").glob("*.png"))) == 6  # 5 findings + No Finding
    history = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert "train/cross" not in history[0] and "train/cross" in history[1]  # warm-up, then pairs
    assert "val/pushed_auroc_mean" in history[0] and "push/mean_distance_moved" in history[1]


def test_evaluate_reason_gallery_push(trained, tmp_path):
    data, run = trained
    runner = CliRunner()
    result = runner.invoke(main, ["evaluate", str(run), "--bootstrap", "20"])
    assert result.exit_code == 0, result.output
    report = json.loads((run / "eval-csv-test.json").read_text())
    metrics = json.loads((run / "metrics.json").read_text())
    assert report["test"]["auroc_mean"] == pytest.approx(metrics["test"]["auroc_mean"], abs=1e-6)
    # the F1 thresholds come from the run's own validation split, as at the end of training
    assert report["test"]["val_thresholds"] == pytest.approx(metrics["test"]["val_thresholds"], abs=1e-6)
    assert report["test"]["f1_val_threshold_mean"] == pytest.approx(metrics["test"]["f1_val_threshold_mean"], abs=1e-6)
    assert "mean F1 at thresholds chosen on validation" in result.output
    assert "localisation" in report
    assert report["prototype_placement"] == metrics["prototype_placement"]
    image = sorted((data / "images").iterdir())[0]
    result = runner.invoke(main, ["reason", str(run), str(image), "--top-k", "2", "--out", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    assert "prototype" in result.output and "similarity" in result.output and "class map peak at" in result.output
    assert (tmp_path / "r" / "summary.txt").is_file() and list((tmp_path / "r").glob("reason-*.png"))
    # shift-and-stitch maps every 4 px (the stride is 8): same classification, a separate report
    result = runner.invoke(main, ["evaluate", str(run), "--bootstrap", "20", "--map-step", "4"])
    assert result.exit_code == 0, result.output
    dense = json.loads((run / "eval-csv-test-step4.json").read_text())
    assert dense["test"]["auroc_mean"] == pytest.approx(report["test"]["auroc_mean"], abs=1e-9)
    assert dense["localisation"]["map_step"] == 4 and dense["localisation"]["n"] == report["localisation"]["n"]
    result = runner.invoke(main, ["reason", str(run), str(image), "--map-step", "2", "--out", str(tmp_path / "r2")])
    assert result.exit_code == 0, result.output
    result = runner.invoke(main, ["evaluate", str(run), "--bootstrap", "20", "--map-step", "3"])
    assert result.exit_code != 0 and "divide the backbone stride 8" in result.output
    result = runner.invoke(main, ["gallery", str(run), "--out", str(tmp_path / "g")])
    assert result.exit_code == 0, result.output
    assert len(list((tmp_path / "g").glob("*.png"))) == 7  # 6 classes + overview
    result = runner.invoke(main, ["push", str(run)])
    assert result.exit_code == 0, result.output
    assert (run / "checkpoints" / "pushed" / "model.safetensors").is_file()
    index = json.loads((run / "checkpoints" / "pushed" / "push_index.json").read_text())
    assert index["directory"] == "prototypes/push-best-train" and len(index["prototypes"]) == 12
    # the best checkpoint was already pushed: pushing again moves nothing
    assert "mean squared distance moved 0.0000" in result.output
    result = runner.invoke(main, ["evaluate", str(run), "--checkpoint", "pushed", "--bootstrap", "20"])
    assert result.exit_code == 0, result.output


def test_train_refuses_more_prototypes_than_images(tmp_path):
    data = generate("synth-cxr", n=30, out=tmp_path / "d", seed=0, size=32)
    result = CliRunner().invoke(main, ["train", "--config", "synth-cxr-cpu", "--root", str(data),
                                       "--out", str(tmp_path / "runs"), *TINY, "--model.prototypes_per_class", "40"])
    assert result.exit_code != 0
    assert "prototypes_per_class=40" in result.output and "fewer training images" in result.output
    result = CliRunner().invoke(main, ["train", "--config", "synth-cxr-cpu", "--root", str(data),
                                       "--out", str(tmp_path / "runs"), *TINY, "--schedule.push_epochs", "[5]"])
    assert result.exit_code != 0 and "outside epochs 1..2" in result.output


def test_single_label_medmnist(tmp_path):
    from medimg_core.testing import write_medmnist_fixture

    npz = write_medmnist_fixture(tmp_path / "pneumoniamnist.npz", channels=1, num_classes=2, n=40)
    result = CliRunner().invoke(main, ["train", "--config", "medmnist-cpu", "--dataset", "pneumoniamnist",
                                       "--root", str(npz), "--out", str(tmp_path / "runs"), *TINY],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    run = next((tmp_path / "runs").iterdir())
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["task"] == "binary" and metrics["classes"] == metrics["outputs"]
    assert "auroc" in metrics["test"] and "test_localisation" not in metrics


def test_resume_reloads_the_saved_config(trained):
    _, run = trained
    before = json.loads((run / "metrics.json").read_text())
    result = CliRunner().invoke(main, ["train", "--resume", str(run)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    after = json.loads((run / "metrics.json").read_text())
    assert after["epochs_run"] == before["epochs_run"] == 2  # nothing left to train
    assert after["test"]["auroc_mean"] == pytest.approx(before["test"]["auroc_mean"], abs=1e-6)
    result = CliRunner().invoke(main, ["train", "--resume", str(run), "--seed", "3"])
    assert result.exit_code != 0 and "drop the other options" in result.output


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_shipped_config_loads(path):
    from cipl.train import CIPLConfig
    from medimg_core.config import load_config

    cfg = load_config(CIPLConfig, path)
    assert cfg.data.image_size >= 32 and cfg.train.epochs >= 1

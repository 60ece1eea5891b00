"""`medimg train-baseline` end to end on a tiny dataset with a tiny timm model."""

import json

import numpy as np
import torch
from click.testing import CliRunner

from medimg_core.baseline import load_baseline
from medimg_core.cli import main
from medimg_core.testing import write_image


def _folder_dataset(root, n_per_class=12):
    # class "bright" images are light, "dark" ones dark: learnable in two epochs
    for c, value in (("bright", 220), ("dark", 30)):
        for i in range(n_per_class):
            write_image(root / c / f"{c}{i}.png", size=16, value=value + (i % 5))
    return root


def test_train_baseline_writes_a_complete_run_folder_and_resumes(tmp_path):
    data = _folder_dataset(tmp_path / "data")
    runner = CliRunner()
    args = ["train-baseline", "--dataset", "csv", "--root", str(data), "--backbone", "test_resnet",
            "--image-size", "16", "--epochs", "2", "--batch-size", "4", "--lr", "1e-2", "--device", "cpu",
            "--seed", "1", "--out", str(tmp_path / "runs"), "--data.options.n_folds", "4", "--bootstrap", "50",
            "--optim.scheduler", "onecycle"]
    result = runner.invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    run_dir = next((tmp_path / "runs").iterdir())
    for name in ("config.yaml", "metrics.jsonl", "metrics.json", "log.txt", "checkpoints/best/model.safetensors",
                 "checkpoints/best/config.json", "checkpoints/last/state.safetensors", "checkpoints/best/README.md",
                 "figures/training_curves.png", "figures/confusion_test.png"):
        assert (run_dir / name).is_file(), name
    metrics = json.loads((run_dir / "metrics.json").read_text())
    test = metrics["test"]
    assert 0 <= test["accuracy"] <= 1 and len(test["accuracy_ci"]) == 2
    assert metrics["sizes"] == {"train": 12, "val": 6, "test": 6}
    assert metrics["wall_time_s"] > 0 and metrics["peak_memory_mb"] > 0
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == 2
    model, config = load_baseline(run_dir)
    assert config["card"]["class_names"] == ["bright", "dark"]
    assert model(torch.zeros(1, 3, 16, 16)).shape == (1, 2)
    # a second run never overwrites the first
    assert runner.invoke(main, args).exit_code == 0
    assert len(list((tmp_path / "runs").iterdir())) == 2
    # resuming a finished run re-evaluates without training more
    resumed = runner.invoke(main, ["train-baseline", "--resume", str(run_dir)], catch_exceptions=False)
    assert resumed.exit_code == 0, resumed.output
    again = json.loads((run_dir / "metrics.json").read_text())
    assert np.isclose(again["test"]["accuracy"], test["accuracy"]) and again["epochs_run"] == 2
    # provenance: the command, versions and source commit of the run, and one record per resume
    provenance = json.loads((run_dir / "provenance.json").read_text())
    assert provenance["versions"]["medimg-core"] and provenance["versions"]["torch"] != "absent"
    source = provenance["source"]
    assert (isinstance(source["commit"], str) and len(source["commit"]) == 40) or source["why"]
    assert len(provenance["resumes"]) == 1 and provenance["resumes"][0]["time"] >= provenance["time"]


def test_train_baseline_rejects_bad_options(tmp_path):
    runner = CliRunner()
    result = runner.invoke(main, ["train-baseline", "--dataset", "csv", "--root", str(tmp_path),
                                  "--optim.lrr", "1"])
    assert result.exit_code == 2 and "did you mean 'optim.lr'" in result.output
    result = runner.invoke(main, ["train-baseline", "--dataset", "csv"])
    assert result.exit_code == 2 and "--root" in result.output
    result = runner.invoke(main, ["train-baseline", "--dataset", "csv", "--root", str(tmp_path)])
    assert result.exit_code == 1 and "no CSV given and no class folders" in result.output

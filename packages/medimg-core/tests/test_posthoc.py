"""Post-hoc explainers (medimg_core.posthoc): hand-computed maps of models whose logit is known, shapes on timm /
medimg / nn.Sequential models, model state, errors, and the optional-extra contract."""

import importlib.util
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

from medimg_core.explain import Explanation
from medimg_core.posthoc import METHODS, attribute, default_cam_layer, explain, occlusion_defaults

HAS_CAPTUM = importlib.util.find_spec("captum") is not None
HAS_GRADCAM = importlib.util.find_spec("pytorch_grad_cam") is not None
captum_only = pytest.mark.skipif(not HAS_CAPTUM, reason="captum is not installed (medimg-core[posthoc])")
gradcam_only = pytest.mark.skipif(not HAS_GRADCAM, reason="grad-cam is not installed (medimg-core[posthoc])")
both = pytest.mark.skipif(not (HAS_CAPTUM and HAS_GRADCAM), reason="captum and grad-cam are needed")
CAMS = [m for m in METHODS if METHODS[m].kind == "cam"]


def linear_model(channels: int = 3, size: int = 8, classes: int = 2, seed: int = 0) -> tuple[nn.Module, torch.Tensor]:
    """logits = W flatten(x) + b, with W (K, C*H*W) returned as (K, C, H, W)."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(channels * size * size, classes))
    with torch.no_grad():
        model[1].bias.copy_(torch.tensor([0.7, -1.3])[:classes])
    return model, model[1].weight.detach().reshape(classes, channels, size, size).clone()


def tiny_cnn(channels: int = 3, classes: int = 3) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(channels, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2, padding=1),
                         nn.BatchNorm2d(8), nn.ReLU(), nn.Dropout(0.5), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(8, classes))


# --------------------------------------------------------------------------------------- hand-computed cases


@captum_only
def test_saliency_of_a_linear_model_is_its_weights():
    model, w = linear_model()
    x = torch.randn(2, 3, 8, 8)
    # the gradient of logit t is W[t] for every image; the reductions over the 3 channels by hand
    np.testing.assert_allclose(attribute(model, x, 1, method="saliency"), w[1].abs().sum(0).expand(2, 8, 8).numpy(),
                               rtol=1e-6)
    np.testing.assert_allclose(attribute(model, x, [0, 1], method="saliency", reduce="sum"),
                               torch.stack([w[0].sum(0), w[1].sum(0)]).numpy(), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(attribute(model, x, 0, method="saliency", reduce="abs_max")[0],
                               w[0].abs().amax(0).numpy(), rtol=1e-6)


@captum_only
def test_integrated_gradients_of_a_linear_model_are_exact_and_complete():
    model, w = linear_model()
    x = torch.randn(2, 3, 8, 8)
    maps = attribute(model, x, [0, 1], method="integrated_gradients", reduce="sum", n_steps=5)
    expected = torch.stack([(x[0] * w[0]).sum(0), (x[1] * w[1]).sum(0)]).numpy()  # (x - 0) * W, channel-summed
    np.testing.assert_allclose(maps, expected, rtol=1e-4, atol=1e-6)
    # completeness: the signed map sums to f(x) - f(baseline) for the target logit (the bias cancels)
    with torch.no_grad():
        gap = (model(x) - model(torch.zeros_like(x)))[[0, 1], [0, 1]].numpy()
    np.testing.assert_allclose(maps.sum(axis=(1, 2)), gap, rtol=1e-4)
    # the default |.| summed over channels, and a constant and a blurred baseline: (x - b) * W
    np.testing.assert_allclose(attribute(model, x, 1, method="integrated_gradients", n_steps=3)[1],
                               (x[1] * w[1]).abs().sum(0).numpy(), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(attribute(model, x, 1, method="integrated_gradients", baseline=0.5, reduce="sum",
                                         n_steps=3)[0], ((x[0] - 0.5) * w[1]).sum(0).numpy(), rtol=1e-4, atol=1e-5)
    from torchvision.transforms.functional import gaussian_blur

    blurred = gaussian_blur(x, [7, 7], [1.0, 1.0])  # sigma 1 px: +-3 sigma, 7 px
    np.testing.assert_allclose(attribute(model, x, 0, method="integrated_gradients", baseline="blur", blur_sigma=1.0,
                                         reduce="sum", n_steps=3), ((x - blurred) * w[0]).sum(1).numpy(),
                               rtol=1e-4, atol=1e-5)


class PatchReader(nn.Module):
    """logit 0 = sum of x over rows 8-15, columns 8-15; logit 1 = its negative."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x):
        s = self.scale * x[:, :, 8:16, 8:16].sum(dim=(1, 2, 3))
        return torch.stack([s, -s], dim=1)


@captum_only
def test_occlusion_of_a_model_reading_one_patch():
    x = torch.rand(2, 3, 32, 32) + 0.1
    model = PatchReader()
    # windows of 8 at stride 8 tile the image and one of them is the patch: inside it every pixel gets
    # f(x) - f(patch zeroed) = the patch's sum; everywhere else 0
    maps = attribute(model, x, 0, method="occlusion", window=8, stride=8)
    patch_sum = x[:, :, 8:16, 8:16].sum(dim=(1, 2, 3)).numpy()
    expected = np.zeros((2, 32, 32), np.float32)
    expected[:, 8:16, 8:16] = patch_sum[:, None, None]
    np.testing.assert_allclose(maps, expected, rtol=1e-5)
    # the defaults at 32 px (window 4, stride 2): only windows starting at 6..14 touch the patch, so every pixel
    # outside rows/columns 6-17 is exactly 0, and the patch itself is positive
    assert occlusion_defaults(32, 32) == (4, 2)
    maps = attribute(model, x, 0, method="occlusion")
    outside = np.ones((32, 32), bool)
    outside[6:18, 6:18] = False
    assert np.all(maps[:, outside] == 0)
    assert np.all(maps[:, 8:16, 8:16] > 0)
    # for the negated logit the signed map flips
    np.testing.assert_allclose(attribute(model, x, 1, method="occlusion"), -maps, rtol=1e-5, atol=1e-6)


def quadrant_model() -> nn.Sequential:
    """Channel 0 detects bright 4x4 cells, channel 1 dark ones (8x8 feature map at 32 px); logit k reads channel k."""
    conv = nn.Conv2d(1, 2, 4, stride=4, bias=False)
    head = nn.Linear(2, 2)
    with torch.no_grad():
        conv.weight.copy_(torch.stack([torch.full((1, 4, 4), 1 / 16), torch.full((1, 4, 4), -1 / 16)]))
        head.weight.copy_(torch.eye(2))
        head.bias.zero_()
    return nn.Sequential(conv, nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), head)


@gradcam_only
@pytest.mark.parametrize("method", CAMS)
def test_cams_peak_in_the_quadrant_holding_the_class_evidence(method):
    x = torch.zeros(1, 1, 32, 32)
    x[0, 0, 2:12, 3:13] = 1.0  # bright: class 0's evidence, top left
    x[0, 0, 20:30, 18:28] = -1.0  # dark: class 1's evidence, bottom right
    model = quadrant_model()
    assert default_cam_layer(model)[0] == "0"
    for target, (rows, cols) in ((0, (slice(0, 16), slice(0, 16))), (1, (slice(16, 32), slice(16, 32)))):
        cam = attribute(model, x, target, method=method)[0]
        y, x_ = np.unravel_index(np.argmax(cam), cam.shape)
        assert rows.start <= y < rows.stop and cols.start <= x_ < cols.stop, (method, target, y, x_)
        inside = np.zeros((32, 32), bool)
        inside[rows, cols] = True
        assert cam[inside].mean() > 10 * cam[~inside].mean()


# --------------------------------------------------------------------------------------- shapes and models


def _all_maps(model, x, **kw):
    return {m: attribute(model, x, method=m, **({"n_steps": 4} if m == "integrated_gradients" else {}), **kw)
            for m in METHODS}


@both
def test_every_method_on_a_timm_resnet_and_a_sequential_cnn():
    import timm

    x = torch.randn(2, 3, 32, 32)
    resnet = timm.create_model("resnet18", pretrained=False, num_classes=2)
    assert default_cam_layer(resnet)[0] == "layer4"
    cnn = tiny_cnn()
    assert default_cam_layer(cnn)[0] == "2"  # the last Conv2d
    for model, n in ((resnet, 1), (cnn, 2)):
        for method, maps in _all_maps(model, x[:n]).items():
            assert maps.shape == (n, 32, 32) and maps.dtype == np.float32 and np.isfinite(maps).all(), method
    # deterministic for a fixed input, and CAMs in [0, 1] as pytorch-grad-cam scales them
    again = _all_maps(cnn, x)
    for method, maps in _all_maps(cnn, x).items():
        np.testing.assert_array_equal(maps, again[method], err_msg=method)
        if method in CAMS:
            assert maps.min() >= 0 and maps.max() <= 1 + 1e-6 and maps.max() > 0.99, method


@both
def test_medimg_image_classifier_default_layer_and_target_none():
    from medimg_core.baseline import ImageClassifier
    from medimg_core.testing import tiny_backbone

    model = ImageClassifier(tiny_backbone("test_resnet"), 3)
    name, layer = default_cam_layer(model)
    assert name.startswith("backbone.model.") and model.get_submodule(name) is layer
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        predicted = model.eval()(x).argmax(1).tolist()
    for method in ("gradcam", "integrated_gradients"):
        opts = {"n_steps": 4} if method == "integrated_gradients" else {}
        none = attribute(model, x, None, method=method, **opts)
        np.testing.assert_array_equal(none, attribute(model, x, predicted, method=method, **opts))
        assert none.shape == (3, 32, 32)
    # a layer by name or by module gives the same CAM
    np.testing.assert_array_equal(attribute(model, x, 0, layer=name), attribute(model, x, 0, layer=layer))


@gradcam_only
def test_a_vit_layer_gets_its_tokens_laid_on_the_patch_grid():
    from medimg_core.baseline import ImageClassifier
    from medimg_core.posthoc import token_reshape
    from medimg_core.testing import tiny_backbone

    model = ImageClassifier(tiny_backbone("test_vit"), 2)
    x = torch.randn(2, 3, 32, 32)
    maps = attribute(model, x, 1, method="gradcam")
    assert maps.shape == (2, 32, 32) and np.isfinite(maps).all()
    tokens = torch.arange(2 * 9 * 4, dtype=torch.float32).reshape(2, 9, 4)  # one class token + a 2 x 4 grid
    grid = token_reshape(1, (16, 32))(tokens)
    assert grid.shape == (2, 4, 2, 4) and torch.equal(grid[0, :, 1, 0], tokens[0, 5])
    with pytest.raises(ValueError, match="cannot lay 7 patch tokens"):
        token_reshape(2, (32, 32))(tokens)


@captum_only
def test_target_changes_the_map_and_an_int_applies_to_every_image():
    model, _ = linear_model()
    x = torch.randn(2, 3, 8, 8)
    a = attribute(model, x, 0, method="saliency")
    b = attribute(model, x, 1, method="saliency")
    assert not np.allclose(a, b)
    np.testing.assert_array_equal(attribute(model, x, [0, 1], method="saliency"), np.stack([a[0], b[1]]))
    np.testing.assert_array_equal(attribute(model, x, torch.tensor([0, 1]), method="saliency"), np.stack([a[0], b[1]]))


@both
@pytest.mark.parametrize("method", ["gradcam", "saliency", "integrated_gradients", "occlusion"])
def test_training_flag_and_parameter_gradients_are_restored(method):
    model = tiny_cnn()
    x = torch.randn(2, 3, 16, 16)
    model.train()
    model(x).sum().backward()  # gradients from a training step the explainer must leave alone
    before = {n: p.grad.clone() for n, p in model.named_parameters()}
    stats = model[3].running_mean.clone()
    attribute(model, x, 1, method=method, **({"n_steps": 3} if method == "integrated_gradients" else {}))
    assert model.training and all(m.training for m in model.modules())
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, before[n], rtol=0, atol=0, msg=n)
    torch.testing.assert_close(model[3].running_mean, stats, rtol=0, atol=0)  # ran in eval mode: no BN update
    fresh = tiny_cnn().eval()
    attribute(fresh, x, 0, method=method, **({"n_steps": 3} if method == "integrated_gradients" else {}))
    assert not fresh.training and all(p.grad is None for p in fresh.parameters())


@both
def test_frozen_weights_still_get_a_cam():
    model = tiny_cnn()
    for p in model.parameters():
        p.requires_grad_(False)
    cam = attribute(model, torch.randn(1, 3, 16, 16), 0, method="gradcam")
    assert cam.shape == (1, 16, 16) and cam.max() > 0


# -------------------------------------------------------------------------------------------------- errors


def test_clear_errors():
    model, _ = linear_model()
    x = torch.randn(2, 3, 8, 8)
    with pytest.raises(ValueError, match=r"unknown post-hoc method 'gradcamm'.*'gradcam', 'gradcam\+\+'.*'occlusion'"):
        attribute(model, x, method="gradcamm")
    with pytest.raises(ValueError, match=r"\(N, C, H, W\), got shape \(3, 8, 8\).*unsqueeze"):
        attribute(model, x[0], method="saliency")
    with pytest.raises(TypeError, match="torch.Tensor"):
        attribute(model, x.numpy(), method="saliency")
    with pytest.raises(ValueError, match=r"target 2 is out of range for a model with 2 outputs; expected 0..1"):
        attribute(model, x, 2, method="saliency")
    with pytest.raises(ValueError, match=r"target -1 is out of range"):
        attribute(model, x, [0, -1], method="saliency")
    with pytest.raises(ValueError, match="3 entries for 2 images"):
        attribute(model, x, [0, 1, 1], method="saliency")
    with pytest.raises(TypeError, match=r"'saliency' takes no option 'n_steps'; its options are \['reduce'\]"):
        attribute(model, x, method="saliency", n_steps=3)
    with pytest.raises(ValueError, match="layer= is for the CAM methods"):
        attribute(model, x, method="occlusion", layer="1")
    with pytest.raises(ValueError, match=r"no default CAM layer for Sequential.*pass layer="):
        attribute(model, x, method="gradcam")
    with pytest.raises(ValueError, match="no default CAM layer for MLP"):
        default_cam_layer(type("MLP", (nn.Module,), {})())
    with pytest.raises(ValueError, match=r"layer 'nope' is not a submodule of Sequential"):
        attribute(tiny_cnn(), torch.randn(1, 3, 8, 8), method="gradcam", layer="nope")


@captum_only
def test_option_errors_name_the_value():
    model, _ = linear_model()
    x = torch.randn(1, 3, 8, 8)
    with pytest.raises(ValueError, match=r"reduce='mean': expected one of \['abs_sum', 'sum', 'abs_max'\]"):
        attribute(model, x, method="saliency", reduce="mean")
    with pytest.raises(ValueError, match=r"baseline='black'"):
        attribute(model, x, method="integrated_gradients", baseline="black")
    with pytest.raises(ValueError, match=r"baseline tensor of shape \(3, 4, 4\)"):
        attribute(model, x, method="integrated_gradients", baseline=torch.zeros(3, 4, 4))
    with pytest.raises(ValueError, match="occlusion window 9 does not fit images of 8x8"):
        attribute(model, x, method="occlusion", window=9)


def test_a_missing_library_names_the_pip_command(monkeypatch):
    model, _ = linear_model()
    x = torch.randn(1, 3, 8, 8)
    monkeypatch.setitem(sys.modules, "captum.attr", None)  # import captum.attr now raises ImportError
    monkeypatch.setitem(sys.modules, "pytorch_grad_cam", None)
    with pytest.raises(ImportError, match=r"'integrated_gradients' needs the package 'captum'.*"
                                          r"pip install 'medimg-core\[posthoc\]'"):
        attribute(model, x, method="integrated_gradients")
    with pytest.raises(ImportError, match=r"'gradcam\+\+' needs the package 'grad-cam'.*medimg-core\[posthoc\]"):
        attribute(tiny_cnn(), x, method="gradcam++")


def test_importing_medimg_core_imports_neither_library():
    code = ("import sys, medimg_core, medimg_core.posthoc; "
            "print(sorted(m for m in ('captum', 'pytorch_grad_cam') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_optional_extra_is_declared():
    from pathlib import Path

    import tomllib

    root = Path(__file__).resolve().parents[3]
    project = tomllib.loads((root / "packages/medimg-core/pyproject.toml").read_text())["project"]
    assert project["optional-dependencies"]["posthoc"] == ["captum>=0.7", "grad-cam>=1.5"]
    assert 'packages/$m[weights,posthoc]"' in (root / "tools/setup.sh").read_text()


# ------------------------------------------------------------------------------------------- explanations


@gradcam_only
def test_explain_one_image(tmp_path):
    x = torch.zeros(1, 32, 32)
    x[0, 2:12, 3:13] = 1.0
    model = quadrant_model()
    e = explain(model, x, target="bright", class_names=["bright", "dark"], method="gradcam")
    assert isinstance(e, Explanation)
    assert e.target == 0 and e.predicted == 0 and e.map.shape == (32, 32) and e.image.shape == (32, 32, 3)
    assert e.peak[0] < 16 and e.peak[1] < 16
    text = e.to_text(top_k=3)
    assert "gradcam map for bright" in text and "predicted bright" in text and text.count("(") >= 5
    d = json.loads(json.dumps(e.to_dict()))
    assert d["method"] == "gradcam" and d["target"] == 0 and d["map_shape"] == [32, 32]
    assert np.allclose(np.array(d["map"]), e.map)
    png = e.figure(tmp_path / "sub" / "gradcam.png", top_k=2)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # target None explains the predicted class; index 1 the other one, whose evidence is absent here
    assert explain(model, x).target == 0
    other = explain(model, x, 1)
    assert other.map.max() == 0 and other.peak == (0, 0) and other.top_pixels(2)[1][:2] == (0, 1)
    assert "the map is constant" in other.to_text() and "the map is constant" not in text
    with pytest.raises(ValueError, match="one image, got a batch of 2"):
        explain(model, torch.zeros(2, 1, 32, 32))
    with pytest.raises(ValueError, match=r"target 'grey' is not a class; expected one of \['bright', 'dark'\]"):
        explain(model, x, "grey", class_names=["bright", "dark"])

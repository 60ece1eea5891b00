"""The post-hoc methods: the registry `METHODS`, the CAM layer, the library runners and the one verb `attribute`.

What each method's map is, and why the glue is written here: see `medimg_core.posthoc`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from medimg_core.explain import class_targets

INSTALL_HINT = "pip install 'medimg-core[posthoc]'"
REDUCTIONS = ("abs_sum", "sum", "abs_max")


@dataclass(frozen=True)
class Method:
    """One registered explainer: its library and class, the kind of map it gives, and its options."""

    name: str
    library: str  # the pip distribution
    module: str  # the module that holds `cls`
    cls: str
    kind: str  # "cam" or "pixel"
    options: tuple[str, ...]
    run: Callable[..., np.ndarray] = field(repr=False)


def _import(module: str, method: str, library: str) -> Any:
    """`module`, or an ImportError naming the method, the missing library and the pip command."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(f"post-hoc method {method!r} needs the package {library!r} (module {module.split('.')[0]}), "
                          f"which is not installed ({exc}). Install it with:  {INSTALL_HINT}") from exc


# ----------------------------------------------------------------------------------------------- the CAM layer


def _timm_owner(model: nn.Module) -> tuple[str, nn.Module] | None:
    """(name, module) of the outermost submodule (the model included) with timm's `feature_info`, else None."""
    for name, module in model.named_modules():
        info = getattr(module, "feature_info", None)
        if isinstance(info, list) and info and isinstance(info[-1], dict) and info[-1].get("module"):
            return name, module
    return None


def token_reshape(num_prefix_tokens: int, input_hw: tuple[int, int]) -> Callable[[torch.Tensor], torch.Tensor]:
    """A reshape_transform for pytorch-grad-cam: tokens (N, T, C) -> (N, C, h, w), dropping the first
    `num_prefix_tokens` (class / register tokens) and laying the rest on the grid of the input's aspect ratio;
    a 4-D tensor passes unchanged. Raises ValueError when the tokens fill no such grid."""
    height, width = input_hw

    def reshape(t: torch.Tensor) -> torch.Tensor:
        if t.ndim != 3:
            return t
        tokens = t[:, num_prefix_tokens:]
        n = tokens.shape[1]
        rows = max(1, round(float(np.sqrt(n * height / width))))
        cols = n // rows
        if rows * cols != n:
            raise ValueError(f"cannot lay {n} patch tokens on a grid for input {height}x{width}; pass "
                             "reshape_transform=")
        return tokens.reshape(tokens.shape[0], rows, cols, tokens.shape[2]).permute(0, 3, 1, 2)

    return reshape


def default_cam_layer(model: nn.Module) -> tuple[str, nn.Module]:
    """(dotted name, module) of the layer a CAM explains when none is given.

    The outermost submodule (the model included) that has timm's `feature_info` gives its last stage
    (``feature_info[-1]["module"]``: ``layer4`` of a ResNet, ``stages.3`` of a ConvNeXt); this finds the timm
    model inside medimg's `ImageClassifier` (``backbone.model``). Otherwise the last `nn.Conv2d` in
    `model.named_modules()` order. Raises ValueError naming the model's class when there is neither.
    """
    owner = _timm_owner(model)
    if owner is not None:
        name, module = owner
        inner = str(module.feature_info[-1]["module"])
        try:
            return (f"{name}.{inner}" if name else inner), module.get_submodule(inner)
        except AttributeError:
            pass
    convs = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    if convs:
        return convs[-1]
    raise ValueError(f"no default CAM layer for {type(model).__name__}: it is not a timm model (no feature_info) "
                     "and has no nn.Conv2d; pass layer= (a module or its dotted name in model.named_modules())")


def _cam_layer(model: nn.Module, layer: nn.Module | str | None) -> nn.Module:
    if layer is None:
        return default_cam_layer(model)[1]
    if isinstance(layer, str):
        try:
            return model.get_submodule(layer)
        except AttributeError:
            names = [n for n, _ in model.named_modules() if n]
            raise ValueError(f"layer {layer!r} is not a submodule of {type(model).__name__}; expected a dotted "
                             f"name such as {names[-3:] if len(names) > 3 else names}") from None
    if isinstance(layer, nn.Module):
        if not any(m is layer for m in model.modules()):
            raise ValueError(f"layer {type(layer).__name__} is not a submodule of {type(model).__name__}")
        return layer
    raise TypeError(f"layer must be None, an nn.Module or a dotted name, got {type(layer).__name__}")


# ------------------------------------------------------------------------------------------------- the runners


def _run_cam(cam_class: str, name: str) -> Callable[..., np.ndarray]:
    def run(model: nn.Module, x: torch.Tensor, targets: list[int], layer: nn.Module | str | None = None,
            reshape_transform: Callable | None = None) -> np.ndarray:
        library = _import("pytorch_grad_cam", name, "grad-cam")
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        if reshape_transform is None:
            owner = _timm_owner(model)
            if owner is not None and hasattr(owner[1], "num_prefix_tokens"):  # a timm ViT's blocks give tokens
                reshape_transform = token_reshape(int(owner[1].num_prefix_tokens or 0), tuple(x.shape[-2:]))
        cam = getattr(library, cam_class)(model=model, target_layers=[_cam_layer(model, layer)],
                                          reshape_transform=reshape_transform)
        # not `with cam:`: BaseCAM.__exit__ prints and swallows an IndexError raised inside the block
        try:
            # an input that requires grad makes the layer's output require grad even where the weights are frozen
            maps = cam(input_tensor=x.detach().clone().requires_grad_(True),
                       targets=[ClassifierOutputTarget(t) for t in targets])
        finally:
            cam.activations_and_grads.release()
        return np.asarray(maps, dtype=np.float32)

    return run


def _reduce(attr: torch.Tensor, reduce: str) -> np.ndarray:
    """(N, C, H, W) attributions -> (N, H, W) by `reduce` (see the module docstring)."""
    if reduce == "abs_sum":
        out = attr.abs().sum(dim=1)
    elif reduce == "sum":
        out = attr.sum(dim=1)
    elif reduce == "abs_max":
        out = attr.abs().amax(dim=1)
    else:
        raise ValueError(f"reduce={reduce!r}: expected one of {list(REDUCTIONS)}")
    return out.detach().cpu().numpy().astype(np.float32)


def _run_saliency(model: nn.Module, x: torch.Tensor, targets: list[int], reduce: str = "abs_sum") -> np.ndarray:
    attr = _import("captum.attr", "saliency", "captum")
    grads = attr.Saliency(model).attribute(x.clone().requires_grad_(True), target=targets, abs=False)
    return _reduce(grads, reduce)


def _ig_baseline(x: torch.Tensor, baseline: str | float | torch.Tensor, blur_sigma: float) -> torch.Tensor:
    if isinstance(baseline, str):
        if baseline == "zeros":
            return torch.zeros_like(x)
        if baseline == "blur":
            from torchvision.transforms.functional import gaussian_blur

            if not blur_sigma > 0:
                raise ValueError(f"blur_sigma must be positive, got {blur_sigma}")
            size = 2 * int(np.ceil(3 * blur_sigma)) + 1  # +-3 sigma, at most the image (reflect padding needs it)
            size = min(size, 2 * ((min(x.shape[-2:]) - 1) // 2) + 1)
            return gaussian_blur(x, [size, size], [float(blur_sigma)] * 2)
        raise ValueError(f"baseline={baseline!r}: expected 'zeros', 'blur', a number or a tensor")
    if isinstance(baseline, (int, float)):
        return torch.full_like(x, float(baseline))
    if isinstance(baseline, torch.Tensor):
        b = baseline.to(device=x.device, dtype=x.dtype)
        if b.ndim == 3:
            b = b.unsqueeze(0)
        if b.ndim != 4 or b.shape[1:] != x.shape[1:] or b.shape[0] not in (1, x.shape[0]):
            raise ValueError(f"baseline tensor of shape {tuple(baseline.shape)} does not fit inputs "
                             f"{tuple(x.shape)}; expected (C, H, W) or (N, C, H, W)")
        return b.expand_as(x).contiguous()
    raise TypeError(f"baseline must be 'zeros', 'blur', a number or a tensor, got {type(baseline).__name__}")


def _run_ig(model: nn.Module, x: torch.Tensor, targets: list[int], baseline: str | float | torch.Tensor = "zeros",
            n_steps: int = 50, reduce: str = "abs_sum", blur_sigma: float = 5.0,
            internal_batch_size: int | None = 64) -> np.ndarray:
    attr = _import("captum.attr", "integrated_gradients", "captum")
    if int(n_steps) < 1:
        raise ValueError(f"n_steps must be at least 1, got {n_steps}")
    if reduce not in REDUCTIONS:  # before the n_steps passes
        raise ValueError(f"reduce={reduce!r}: expected one of {list(REDUCTIONS)}")
    attributions = attr.IntegratedGradients(model).attribute(
        x, baselines=_ig_baseline(x, baseline, blur_sigma), target=targets, n_steps=int(n_steps),
        internal_batch_size=None if internal_batch_size is None else max(int(internal_batch_size), x.shape[0]))
    return _reduce(attributions, reduce)


def occlusion_defaults(height: int, width: int) -> tuple[int, int]:
    """The default occlusion (window, stride) for an image of (height, width): (max(2, round(side/8)), window//2)."""
    window = max(2, round(min(height, width) / 8))
    return window, max(1, window // 2)


def _run_occlusion(model: nn.Module, x: torch.Tensor, targets: list[int], window: int | None = None,
                   stride: int | None = None, baseline: float = 0.0) -> np.ndarray:
    attr = _import("captum.attr", "occlusion", "captum")
    height, width = x.shape[-2:]
    window = occlusion_defaults(height, width)[0] if window is None else int(window)
    stride = max(1, window // 2) if stride is None else int(stride)
    if not 1 <= window <= min(height, width):
        raise ValueError(f"occlusion window {window} does not fit images of {height}x{width}; expected 1.."
                         f"{min(height, width)}")
    if stride < 1:
        raise ValueError(f"occlusion stride must be at least 1, got {stride}")
    channels = x.shape[1]
    with torch.no_grad():
        out = attr.Occlusion(model).attribute(x, sliding_window_shapes=(channels, window, window),
                                              strides=(channels, stride, stride), baselines=float(baseline),
                                              target=targets)
    return out.mean(dim=1).detach().cpu().numpy().astype(np.float32)


_CAM_OPTIONS = ("layer", "reshape_transform")
METHODS: dict[str, Method] = {
    "gradcam": Method("gradcam", "grad-cam", "pytorch_grad_cam", "GradCAM", "cam", _CAM_OPTIONS,
                      _run_cam("GradCAM", "gradcam")),
    "gradcam++": Method("gradcam++", "grad-cam", "pytorch_grad_cam", "GradCAMPlusPlus", "cam", _CAM_OPTIONS,
                        _run_cam("GradCAMPlusPlus", "gradcam++")),
    "hirescam": Method("hirescam", "grad-cam", "pytorch_grad_cam", "HiResCAM", "cam", _CAM_OPTIONS,
                       _run_cam("HiResCAM", "hirescam")),
    "layercam": Method("layercam", "grad-cam", "pytorch_grad_cam", "LayerCAM", "cam", _CAM_OPTIONS,
                       _run_cam("LayerCAM", "layercam")),
    "saliency": Method("saliency", "captum", "captum.attr", "Saliency", "pixel", ("reduce",), _run_saliency),
    "integrated_gradients": Method("integrated_gradients", "captum", "captum.attr", "IntegratedGradients", "pixel",
                                   ("baseline", "n_steps", "reduce", "blur_sigma", "internal_batch_size"), _run_ig),
    "occlusion": Method("occlusion", "captum", "captum.attr", "Occlusion", "pixel", ("window", "stride", "baseline"),
                        _run_occlusion),
}


# ------------------------------------------------------------------------------------------------ the one verb


@contextmanager
def _model_state(model: nn.Module) -> Iterator[None]:
    """Eval mode and untouched parameter gradients inside; the training flag and every `.grad` restored after."""
    training = model.training
    grads = [(p, p.grad) for p in model.parameters()]
    model.eval()
    try:
        yield
    finally:
        model.train(training)
        for p, g in grads:
            p.grad = g


def _check_inputs(x: Any) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor of images (N, C, H, W), got {type(x).__name__}")
    if x.ndim != 4:
        raise ValueError(f"x must be a batch of images (N, C, H, W), got shape {tuple(x.shape)}"
                         + (" (one image? use x.unsqueeze(0))" if x.ndim == 3 else ""))
    if not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor (the model's input), got {x.dtype}")
    if x.shape[0] == 0:
        raise ValueError("x holds no images (N = 0)")
    return x


def _check_options(method: Method, options: dict[str, Any]) -> None:
    unknown = sorted(set(options) - set(method.options))
    if unknown:
        raise TypeError(f"method {method.name!r} takes no option {unknown[0]!r}; its options are "
                        f"{list(method.options)}")


def attribute(model: nn.Module, x: torch.Tensor, target: int | Sequence[int] | None = None,
              method: str = "gradcam", layer: nn.Module | str | None = None, **options: Any) -> np.ndarray:
    """Saliency maps (N, H, W), float32, of `model`'s logit for `target` on images x (N, C, H, W).

    Args:
        model: any classifier taking x (N, C, H, W) to logits (N, K).
        x: the model's input (normalised as it was trained), on any device (moved to the model's).
        target: the class explained: an int for every image, a sequence of N ints, or None (the predicted class,
            the argmax of the logits).
        method: a name in `METHODS` (see the module docstring for what each map is).
        layer: the CAM methods' layer (a module or its dotted name); None: `default_cam_layer(model)`. Ignored
            with a ValueError for the pixel methods.
        **options: the method's own options (`METHODS[method].options`): ``reduce``, ``baseline``,
            ``n_steps``, ``blur_sigma``, ``internal_batch_size``, ``window``, ``stride``, ``reshape_transform``.

    Raises ValueError for an unknown method (listing the known ones), a wrong input rank, a target out of range
    or a model whose output is not (N, K); TypeError for an option the method does not take; ImportError with
    the pip command when captum or grad-cam is missing.
    """
    if method not in METHODS:
        raise ValueError(f"unknown post-hoc method {method!r}; expected one of {list(METHODS)}")
    spec = METHODS[method]
    if layer is not None:
        if spec.kind != "cam":
            raise ValueError(f"layer= is for the CAM methods ({[m for m in METHODS if METHODS[m].kind == 'cam']}); "
                             f"{method!r} attributes the input pixels")
        options["layer"] = layer
    _check_options(spec, options)
    x = _check_inputs(x)
    param = next(model.parameters(), None)
    if param is not None:
        x = x.to(param.device)
    with _model_state(model):
        with torch.no_grad():
            logits = model(x)
        if not isinstance(logits, torch.Tensor) or logits.ndim != 2 or logits.shape[0] != x.shape[0]:
            shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
            raise ValueError(f"{type(model).__name__} gave {shape} for {x.shape[0]} images; expected logits "
                             f"(N, K) = ({x.shape[0]}, K)")
        targets = class_targets(logits, target)
        maps = spec.run(model, x.detach(), targets, **options)
    expected = (x.shape[0], *x.shape[-2:])
    if maps.shape != expected:  # e.g. a CAM layer giving tokens without a reshape_transform
        raise ValueError(f"{method} gave maps of shape {maps.shape} for inputs {tuple(x.shape)}; expected {expected}")
    return maps

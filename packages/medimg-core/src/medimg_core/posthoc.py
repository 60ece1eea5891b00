"""Post-hoc saliency maps for any image classifier, from the libraries people use, behind one verb.

    from medimg_core.posthoc import attribute, explain
    maps = attribute(model, x, target=None, method="gradcam")      # np.ndarray (N, H, W) float32
    explanation = explain(model, x[:1], method="integrated_gradients", class_names=["benign", "malignant"])

`model` is any `nn.Module` taking images x (N, C, H, W) to logits (N, K) (medimg's `ImageClassifier`, a timm
model, an nn.Sequential CNN); `target` is an int, a sequence of N ints, or None for the predicted class (the
argmax of the logits; for a multi-label model, whose logits are one per label, the label with the highest logit).
The map explains the target's *logit* (pytorch-grad-cam's `ClassifierOutputTarget`, Captum's `target=`), not its
softmax probability.

Methods (`METHODS`, named as the libraries name them):

================================  ================================================  =====================================
method                            library class                                     reference
================================  ================================================  =====================================
``"gradcam"``                     pytorch_grad_cam.GradCAM                          Selvaraju et al., ICCV 2017, Sec. 3
``"gradcam++"``                   pytorch_grad_cam.GradCAMPlusPlus                  Chattopadhay et al., WACV 2018, Sec. 3
``"hirescam"``                    pytorch_grad_cam.HiResCAM                         Draelos & Carin, arXiv 2011.08891, 2020
``"layercam"``                    pytorch_grad_cam.LayerCAM                         Jiang et al., IEEE TIP 30, 2021, Sec. III
``"saliency"``                    captum.attr.Saliency                              Simonyan et al., ICLR workshop 2014, Sec. 3.1
``"integrated_gradients"``        captum.attr.IntegratedGradients                   Sundararajan et al., ICML 2017, Sec. 3
``"occlusion"``                   captum.attr.Occlusion                             Zeiler & Fergus, ECCV 2014, Sec. 4.2
================================  ================================================  =====================================

What each map is:

* **CAMs** (``gradcam``, ``gradcam++``, ``hirescam``, ``layercam``): exactly what pytorch-grad-cam returns: the
  class activation map of `layer` after a ReLU, min-max scaled to [0, 1] *per image* by the library
  (`scale_cam_image`; a map that is 0 everywhere stays 0) and resized to the input's (H, W) with OpenCV's
  bilinear `cv2.resize`. Their absolute size says nothing: compare CAMs by rank or after thresholding.
  Option: ``layer``, the module whose activations are explained (an `nn.Module` or its dotted name in
  `model.named_modules()`); None takes `default_cam_layer(model)`: the last stage of a timm model's
  `feature_info` (``layer4`` of a ResNet, also inside medimg's `ImageClassifier` whose `backbone.model` is the
  timm model), else the last `nn.Conv2d`. A timm vision transformer's blocks give tokens (N, T, C): inside a timm
  model that has `num_prefix_tokens` (ViT, DeiT, EVA), a layer's tokens are laid back on the patch grid by
  `token_reshape` (prefix tokens dropped, grid of the input's aspect ratio) unless ``reshape_transform`` is given;
  a given ``reshape_transform`` (pytorch-grad-cam's `reshape_transforms.vit_reshape_transform`, or one that
  permutes a Swin's NHWC maps) is handed to the library unchanged.
* **pixel attributions** (``saliency``, ``integrated_gradients``): Captum's attribution per input value
  (N, C, H, W), reduced over channels by ``reduce``:
  ``"abs_sum"`` (the default) = sum over channels of |attribution|, the usual choice for IG maps in medical
  imaging; ``"sum"`` = the signed sum over channels, Captum's `visualize_image_attr` default (a signed map:
  positive raises the target logit); ``"abs_max"`` = max over channels of |attribution|, the reduction of
  Simonyan et al. (2014, Sec. 3.1) for their saliency map. Saliency is the raw input gradient (Captum's
  ``abs=False``; the reduction takes the absolute value, or not).
  Integrated Gradients (Captum's default Gauss-Legendre rule, ``n_steps=50``) starts from ``baseline``:
  ``"zeros"`` (the default) = an all-zero image *in the model's input space*, i.e. for inputs normalised with
  the dataset's (or ImageNet's) mean and std, the mean-intensity grey image; ``"blur"`` = the input blurred with
  a Gaussian of ``blur_sigma`` pixels (default 5.0; the blurred baseline of Sturmfels, Lundberg & Lee, Distill
  2020), so that only the image's fine structure is attributed; a number (a constant image) or a tensor
  (C, H, W) or (N, C, H, W). Completeness (Sundararajan et al., Sec. 3, Proposition 1): the attributions of one
  image sum to f(x) - f(baseline) for the target logit, up to the quadrature error of ``n_steps``; with the
  signed ``reduce="sum"`` the map keeps that property. ``internal_batch_size`` (default 64) bounds how many
  interpolated images go through the model at once (Captum's default, None, sends all N x n_steps).
* **occlusion**: Captum's Occlusion with a square window sliding over H and W and spanning all channels,
  replaced by ``baseline`` (default 0.0, the mean in normalised input space): each pixel's value is the mean,
  over the windows that cover it, of f(x) - f(x with the window replaced), for the target logit. The window
  spans every channel, so the map is that value (signed: positive where hiding the patch lowers the target
  logit); ``reduce`` does not apply. Options ``window`` (default max(2, round(min(H, W) / 8)): 8 px at 64 px,
  28 px at 224 px) and ``stride`` (default max(1, window // 2)); these defaults tile a side divisible by 8 exactly.
  Pixels that no window covers (when (side - window) is not a multiple of stride) are 0, as Captum leaves them.
  Cost: one forward pass per window position (225 at the defaults).

Every call puts the model in eval mode and restores its training flag afterwards, and leaves every parameter's
`.grad` as it found it (pytorch-grad-cam calls `model.zero_grad()` and `loss.backward()` on the model; Captum
uses `torch.autograd.grad`); it runs on the model's device (CPU included). All seven methods are deterministic
for a fixed input and fixed weights on a CPU (no sampling: IG's quadrature is fixed, the CAMs' test-time
augmentation and eigen-smoothing of pytorch-grad-cam are not used); on a GPU some backward kernels (pooling,
upsampling) accumulate atomically, so gradient maps may differ in the last digits unless
`torch.use_deterministic_algorithms(True)`.

captum and grad-cam are an optional extra (``pip install 'medimg-core[posthoc]'``) imported inside the functions
that use them: importing medimg_core does not import them, and a missing one is an ImportError giving that
command. The library code is used as is; what is written here is the glue (target layer, targets, channel
reduction, model state), which neither library provides for a classifier of unknown architecture.

`explain` wraps one image's map in a `SaliencyExplanation` (medimg_core.explain's protocol: to_text, figure,
to_dict, target, predicted), whose figure overlays the map on the image with `medimg_core.figures.heatmap_overlay`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from medimg_core.explain import jsonable

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


def _resolve_targets(target: int | Sequence[int] | None, logits: torch.Tensor) -> list[int]:
    n, k = logits.shape
    if target is None:
        return [int(i) for i in logits.argmax(dim=1).tolist()]
    if isinstance(target, torch.Tensor):
        target = target.tolist()
    if isinstance(target, (int, np.integer)):
        targets = [int(target)] * n
    elif isinstance(target, Sequence) and not isinstance(target, str):
        targets = [int(t) for t in target]
        if len(targets) != n:
            raise ValueError(f"target has {len(targets)} entries for {n} images; expected one int per image, "
                             "one int for all, or None")
    else:
        raise TypeError(f"target must be an int, a sequence of ints or None, got {type(target).__name__}")
    bad = [t for t in targets if not 0 <= t < k]
    if bad:
        raise ValueError(f"target {bad[0]} is out of range for a model with {k} outputs; expected 0..{k - 1}")
    return targets


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
        targets = _resolve_targets(target, logits)
        maps = spec.run(model, x.detach(), targets, **options)
    expected = (x.shape[0], *x.shape[-2:])
    if maps.shape != expected:  # e.g. a CAM layer giving tokens without a reshape_transform
        raise ValueError(f"{method} gave maps of shape {maps.shape} for inputs {tuple(x.shape)}; expected {expected}")
    return maps


# ----------------------------------------------------------------------------------------------- one explanation


def _display_image(x: torch.Tensor) -> np.ndarray:
    """(C, H, W) model input -> (H, W, 3) in [0, 1], min-max scaled (the input may be normalised)."""
    from medimg_core.figures import to_display

    arr = x.detach().cpu().float()
    lo, hi = float(arr.min()), float(arr.max())
    arr = (arr - lo) / (hi - lo) if hi > lo else torch.zeros_like(arr)
    return to_display(arr)


@dataclass
class SaliencyExplanation:
    """One image's post-hoc map (medimg_core.explain.Explanation).

    `map` (H, W) is what `attribute` gives for this image; `image` (H, W, 3) in [0, 1] is what the figure shows;
    `target` the class explained, `predicted` the argmax of the logits; `logits` (K,) the model's output.
    """

    method: str
    map: np.ndarray
    image: np.ndarray
    target: int
    predicted: int
    logits: np.ndarray
    class_names: list[str] | None = None
    options: dict[str, Any] = field(default_factory=dict)

    def _name(self, index: int) -> str:
        return self.class_names[index] if self.class_names else f"class {index}"

    @property
    def peak(self) -> tuple[int, int]:
        """(y, x) of the map's maximum."""
        y, x = np.unravel_index(int(np.argmax(self.map)), self.map.shape)
        return int(y), int(x)

    def top_pixels(self, top_k: int = 5) -> list[tuple[int, int, float]]:
        """The `top_k` highest pixels of the map as (y, x, value), highest first."""
        if int(top_k) < 1:
            raise ValueError(f"top_k must be at least 1 (or None for the default 5), got {top_k}")
        order = np.argsort(-self.map, axis=None, kind="stable")[:int(top_k)]  # ties: the first pixel, as `peak`
        return [(int(i // self.map.shape[1]), int(i % self.map.shape[1]), float(self.map.flat[i])) for i in order]

    def to_text(self, top_k: int | None = None) -> str:
        """Method, target and prediction with the logits, the map's range, and its `top_k` (default 5) peak pixels."""
        peaks = self.top_pixels(5 if top_k is None else top_k)
        lines = [f"{self.method} map for {self._name(self.target)} (logit {float(self.logits[self.target]):.3f}); "
                 f"predicted {self._name(self.predicted)} (logit {float(self.logits[self.predicted]):.3f})",
                 f"map {self.map.shape[0]}x{self.map.shape[1]}, min {float(self.map.min()):.4g}, "
                 f"max {float(self.map.max()):.4g}, mean {float(self.map.mean()):.4g}",
                 f"top {len(peaks)} pixels (y, x: value): "
                 + ", ".join(f"({y}, {x}: {v:.4g})" for y, x, v in peaks)]
        if float(self.map.max()) == float(self.map.min()):
            lines.append("the map is constant: no pixel stands out"
                         + (" (a CAM is 0 where the ReLU removed every location: the layer holds no evidence for "
                            "this class, or its feature map is too coarse)" if METHODS[self.method].kind == "cam"
                            else ""))
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """Method, options (as strings where not JSON), target, predicted, logits, peak and the map itself."""
        options = {k: (v if isinstance(v, (int, float, str, type(None))) else repr(v)) for k, v in self.options.items()}
        return jsonable({"method": self.method, "options": options, "target": self.target,
                         "predicted": self.predicted, "class_names": self.class_names, "logits": self.logits,
                         "peak": self.peak, "map_shape": self.map.shape, "map": self.map})

    def figure(self, path: str | Path, top_k: int | None = None) -> Path:
        """One PNG: the image, and the map overlaid on it (`heatmap_overlay`) with its peak(s) marked (`top_k`,
        default 1)."""
        import matplotlib.pyplot as plt

        from medimg_core.figures import PAPER_RC, heatmap_overlay, save_figure

        peaks = self.top_pixels(1 if top_k is None else top_k)
        with plt.rc_context(PAPER_RC):
            fig, axes = plt.subplots(1, 2, figsize=(5.2, 2.9))
            axes[0].imshow(self.image, interpolation="nearest")
            axes[0].set_title("image", fontsize=9)
            axes[1].imshow(heatmap_overlay(self.image, self.map, alpha=0.5), interpolation="nearest")
            axes[1].plot([p[1] for p in peaks], [p[0] for p in peaks], "+", color="white", markersize=9, mew=2)
            axes[1].set_title(f"{self.method}: {self._name(self.target)}", fontsize=9)
            for ax in axes:
                ax.axis("off")
            fig.suptitle(f"predicted {self._name(self.predicted)}", fontsize=9)
            fig.tight_layout()
            return save_figure(fig, path)


def explain(model: nn.Module, x: torch.Tensor, target: int | str | None = None, method: str = "gradcam",
            layer: nn.Module | str | None = None, image: Any = None, class_names: Sequence[str] | None = None,
            **options: Any) -> SaliencyExplanation:
    """One image's map as a `SaliencyExplanation`.

    x: one image (C, H, W) or (1, C, H, W), as the model takes it; target: an index, a class name (with
    `class_names`) or None (the predicted class); image: what the figure shows ((C, H, W) or (H, W[, C]), in
    [0, 1] or uint8; default: x min-max scaled). Other arguments as `attribute`.
    """
    from medimg_core.explain import resolve_target
    from medimg_core.figures import to_display

    if isinstance(x, torch.Tensor) and x.ndim == 3:
        x = x.unsqueeze(0)
    x = _check_inputs(x)
    if x.shape[0] != 1:
        raise ValueError(f"explain takes one image, got a batch of {x.shape[0]}; use attribute() for batches")
    param = next(model.parameters(), None)
    x = x.to(param.device) if param is not None else x
    training = model.training
    try:
        with torch.no_grad():
            logits = model.eval()(x)
    finally:
        model.train(training)
    if logits.ndim != 2:
        raise ValueError(f"{type(model).__name__} gave {tuple(logits.shape)}; expected logits (1, K)")
    k = int(logits.shape[1])
    names = list(class_names) if class_names is not None else [str(i) for i in range(k)]
    if len(names) != k:
        raise ValueError(f"{len(names)} class names for a model with {k} outputs")
    predicted = int(logits.argmax(dim=1))
    if isinstance(target, str) and class_names is None:
        raise ValueError(f"target {target!r} is a name but no class_names were given")
    index = resolve_target(target, predicted, names)
    maps = attribute(model, x, index, method=method, layer=layer, **options)
    shown = _display_image(x[0]) if image is None else to_display(image)
    if shown.shape[:2] != maps.shape[1:]:
        raise ValueError(f"image of shape {shown.shape[:2]} does not match the map's {maps.shape[1:]}")
    if layer is not None:
        options = {"layer": layer if isinstance(layer, str) else type(layer).__name__, **options}
    return SaliencyExplanation(method, maps[0], shown, index, predicted, logits[0].detach().cpu().numpy(),
                               list(class_names) if class_names is not None else None, dict(options))

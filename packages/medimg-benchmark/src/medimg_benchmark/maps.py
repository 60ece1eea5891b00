"""Saliency maps scored against ground truth: localisation, faithfulness and the model-randomisation sanity check,
for every post-hoc explainer of `medimg_core.posthoc` and a model-independent reference.

    from medimg_benchmark.maps import score_explainers
    result = score_explainers(model, x, masks, target=1, sanity_images=4, n_boot=200)
    result["gradcam"]["iou"]        # {"value", "low", "high", "n", "undefined"}

The protocols are medimg-core's; this module puts them together on one model and one set of images:

- **localisation** against pixel masks (`medimg_core.localisation.score_mask`): the pointing game (Zhang et al.,
  "Top-down Neural Attention by Excitation Backprop", ECCV 2016, without their 15-pixel tolerance), the IoU of the
  map thresholded at half its range with the mask, and the energy-based pointing game (Wang et al., "Score-CAM",
  CVPR Workshops 2020, section 5.2);
- **faithfulness** (`medimg_core.faithfulness.deletion_insertion`): RISE's deletion and insertion AUC (Petsiuk,
  Das, Saenko, BMVC 2018, section 4.1) of the explained class's softmax probability, one image row per step;
- **sanity** (`medimg_core.sanity.cascading_randomisation`): Adebayo et al.'s cascading model-parameter
  randomisation (NeurIPS 2018, section 3), from the top block down (`block_layer_order`), with their similarity
  measures at each step; `passes` is `medimg_core.sanity.passes_model_randomisation` (ours: the mean Spearman
  correlation of the absolute maps after the last step below `RANDOMISATION_THRESHOLD`, 0.5).

Every number is a mean over images with a percentile bootstrap interval over images
(`medimg_core.metrics.bootstrap_ci`, 95 %). A value undefined for an image (the energy pointing game of a map with
no positive value, a Spearman correlation with a constant map) leaves that image out of that protocol; how many
were left out is `undefined`.

The reference explainer `edge_reference` is the image's own gradient magnitude (Sobel, `scipy.ndimage.sobel`, per
channel, the Euclidean norm of the two directions summed over channels). It does not look at the model, so the
sanity check must fail it: Adebayo et al. (section 3.1) show that edge detectors resemble some saliency maps, and
a benchmark whose sanity check passes this reference would not be checking anything.

What is ours: the cascade's steps are blocks (`block_layer_order`: the head, then each top-level stage of the
backbone, e.g. a ResNet's layer4 ... conv1), as Adebayo et al. randomise Inception v3's named blocks from the
logits down, rather than medimg-core's default of every parameterised leaf module (40 steps for a ResNet-18).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from scipy import ndimage
from torch import nn

from medimg_core.faithfulness import deletion_insertion
from medimg_core.localisation import score_mask
from medimg_core.metrics import bootstrap_ci
from medimg_core.sanity import RANDOMISATION_THRESHOLD, cascading_randomisation, passes_model_randomisation

#: the model-independent reference explainer (see the module docstring)
EDGE_REFERENCE = "edge_reference"

#: protocol key -> (label in the table, which direction is better: "higher", "lower")
PROTOCOLS: dict[str, tuple[str, str]] = {
    "pointing_game": ("pointing game", "higher"),
    "iou": ("IoU (map >= 0.5 of range)", "higher"),
    "energy_pointing_game": ("energy pointing game", "higher"),
    "deletion_auc": ("deletion AUC", "lower"),
    "insertion_auc": ("insertion AUC", "higher"),
    "sanity_spearman_abs": ("sanity: rank corr. of abs. maps after full randomisation", "lower"),
}

Explain = Callable[[nn.Module, torch.Tensor, torch.Tensor], np.ndarray]


def edge_reference(model: nn.Module, x: torch.Tensor, classes: torch.Tensor) -> np.ndarray:
    """The model-independent reference: gradient magnitude of the images x (N, C, H, W) -> maps (N, H, W).

    `model` and `classes` are ignored (the signature is that of an explainer, `medimg_core.sanity.Explain`)."""
    if not isinstance(x, torch.Tensor) or x.ndim != 4:
        raise ValueError(f"images must be a tensor (N, C, H, W), got {getattr(x, 'shape', type(x).__name__)}")
    arr = x.detach().cpu().double().numpy()
    gy = ndimage.sobel(arr, axis=2, mode="nearest")
    gx = ndimage.sobel(arr, axis=3, mode="nearest")
    return np.sqrt(gx**2 + gy**2).sum(axis=1).astype(np.float32)


def posthoc_explainer(method: str, **options: Any) -> Explain:
    """An explainer (model, x (N, C, H, W), classes (N,)) -> maps (N, H, W) of `medimg_core.posthoc.attribute`
    with `method` and its `options` (the CAMs' layer: the default, `default_cam_layer` of the model it gets)."""
    from medimg_core.posthoc import METHODS, attribute

    if method not in METHODS:
        raise ValueError(f"unknown post-hoc method {method!r}; expected one of {list(METHODS)}")

    def explain(model: nn.Module, x: torch.Tensor, classes: torch.Tensor) -> np.ndarray:
        return attribute(model, x, [int(c) for c in classes], method=method, **options)

    explain.__name__ = method
    return explain


def cam_layer(model: nn.Module, image_hw: tuple[int, int], min_side: int = 2) -> str:
    """The dotted name of the layer the CAMs explain: `medimg_core.posthoc.default_cam_layer(model)` (a timm
    model's last stage) unless its activation map is smaller than `min_side` x `min_side` at images of `image_hw`,
    then the deepest earlier stage of the timm model's `feature_info` whose map is at least that large.

    Ours: a 1 x 1 activation (a ResNet's layer4 at 32 px) gives a constant CAM, which pytorch-grad-cam's
    per-image min-max scaling turns into zeros; no protocol can score it."""
    from medimg_core.posthoc import default_cam_layer

    default = default_cam_layer(model)[0]
    owner = next(((n, m) for n, m in model.named_modules()
                  if isinstance(getattr(m, "feature_info", None), list) and m.feature_info), None)
    if owner is None:
        return default
    prefix = f"{owner[0]}." if owner[0] else ""
    stages = [f"{prefix}{info['module']}" for info in owner[1].feature_info if info.get("module")]
    sides: dict[str, int] = {}
    hooks = []
    for name in stages:
        def hook(_m, _i, out, name=name):
            if isinstance(out, torch.Tensor) and out.ndim == 4:
                sides[name] = int(min(out.shape[-2:]))
        hooks.append(model.get_submodule(name).register_forward_hook(hook))
    param = next(model.parameters())
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, _in_chans(model), *image_hw,
                              device=param.device, dtype=param.dtype))
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    if sides.get(default, min_side) >= min_side:
        return default
    for name in reversed(stages):
        if sides.get(name, 0) >= min_side:
            return name
    return default


def _in_chans(model: nn.Module) -> int:
    first = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    if first is None:
        raise ValueError(f"cannot tell how many input channels {type(model).__name__} takes")
    return first.in_channels


def default_explainers(cam_layer_name: str | None = None) -> dict[str, Explain]:
    """{name: explainer}: every method of `medimg_core.posthoc.METHODS` with its defaults (the CAMs' layer
    `cam_layer_name`, None: `default_cam_layer`), then `edge_reference`."""
    from medimg_core.posthoc import METHODS

    out: dict[str, Explain] = {}
    for name, spec in METHODS.items():
        options = {"layer": cam_layer_name} if spec.kind == "cam" and cam_layer_name is not None else {}
        out[name] = posthoc_explainer(name, **options)
    return {**out, EDGE_REFERENCE: edge_reference}


def _has_params(module: nn.Module) -> bool:
    return any(True for _ in module.parameters())


def block_layer_order(model: nn.Module) -> list[str]:
    """The model's blocks, top (last registered) first, for a cascading randomisation in coarse steps.

    The parameterised children of `model`; a child that only wraps one parameterised module (medimg's Backbone
    around a timm model) is followed down to the first module with several parameterised children, whose
    children are the blocks (a timm ResNet: conv1, bn1, layer1 ... layer4). For medimg's ImageClassifier over a
    ResNet: ["head", "backbone.model.layer4", ..., "backbone.model.bn1", "backbone.model.conv1"]."""
    blocks: list[str] = []
    for name, child in model.named_children():
        if not _has_params(child):
            continue
        path, module = name, child
        while True:
            kids = [(n, m) for n, m in module.named_children() if _has_params(m)]
            own = any(True for _ in module.parameters(recurse=False))
            if len(kids) == 1 and not own:
                path, module = f"{path}.{kids[0][0]}", kids[0][1]
                continue
            break
        if len(kids) > 1 and not own and name != path:
            blocks += [f"{path}.{n}" for n, _ in kids]
        else:
            blocks.append(path)
    if not blocks:
        raise ValueError(f"{type(model).__name__} has no parameterised children to randomise")
    return blocks[::-1]


def interval(values: Sequence[float] | np.ndarray, n_boot: int, seed: int) -> dict[str, Any]:
    """The mean of the defined (finite) values with its 95 % percentile bootstrap interval over them:
    {"value", "low", "high", "n": values used, "undefined": values left out}. All undefined: value NaN."""
    arr = np.asarray(values, dtype=np.float64)
    finite = arr[np.isfinite(arr)]
    out: dict[str, Any] = {"n": int(finite.size), "undefined": int(arr.size - finite.size)}
    if finite.size == 0:
        return {"value": float("nan"), "low": float("nan"), "high": float("nan"), **out}
    value, low, high = bootstrap_ci(np.mean, finite, n_boot=n_boot, seed=seed)
    return {"value": value, "low": low, "high": high, **out}


def localisation_scores(maps: np.ndarray, masks: np.ndarray, n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Pointing game, IoU and energy pointing game of maps (N, H, W) against binary masks (N, H, W), each with
    its interval (`interval`); "per_image": {protocol: (N,) list}."""
    maps, masks = np.asarray(maps), np.asarray(masks)
    if maps.ndim != 3 or maps.shape != masks.shape:
        raise ValueError(f"maps {maps.shape} and masks {masks.shape} must both be (N, H, W)")
    scores = [score_mask(m, k) for m, k in zip(maps, masks, strict=True)]
    per_image = {"pointing_game": [float(s["hit"]) for s in scores], "iou": [s["iou"] for s in scores],
                 "energy_pointing_game": [s["energy"] for s in scores]}
    out: dict[str, Any] = {key: interval(vals, n_boot, seed) for key, vals in per_image.items()}
    out["per_image"] = per_image
    return out


def faithfulness_scores(model: nn.Module, x: torch.Tensor, maps: np.ndarray, target: int | Sequence[int],
                        n_boot: int = 1000, seed: int = 0, batch_size: int = 64) -> dict[str, Any]:
    """RISE deletion and insertion AUC (defaults of `deletion_insertion`: softmax, one row per step) of maps
    (N, H, W) on x (N, C, H, W) for `target`, each with its interval; "per_image": {protocol: (N,) list}."""
    per_image = {}
    for mode in ("deletion", "insertion"):
        result = deletion_insertion(model, x, maps, target=target, mode=mode, batch_size=batch_size)
        per_image[f"{mode}_auc"] = [float(v) for v in result["auc"]]
    out: dict[str, Any] = {key: interval(vals, n_boot, seed) for key, vals in per_image.items()}
    out["per_image"] = per_image
    return out


def sanity_scores(model: nn.Module, x: torch.Tensor, explain: Explain, target: int | Sequence[int],
                  layers: Sequence[str] | None = None, n_boot: int = 1000, seed: int = 0,
                  threshold: float = RANDOMISATION_THRESHOLD) -> dict[str, Any]:
    """The cascading randomisation of `explain` on x (N, C, H, W) (layers: `block_layer_order(model)` by default):
    "steps": [{"layer", "spearman_abs_mean", "spearman_mean", "ssim_mean"}], "sanity_spearman_abs": the interval of
    the per-image Spearman |.| correlation after the last step, "passes" (`passes_model_randomisation` at
    `threshold`), "threshold"."""
    layers = block_layer_order(model) if layers is None else list(layers)
    result = cascading_randomisation(model, x, explain, target=target, layers=layers, seed=seed)
    steps = [{"layer": s["layer"], **{k: float(s[k]) for k in ("spearman_abs_mean", "spearman_mean", "ssim_mean")}}
             for s in result["steps"]]
    last = result["steps"][-1]
    return {"steps": steps, "sanity_spearman_abs": interval(last["spearman_abs"], n_boot, seed),
            "passes": passes_model_randomisation(result, threshold), "threshold": threshold, "layers": layers}


def score_explainers(model: nn.Module, x: torch.Tensor, masks: np.ndarray, target: int | Sequence[int],
                     explainers: dict[str, Explain] | None = None, sanity_images: int = 8, n_boot: int = 1000,
                     seed: int = 0, layers: Sequence[str] | None = None,
                     on_explainer: Callable[[str], None] | None = None) -> dict[str, dict[str, Any]]:
    """Every protocol for every explainer on one model.

    model: classifier (N, C, H, W) -> logits (N, K). x: (N, C, H, W) images as the model takes them. masks:
    (N, H, W) binary ground truth of `target` in each image. target: the class explained (one int or N ints).
    explainers: {name: explain(model, x, classes) -> (N, H, W)} (default: `default_explainers()`). The sanity
    check runs on the first `sanity_images` images. `on_explainer(name)` is called before each explainer.

    Returns {explainer: {protocol: {"value", "low", "high", "n", "undefined"} for protocol in PROTOCOLS,
    "passes_sanity": bool, "sanity_steps": [...], "maps": (N, H, W) float32, "per_image": {protocol: list}}}.
    """
    if not isinstance(x, torch.Tensor) or x.ndim != 4:
        raise ValueError(f"images must be a tensor (N, C, H, W), got {getattr(x, 'shape', type(x).__name__)}")
    masks = np.asarray(masks).astype(bool)
    if masks.shape != (x.shape[0], *x.shape[2:]):
        raise ValueError(f"masks must be (N, H, W) = {(x.shape[0], *x.shape[2:])}, got {masks.shape}")
    if len(x) == 0:
        raise ValueError("no images to score")
    if sanity_images < 1:
        raise ValueError(f"sanity_images must be at least 1, got {sanity_images}")
    explainers = default_explainers() if explainers is None else explainers
    targets = [int(target)] * len(x) if isinstance(target, (int, np.integer)) else [int(t) for t in target]
    classes = torch.as_tensor(targets, dtype=torch.long, device=x.device)
    out = {}
    for name, explain in explainers.items():
        if on_explainer is not None:
            on_explainer(name)
        maps = np.asarray(explain(model, x, classes), dtype=np.float32)
        row: dict[str, Any] = {}
        local = localisation_scores(maps, masks, n_boot, seed)
        faith = faithfulness_scores(model, x, maps, targets, n_boot, seed)
        k = min(sanity_images, len(x))
        sanity = sanity_scores(model, x[:k], explain, targets[:k], layers, n_boot, seed)
        for part in (local, faith):
            row.update({key: value for key, value in part.items() if key != "per_image"})
        row["sanity_spearman_abs"] = sanity["sanity_spearman_abs"]
        row["passes_sanity"] = sanity["passes"]
        row["sanity_threshold"] = sanity["threshold"]
        row["sanity_layers"] = sanity["layers"]
        row["sanity_steps"] = sanity["steps"]
        row["per_image"] = {**local["per_image"], **faith["per_image"]}
        row["maps"] = maps
        out[name] = row
    return out


def data_randomisation_scores(maps: dict[str, np.ndarray], permuted_model: nn.Module, x: torch.Tensor,
                              explainers: dict[str, Explain], target: int | Sequence[int], n_boot: int = 1000,
                              seed: int = 0, threshold: float = RANDOMISATION_THRESHOLD) -> dict[str, dict[str, Any]]:
    """Adebayo et al.'s data randomisation (NeurIPS 2018, section 4): each explainer's maps of the true model
    (`maps`, {name: (N, H, W)}) against its maps of `permuted_model`, the same architecture trained on permuted
    labels, on the same images x (N, C, H, W). Returns {name: {"spearman_abs", "ssim": interval over images,
    "passes": mean |maps| Spearman below `threshold` (ours, as the model randomisation's), "threshold"}}."""
    from medimg_core.sanity import explanation_similarity

    targets = [int(target)] * len(x) if isinstance(target, (int, np.integer)) else [int(t) for t in target]
    classes = torch.as_tensor(targets, dtype=torch.long, device=x.device)
    out = {}
    for name, explain in explainers.items():
        other = np.asarray(explain(permuted_model, x, classes), dtype=np.float32)
        sim = explanation_similarity(maps[name], other)
        spearman = interval(sim["spearman_abs"], n_boot, seed)
        out[name] = {"spearman_abs": spearman, "ssim": interval(sim["ssim"], n_boot, seed),
                     "passes": bool(np.isfinite(spearman["value"]) and spearman["value"] < threshold),
                     "threshold": threshold}
    return out

"""Sanity checks for explanations: does an explanation change when the model does?

Adebayo, Gilmer, Muelly, Goodfellow, Hardt, Kim, "Sanity Checks for Saliency Maps", NeurIPS 2018:

- model parameter randomisation (section 3): the explanation of a trained model is compared with the
  explanation of the same model after its weights are re-initialised, **cascading** from the top layer (the
  logits) down to the bottom, one more layer at each step, and **independently** (one layer at a time, the
  others trained). `cascading_randomisation`, `independent_randomisation`.
- data randomisation (section 4): the explanation of a model trained on the true labels is compared with
  that of the same architecture trained on randomly permuted labels. Training is the caller's (the benchmark
  trains both); this module gives `permuted_labels` and the comparison, `explanation_similarity`.

The similarity measures are theirs (section 3, and their notebooks, github.com/adebayoj/sanity_checks_saliency,
`inceptionv3_cascading_randomization.ipynb`), per image between the original map and the randomised one:

- `spearman_abs`: Spearman rank correlation of the absolute maps (theirs: of `abs(m) / max(abs(m))`, the same
  ranks);
- `spearman`: Spearman rank correlation of the signed maps (theirs: of `m / max(abs(m))`, the same ranks);
- `ssim`: SSIM (skimage.metrics.structural_similarity, `gaussian_weights=True`) of the maps min-max normalised
  to [0, 1]. Theirs called skimage's 2018 `compare_ssim` on float maps, whose default data range was that of the
  float dtype, 2; ours passes `data_range=1`, the range of the normalised maps. A constant map normalises to
  zeros. SSIM's 11 x 11 Gaussian window needs maps of at least 11 x 11 pixels;
- `hog` (optional, `hog=True`): Spearman rank correlation of the HOG features (skimage.feature.hog,
  `pixels_per_cell=(16, 16)`, as theirs) of the normalised maps; needs maps of at least 48 x 48 pixels.

A Spearman correlation where either map is constant is undefined (NaN); means skip NaN. Explanations that are
not maps (concept scores, prototype similarities: a vector (N, D) per image) are compared by the two Spearman
correlations alone (ours: the paper randomises saliency maps only), so every explanation type can be checked.

What is ours, not theirs:

- The layers and their order. Adebayo et al. randomise the named blocks of Inception v3 from the logits down.
  Here `layers` are module names of the model (`model.named_modules()`); the default (`default_layer_order`) is
  every module that owns parameters directly, in the reverse of the order the modules were registered, which for
  the usual CNNs (timm's included) is their leaf convolutions, norms and linear layers from the head down; an
  entry of the default order randomises that module's own parameters (a ViT's top module: its position embedding
  and class token, not its blocks). Pass your own top-down list for coarser steps: a name you give randomises
  every parameter inside that module (a whole block).
- Re-initialisation: each randomised module's `reset_parameters()` (PyTorch's own initialisation of that layer
  type, what a freshly built model gets; for BatchNorm also its running statistics), under a seed derived from
  `seed` and the layer's name, so a layer gets the same random weights in the cascading and the independent
  test; a module without `reset_parameters` has each of its own parameters drawn from a truncated normal with
  the standard deviation of its trained values (0.02 where that is 0). Theirs re-ran the TensorFlow
  initialisers of their Inception v3 (truncated normals).
- The class explained at every step is the one explained on the trained model (`target`, or the trained
  model's prediction), so a change of prediction does not change the question.
- The model is copied (`copy.deepcopy`) and put in eval mode; the caller's model is never modified.
- `passes_model_randomisation`: a yes/no summary with a threshold of our choosing on the mean `spearman_abs` at
  the fully randomised step (`RANDOMISATION_THRESHOLD`); Adebayo et al. report curves, not a threshold.
"""

from __future__ import annotations

import copy
import hashlib
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from scipy.stats import spearmanr
from skimage.feature import hog as skimage_hog
from skimage.metrics import structural_similarity
from torch import nn

from medimg_core.faithfulness import resolve_targets

#: an explainer: (model, images (N, C, H, W), classes (N,) long) -> maps (N, H, W) or scores (N, D), numpy or tensor
Explain = Callable[[nn.Module, torch.Tensor, torch.Tensor], Any]

MEASURES: tuple[str, ...] = ("spearman_abs", "spearman", "ssim", "hog")

#: ours: an explainer passes the model-randomisation check when the mean rank correlation of its absolute maps
#: with the trained model's, after every layer is randomised, is below this
RANDOMISATION_THRESHOLD = 0.5

_SSIM_MIN_SIDE = 11  # skimage's Gaussian window (sigma 1.5, truncate 3.5)
_HOG_CELL = 16
_HOG_MIN_SIDE = 3 * _HOG_CELL  # skimage.feature.hog's default cells_per_block (3, 3)


# ------------------------------------------------------------------------------------------------ similarity


def _as_maps(maps: Any, name: str) -> np.ndarray:
    arr = maps.detach().cpu().double().numpy() if isinstance(maps, torch.Tensor) else np.asarray(maps, dtype=float)
    if arr.ndim not in (2, 3):
        raise ValueError(f"{name} must be maps (N, H, W) or score vectors (N, D), got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contain NaN or infinite values")
    return arr


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel(), b.ravel()
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return math.nan
    return float(spearmanr(a, b).statistic)


def _unit(m: np.ndarray) -> np.ndarray:
    lo, hi = m.min(), m.max()
    return (m - lo) / (hi - lo) if hi > lo else np.zeros_like(m)


def explanation_similarity(maps_a: Any, maps_b: Any, hog: bool = False) -> dict[str, Any]:
    """Adebayo et al.'s similarity of two sets of maps (N, H, W), image by image (see the module docstring).

    Returns {measure: (N,) per image, measure + "_mean": the mean over images (NaN skipped)} for measure in
    spearman_abs, spearman, ssim (and hog when `hog`). Identical maps score 1 on every measure; a map and its
    negation score spearman -1, spearman_abs 1 and a negative SSIM.

    Explanations that are not maps (concept scores, prototype similarities, rule activations: one vector
    (N, D) per image) get the two rank correlations only; ours, the paper compares maps."""
    a, b = _as_maps(maps_a, "maps_a"), _as_maps(maps_b, "maps_b")
    if a.shape != b.shape:
        raise ValueError(f"maps_a {a.shape} and maps_b {b.shape} must have the same shape (N, H, W) or (N, D)")
    if a.ndim == 2:
        if hog:
            raise ValueError("the HOG similarity needs maps (N, H, W), got score vectors (N, D)")
        return _summarise({"spearman_abs": [_spearman(np.abs(va), np.abs(vb)) for va, vb in zip(a, b, strict=True)],
                           "spearman": [_spearman(va, vb) for va, vb in zip(a, b, strict=True)]})
    side = min(a.shape[1:])
    if side < _SSIM_MIN_SIDE:
        raise ValueError(f"SSIM's 11 x 11 window needs maps of at least 11 x 11 pixels, got {a.shape[1:]}; "
                         "upsample the maps to the image size first")
    if hog and side < _HOG_MIN_SIDE:
        raise ValueError(f"the HOG similarity (16 x 16 cells, 3 x 3 cells per block) needs maps of at least "
                         f"{_HOG_MIN_SIDE} x {_HOG_MIN_SIDE} pixels, got {a.shape[1:]}")
    out: dict[str, list[float]] = {"spearman_abs": [], "spearman": [], "ssim": []}
    if hog:
        out["hog"] = []
    for ma, mb in zip(a, b, strict=True):
        out["spearman_abs"].append(_spearman(np.abs(ma), np.abs(mb)))
        out["spearman"].append(_spearman(ma, mb))
        ua, ub = _unit(ma), _unit(mb)
        out["ssim"].append(float(structural_similarity(ua, ub, data_range=1.0, gaussian_weights=True)))
        if hog:
            ha = skimage_hog(ua, pixels_per_cell=(_HOG_CELL, _HOG_CELL))
            hb = skimage_hog(ub, pixels_per_cell=(_HOG_CELL, _HOG_CELL))
            out["hog"].append(_spearman(ha, hb))
    return _summarise(out)


def _summarise(out: Mapping[str, list[float]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, values in out.items():
        arr = np.asarray(values, dtype=np.float64)
        result[key] = arr
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN: the mean is NaN
            result[f"{key}_mean"] = float(np.nanmean(arr)) if len(arr) else math.nan
    return result


# ------------------------------------------------------------------------------------------ model randomisation


def default_layer_order(model: nn.Module) -> list[str]:
    """The names of the modules of `model` that own parameters directly, top (last registered) first."""
    return [name for name, m in reversed(list(model.named_modules()))
            if any(True for _ in m.parameters(recurse=False))]


def _check_layers(model: nn.Module, layers: Sequence[str] | None) -> list[str]:
    if layers is None:
        layers = default_layer_order(model)
        if not layers:
            raise ValueError("the model has no parameters to randomise")
        return layers
    if isinstance(layers, str):
        raise ValueError(f"layers must be a list of module names, got the string {layers!r}")
    modules = dict(model.named_modules())
    known = default_layer_order(model)
    for name in layers:
        if name not in modules:
            raise ValueError(f"unknown layer {name!r}; modules with parameters, top down: {known}")
        if not any(True for _ in modules[name].parameters()):
            raise ValueError(f"layer {name!r} has no parameters to randomise; modules with parameters: {known}")
    if len(set(layers)) != len(layers):
        raise ValueError(f"layers must not repeat a name, got {list(layers)}")
    return list(layers)


def _layer_seed(seed: int, name: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{name}".encode()).digest()[:4], "little")


@torch.no_grad()
def randomise_layer(module: nn.Module, seed: int, recurse: bool = True) -> None:
    """Re-initialise the parameters of `module` in place, under `seed`: of every module inside it (itself
    included), or only its own parameters when not `recurse`. `reset_parameters()` where a module has it, else
    each parameter drawn from a truncated normal (cut at 2 sd) with the std of its current values."""
    cuda = sorted({p.device.index or 0 for p in module.parameters() if p.is_cuda})
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(seed)
        for sub in module.modules() if recurse else [module]:
            own = list(sub.parameters(recurse=False))
            if not own:
                continue
            if callable(getattr(sub, "reset_parameters", None)):
                sub.reset_parameters()
                continue
            for p in own:
                std = float(p.std()) if p.numel() > 1 else 0.0
                std = std if std > 0 else 0.02
                nn.init.trunc_normal_(p, std=std, a=-2 * std, b=2 * std)


def _explain(explain: Explain, model: nn.Module, x: torch.Tensor, classes: torch.Tensor) -> np.ndarray:
    maps = explain(model, x.clone(), classes.clone())
    for p in model.parameters():  # gradients an explainer left behind are not copied into the next step
        p.grad = None
    maps = _as_maps(maps, "the explainer's maps")
    if maps.ndim == 3 and maps.shape != (x.shape[0], *x.shape[2:]):
        raise ValueError(f"the explainer must return maps (N, H, W) = {(x.shape[0], *x.shape[2:])}, got "
                         f"{maps.shape}; upsample low-resolution maps to the image size")
    if maps.ndim == 2 and len(maps) != len(x):
        raise ValueError(f"the explainer must return one score vector per image, (N = {len(x)}, D), got {maps.shape}")
    return maps


def _randomisation(model: nn.Module, x: torch.Tensor, explain: Explain, target: Any, layers: Sequence[str] | None,
                   seed: int, hog: bool, return_maps: bool, cascading: bool) -> dict[str, Any]:
    if not isinstance(x, torch.Tensor) or x.ndim != 4 or not x.is_floating_point():
        raise ValueError(f"images must be a float tensor (N, C, H, W), got {getattr(x, 'shape', type(x).__name__)}")
    whole = layers is not None  # a name the caller gives means the whole module; the default's own parameters
    layers = _check_layers(model, layers)
    trained = copy.deepcopy(model).eval()
    classes = resolve_targets(trained, x, target)
    original = _explain(explain, trained, x, classes)
    working = copy.deepcopy(trained)
    steps = []
    for i, name in enumerate(layers):
        if not cascading:
            working = copy.deepcopy(trained)
        randomise_layer(working.get_submodule(name), _layer_seed(seed, name), recurse=whole)
        maps = _explain(explain, working, x, classes)
        step: dict[str, Any] = {"layer": name, "randomised": list(layers[:i + 1]) if cascading else [name]}
        step.update(explanation_similarity(original, maps, hog=hog))
        if return_maps:
            step["maps"] = maps
        steps.append(step)
    out: dict[str, Any] = {"mode": "cascading" if cascading else "independent", "layers": list(layers),
                           "target": classes.cpu().numpy(), "steps": steps}
    if return_maps:
        out["original_maps"] = original
    return out


def cascading_randomisation(model: nn.Module, x: torch.Tensor, explain: Explain,
                            target: int | Sequence[int] | torch.Tensor | None = None,
                            layers: Sequence[str] | None = None, seed: int = 0, hog: bool = False,
                            return_maps: bool = False) -> dict[str, Any]:
    """Adebayo et al.'s cascading model-parameter randomisation of an explainer on images x (N, C, H, W).

    explain(model, x, classes) -> (N, H, W) maps, or (N, D) score vectors for explanations that are not maps
    (numpy or tensor); it gets a copy of the model, in eval mode.
    target: the class per image (None: the trained model's prediction), kept at every step. layers: module names
    top down (default `default_layer_order(model)`); step i has layers[0..i] re-initialised. seed: the random
    weights (`randomise_layer`).

    Returns {"mode": "cascading", "layers", "target": (N,), "steps": [{"layer": the layer randomised at this
    step, "randomised": all randomised so far, "spearman_abs": (N,), "spearman_abs_mean", "spearman",
    "spearman_mean", "ssim", "ssim_mean" (and "hog", "hog_mean"), "maps" when return_maps}, ...]} and
    "original_maps" when return_maps. The caller's model is not modified."""
    return _randomisation(model, x, explain, target, layers, seed, hog, return_maps, cascading=True)


def independent_randomisation(model: nn.Module, x: torch.Tensor, explain: Explain,
                              target: int | Sequence[int] | torch.Tensor | None = None,
                              layers: Sequence[str] | None = None, seed: int = 0, hog: bool = False,
                              return_maps: bool = False) -> dict[str, Any]:
    """Adebayo et al.'s independent (one layer at a time) randomisation: as `cascading_randomisation`, but step i
    re-initialises layers[i] alone in a fresh copy of the trained model ("mode": "independent")."""
    return _randomisation(model, x, explain, target, layers, seed, hog, return_maps, cascading=False)


def passes_model_randomisation(result: Mapping[str, Any], threshold: float = RANDOMISATION_THRESHOLD,
                               measure: str = "spearman_abs") -> bool:
    """Ours, not Adebayo et al.'s: True when the explanation has changed, i.e. the mean `measure` between the
    trained model's maps and the maps after the last step of a `cascading_randomisation` (every layer
    randomised) is below `threshold`. An undefined (NaN) similarity does not pass."""
    if result.get("mode") != "cascading" or not result.get("steps"):
        raise ValueError("passes_model_randomisation takes the result of cascading_randomisation")
    if measure not in MEASURES:
        raise ValueError(f"measure must be one of {MEASURES}, got {measure!r}")
    last = result["steps"][-1]
    if f"{measure}_mean" not in last:
        raise ValueError(f"the result has no {measure!r} (ssim and hog are computed for maps only, hog with "
                         "hog=True)")
    value = last[f"{measure}_mean"]
    return bool(value < threshold)  # NaN < t is False


def randomisation_summary(results: Mapping[str, Mapping[str, Any]], threshold: float = RANDOMISATION_THRESHOLD,
                          measure: str = "spearman_abs") -> dict[str, dict[str, Any]]:
    """{explainer name: {"final_<measure>": its mean similarity with every layer randomised, per measure
    computed, "passes": passes_model_randomisation(...), "threshold", "measure"}} for cascading results."""
    out = {}
    for name, result in results.items():
        last = result["steps"][-1] if result.get("steps") else {}
        row: dict[str, Any] = {f"final_{m}": last[f"{m}_mean"] for m in MEASURES if f"{m}_mean" in last}
        row.update(passes=passes_model_randomisation(result, threshold, measure), threshold=threshold,
                   measure=measure)
        out[name] = row
    return out


def permuted_labels(labels: Any, seed: int = 0) -> Any:
    """Adebayo et al.'s data randomisation: the labels (N,) or (N, K) (rows kept whole) in a random order drawn
    from `seed`, so the label distribution is kept and its link to the images is broken. Returns the same kind
    (numpy array, tensor or list)."""
    is_tensor = isinstance(labels, torch.Tensor)
    arr = labels.detach().cpu().numpy() if is_tensor else np.asarray(labels)
    if arr.ndim == 0 or len(arr) < 2:
        raise ValueError(f"labels must hold at least 2 entries along their first axis, got shape {arr.shape}")
    perm = np.random.default_rng(seed).permutation(len(arr))
    out = arr[perm]
    if is_tensor:
        return torch.as_tensor(out, device=labels.device)
    return out.tolist() if isinstance(labels, list) else out

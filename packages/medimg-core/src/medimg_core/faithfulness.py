"""Faithfulness of saliency maps: the deletion and insertion metrics of RISE.

Petsiuk, Das, Saenko, "RISE: Randomized Input Sampling for Explanation of Black-box Models", BMVC 2018,
section 4.1 ("Causal metrics"): the pixels of an image are removed (deletion) or added (insertion) in order
of decreasing saliency, `step` pixels at a time, and the probability of the explained class is recorded after
each step; the score is the area under that curve (AUC), with the fraction of pixels on the x axis. A faithful
map makes the probability drop fast under deletion (low deletion AUC) and rise fast under insertion (high
insertion AUC). Any map-producing explainer can be scored: the functions take maps, not an explainer.

What we follow from the authors' code (github.com/eclique/RISE, `evaluation.py`, `CausalMetric`, and
`Evaluation.ipynb`), and where we differ:

- Deletion replaces pixels by zeros of the model's input (`torch.zeros_like` in the notebook: zeros of the
  *normalised* tensor, i.e. the dataset mean where inputs are standardised); insertion starts from a blurred
  copy of the image and puts the original pixels back. The blur is theirs: an 11 x 11 kernel made by
  `scipy.ndimage.gaussian_filter(delta, sigma=5)` applied to each channel with zero padding of 5
  (`rise_blur`). Other substrates (a constant, a tensor, a callable) can be given.
- All channels of a pixel change together; `step` pixels per step; `ceil(H * W / step)` steps, so the curve has
  `steps + 1` points, the first before any change; the last step may change fewer than `step` pixels.
- The x axis is `i / steps` for point i (as their `auc` and their plots), so with a partial last step the
  points are evenly spaced, not at the exact fraction of pixels changed. The AUC is the trapezoid rule over
  it, which equals their `auc(arr) = (arr.sum() - arr[0] / 2 - arr[-1] / 2) / (arr.shape[0] - 1)`.
- The default step is one image row (W pixels): their 224 at 224 x 224 px (the notebook's batch evaluation
  used 224 * 8).
- The class is the model's predicted class on the unchanged image when `target` is None (theirs always is);
  a given target is scored instead when passed. Their model ends in a softmax; ours returns logits, so the
  probability is `activation` of the output: "softmax" (the paper's), "sigmoid" (multi-label models) or
  "none" (the model already returns probabilities).
- Ties in the map: theirs order pixels by `np.flip(np.argsort(map))` (numpy's default quicksort, whose order
  of equal values is unspecified); ours is a stable sort on the negated map, so equal values are taken in
  raster order (row by row, left to right). A constant map therefore deletes rows from the top.

Hand-written rather than taken from a library: captum 0.9 has no deletion/insertion metric (its `infidelity`
and `sensitivity_max` are other measures), and pytorch-grad-cam 1.5's metrics (ROAD, confidence change of the
CAM-multiplied image) are other protocols; the RISE definition is short and is tested here against
hand-computed curves.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import numpy as np
import torch
from scipy import ndimage
from torch import nn

from medimg_core.explain import class_targets

MODES: tuple[str, ...] = ("deletion", "insertion")
ACTIVATIONS: tuple[str, ...] = ("softmax", "sigmoid", "none")

#: the blur of RISE's insertion metric (Evaluation.ipynb: klen = 11, ksig = 5)
RISE_BLUR_SIZE = 11
RISE_BLUR_SIGMA = 5.0

Substrate = float | torch.Tensor | Callable[[torch.Tensor], torch.Tensor] | None


def rise_blur(x: torch.Tensor, size: int = RISE_BLUR_SIZE, sigma: float = RISE_BLUR_SIGMA) -> torch.Tensor:
    """The insertion substrate of RISE: each channel of `x` (N, C, H, W) convolved with a `size` x `size`
    Gaussian kernel (scipy's `gaussian_filter` of a centred delta, sigma `sigma`), zero-padded by size // 2, as
    the authors' `gkern` + `conv2d`. Returns a tensor of the same shape, dtype and device."""
    _check_images(x)
    if size < 1 or size % 2 == 0:
        raise ValueError(f"the blur kernel size must be a positive odd number, got {size}")
    delta = np.zeros((size, size))
    delta[size // 2, size // 2] = 1.0
    kernel = torch.as_tensor(ndimage.gaussian_filter(delta, sigma), dtype=x.dtype, device=x.device)
    channels = x.shape[1]
    weight = kernel.expand(channels, 1, size, size)
    return nn.functional.conv2d(x, weight, padding=size // 2, groups=channels)


def _check_images(x: Any) -> None:
    if not isinstance(x, torch.Tensor) or x.ndim != 4 or not x.is_floating_point():
        shape = tuple(x.shape) if hasattr(x, "shape") else type(x).__name__
        raise ValueError(f"images must be a float tensor (N, C, H, W), got {shape}")


def _check_maps(maps: Any, n: int, hw: tuple[int, int]) -> np.ndarray:
    maps = maps.detach().cpu().float().numpy() if isinstance(maps, torch.Tensor) else np.asarray(maps, dtype=float)
    if maps.shape != (n, *hw):
        raise ValueError(f"maps must be (N, H, W) = {(n, *hw)} like the images, got {maps.shape}; upsample "
                         "low-resolution maps (e.g. torch.nn.functional.interpolate, mode='bilinear') first")
    if not np.isfinite(maps).all():
        raise ValueError("maps contain NaN or infinite values")
    return maps


def _probabilities(out: torch.Tensor, activation: str) -> torch.Tensor:
    if out.ndim != 2:
        raise ValueError(f"the model must return (N, K) scores, got shape {tuple(out.shape)}")
    if activation == "softmax":
        return out.float().softmax(dim=1)
    if activation == "sigmoid":
        return out.float().sigmoid()
    return out.float()


@torch.no_grad()
def resolve_targets(model: nn.Module, x: torch.Tensor, target: int | Sequence[int] | torch.Tensor | np.ndarray | None,
                    batch_size: int = 64) -> torch.Tensor:
    """The class index to explain per image, (N,) long on x's device: the model's predicted class (argmax of its
    output on `x` (N, C, H, W), `batch_size` images a pass) for None, else `target` (one int for all images or
    N ints), checked against the number of outputs (`medimg_core.explain.class_targets`)."""
    out = torch.cat([model(x[lo:lo + batch_size]) for lo in range(0, len(x), batch_size)])
    return torch.as_tensor(class_targets(out, target), dtype=torch.long, device=x.device)


def _substrate(x: torch.Tensor, mode: str, substrate: Substrate) -> torch.Tensor:
    if substrate is None:
        return torch.zeros_like(x) if mode == "deletion" else rise_blur(x)
    if isinstance(substrate, (int, float)):
        return torch.full_like(x, float(substrate))
    out = substrate(x) if callable(substrate) else substrate
    if not isinstance(out, torch.Tensor) or out.shape != x.shape:
        shape = tuple(out.shape) if hasattr(out, "shape") else type(out).__name__
        raise ValueError(f"the substrate must be a float, an (N, C, H, W) tensor like the images {tuple(x.shape)} "
                         f"or a callable returning one; got {shape}")
    return out.to(device=x.device, dtype=x.dtype)


def deletion_insertion(
    model: nn.Module,
    x: torch.Tensor,
    maps: np.ndarray | torch.Tensor,
    target: int | Sequence[int] | torch.Tensor | np.ndarray | None = None,
    mode: Literal["deletion", "insertion"] = "deletion",
    step: int | None = None,
    substrate: Substrate = None,
    activation: Literal["softmax", "sigmoid", "none"] = "softmax",
    batch_size: int = 64,
) -> dict[str, np.ndarray]:
    """RISE's deletion or insertion curve and AUC (Petsiuk et al., BMVC 2018, section 4.1) of each map.

    model: returns (N, K) scores for (N, C, H, W) inputs; it is called in eval mode (its mode is restored).
    x: (N, C, H, W) images as the model takes them (normalised). maps: (N, H, W) saliency, higher = more salient.
    target: the class per image (None: the predicted class on `x`). mode: "deletion" (pixels of `x` replaced by
    the substrate, zeros by default) or "insertion" (pixels of `x` put into the substrate, the RISE blur of `x` by
    default). step: pixels changed per step (default W, one row). substrate: a float, an (N, C, H, W) tensor or
    a callable x -> tensor. activation: how the output becomes the class probability. batch_size: model inputs
    per forward pass.

    Returns {"auc": (N,), "curve": (N, steps + 1) probabilities, "fraction": (steps + 1,) the x axis i / steps,
    "target": (N,) the classes scored}.
    """
    _check_images(x)
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    n, _, h, w = x.shape
    step = w if step is None else step
    if not isinstance(step, (int, np.integer)) or not 1 <= step <= h * w:
        raise ValueError(f"step must be an int in [1, H * W = {h * w}], got {step!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    maps = _check_maps(maps, n, (h, w))
    steps = -(-h * w // step)
    # rank[i, p] = position of pixel p in image i's order of decreasing saliency (ties: raster order)
    order = np.argsort(-maps.reshape(n, -1), axis=1, kind="stable")
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.arange(h * w)[None, :].repeat(n, axis=0), axis=1)
    rank_t = torch.as_tensor(rank, device=x.device)

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            classes = resolve_targets(model, x, target, batch_size)
            finish = _substrate(x, mode, substrate)
            start = x
            if mode == "insertion":
                start, finish = finish, x
            pairs = torch.cartesian_prod(torch.arange(n), torch.arange(steps + 1)).to(x.device)
            probs = torch.empty(len(pairs), device=x.device)
            for lo in range(0, len(pairs), batch_size):
                idx, k = pairs[lo:lo + batch_size, 0], pairs[lo:lo + batch_size, 1]
                changed = (rank_t[idx] < (k * step)[:, None]).reshape(-1, 1, h, w)
                batch = torch.where(changed, finish[idx], start[idx])
                p = _probabilities(model(batch), activation)
                probs[lo:lo + batch_size] = p.gather(1, classes[idx][:, None])[:, 0]
    finally:
        model.train(was_training)
    curve = probs.reshape(n, steps + 1).double().cpu().numpy()
    fraction = np.arange(steps + 1) / steps
    return {"auc": np.trapezoid(curve, fraction, axis=1), "curve": curve, "fraction": fraction,
            "target": classes.cpu().numpy()}

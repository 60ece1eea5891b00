"""Placing feature-grid maps on the input image.

A CNN's feature cell (i, j) is centred on input pixel (origin_y + i * step_y, origin_x + j * step_x), where
step is the stride and the origin depends on the architecture's padding: for timm's ResNets the centre of cell
0 is pixel 0, for ViT patches it is (stride - 1) / 2. Resizing a map with `align_corners=False` (as cv2.resize
and the released code do) assumes the latter, which draws a ResNet's maps half a cell (3.5 px at stride 8)
down and to the right of where the features look. `feature_grid` measures the origin of any backbone once,
from the centroid of the input gradient of the central cell (its effective receptive field), and
`upsample` interpolates bicubically on that grid.

A class's prototype maps become one class map (`class_maps`, MAP_KINDS): the most activated prototype's, the
maximum over the class's prototypes, or their sum weighted by the last layer (`weighted_class_maps`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F


class MapStepError(ValueError):
    """A shift-and-stitch step that does not divide the backbone's stride."""


@dataclass(frozen=True)
class FeatureGrid:
    """Input-pixel coordinates of the feature cells' centres: origin + index * step (pixel centres are integers)."""

    origin: tuple[float, float]
    step: tuple[float, float]
    shape: tuple[int, int]


def naive_grid(shape: tuple[int, int], size: tuple[int, int]) -> FeatureGrid:
    """The grid `align_corners=False` resizing assumes: cell centres at (i + 0.5) * step - 0.5."""
    step = (size[0] / shape[0], size[1] / shape[1])
    return FeatureGrid(((step[0] - 1) / 2, (step[1] - 1) / 2), step, tuple(shape))


def feature_grid(model: torch.nn.Module, size: tuple[int, int], channels: int, seed: int = 0) -> FeatureGrid:
    """The measured grid of `model.backbone` for inputs of `size` (H, W): its origin is the gradient centroid of
    the central cell minus its index times the stride. `model` is a CIPL (its backbone's forward_features)."""
    backbone = model.backbone
    was_training = backbone.training
    backbone.eval()
    device = next(model.parameters()).device
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, channels, *size, generator=g).to(device).requires_grad_(True)
    with torch.enable_grad():
        f = backbone.forward_features(x)
        h, w = f.shape[-2:]
        ci, cj = h // 2, w // 2
        (f[0, :, ci, cj].float() ** 2).sum().backward()
    backbone.train(was_training)
    weight = x.grad.detach().abs().sum(dim=(0, 1)).cpu().double()  # (H, W)
    step = (size[0] / h, size[1] / w)
    if not torch.isfinite(weight).all() or float(weight.sum()) == 0.0:
        return naive_grid((h, w), size)
    ys = torch.arange(size[0], dtype=torch.float64)
    xs = torch.arange(size[1], dtype=torch.float64)
    cy = float((weight.sum(1) * ys).sum() / weight.sum())
    cx = float((weight.sum(0) * xs).sum() / weight.sum())
    return FeatureGrid((cy - ci * step[0], cx - cj * step[1]), step, (int(h), int(w)))


def upsample(maps: torch.Tensor, size: tuple[int, int], grid: FeatureGrid | None = None) -> torch.Tensor:
    """Bicubic interpolation of maps (..., h, w) to (..., H, W), cell centres placed on `grid` (None: the
    `align_corners=False` placement); beyond the outer cell centres the border value is kept."""
    lead, (h, w) = maps.shape[:-2], maps.shape[-2:]
    flat = maps.reshape(-1, 1, h, w).float()
    if grid is None:
        out = F.interpolate(flat, size=tuple(size), mode="bicubic", align_corners=False)
        return out.reshape(*lead, *size)
    coords = []
    for axis, n in enumerate((h, w)):
        p = torch.arange(size[axis], dtype=torch.float32, device=maps.device)
        u = (p - grid.origin[axis]) / grid.step[axis]  # position in cell units
        coords.append(2 * u / (n - 1) - 1 if n > 1 else torch.zeros_like(u))
    gy, gx = torch.meshgrid(coords[0], coords[1], indexing="ij")
    sample = torch.stack([gx, gy], dim=-1).expand(flat.shape[0], -1, -1, -1)
    out = F.grid_sample(flat, sample, mode="bicubic", padding_mode="border", align_corners=True)
    return out.reshape(*lead, *size)


def upsample_numpy(activation: torch.Tensor, size: tuple[int, int], grid: FeatureGrid | None = None) -> np.ndarray:
    """(h, w) map -> (H, W) float32 array (see `upsample`)."""
    return upsample(activation.detach().float().cpu(), size, grid).numpy()


def dense_distance_maps(model: torch.nn.Module, x: torch.Tensor, step: int, grid: FeatureGrid | None = None,
                        unshifted: torch.Tensor | None = None) -> tuple[torch.Tensor, FeatureGrid]:
    """Prototype distance maps sampled every `step` input pixels by shift-and-stitch (Long et al., CVPR 2015).

    A backbone of stride s sees the image only at its cell centres. Evaluating it on the image shifted by every
    (dy, dx) in {0, step, ..., s - step}^2 (content moved up-left, border pixels repeated) and interleaving the
    maps gives the distances at every `step`-th pixel, each computed exactly as the model computes them, with
    no interpolation. x (B, C, H, W) -> (distance maps (B, P, h * s / step, w * s / step), their grid with
    `grid.origin` and step `step`). `model` is a CIPL; `grid` its measured feature grid (None: measured here).
    s / step forward passes per axis: step = s gives the model's own maps. `unshifted`: the model's distance maps
    of x itself, when the caller has them (that pass is then not repeated).
    """
    grid = grid or feature_grid(model, tuple(x.shape[-2:]), x.shape[1])
    stride = grid.step[0]
    if grid.step[0] != grid.step[1] or stride != int(stride):
        raise MapStepError(f"dense maps need one integer stride for both axes, got {grid.step}")
    stride = int(stride)
    if step < 1 or stride % step:
        raise MapStepError(f"map step must divide the backbone stride {stride}, got {step}")
    n = stride // step
    rows = []
    for a in range(n):
        row = []
        for b in range(n):
            dy, dx = a * step, b * step
            if not (dy or dx) and unshifted is not None:
                row.append(unshifted)
                continue
            shifted = F.pad(x, (0, dx, 0, dy), mode="replicate")[..., dy:, dx:] if dy or dx else x
            row.append(model(shifted)["distance_maps"])  # (B, P, h, w): cell (i, j) sees pixel c_ij + (dy, dx)
        rows.append(torch.stack(row))
    maps = torch.stack(rows)  # (n_a, n_b, B, P, h, w)
    _, _, b_, p_, h, w = maps.shape
    dense = maps.permute(2, 3, 4, 0, 5, 1).reshape(b_, p_, h * n, w * n)  # row i * n + a, column j * n + b
    return dense, FeatureGrid(grid.origin, (float(step), float(step)), (h * n, w * n))


def sampled_distance_maps(model: torch.nn.Module, x: torch.Tensor, distance_maps: torch.Tensor,
                          map_step: int | None = None, grid: FeatureGrid | None = None
                          ) -> tuple[torch.Tensor, FeatureGrid]:
    """The distance maps (B, P, h, w) the model computed for x (B, C, H, W), on its grid (None: measured here), or
    with `map_step` the same maps sampled every `map_step` pixels (`dense_distance_maps`, reusing `distance_maps`
    as its unshifted pass) on their finer grid."""
    grid = grid or feature_grid(model, tuple(x.shape[-2:]), x.shape[1])
    if map_step is None:
        return distance_maps, grid
    return dense_distance_maps(model, x, map_step, grid, unshifted=distance_maps)


#: how a class's prototype maps become one map: the most activated prototype's (the first row of `cipl reason`),
#: the maximum over the class's prototypes, or the sum weighted by the last layer (the class logit's spatial
#: distribution)
MAP_KINDS = ("top", "max", "weighted")


@torch.no_grad()
def class_maps(model: torch.nn.Module, x: torch.Tensor, size: tuple[int, int] | None = None, kind: str = "weighted",
               grid: FeatureGrid | None = None, map_step: int | None = None) -> torch.Tensor:
    """(B, K, H, W) one similarity map per class (see MAP_KINDS), upsampled bicubically to `size` (default the
    input size) on the feature grid `grid` (None: measured from the model). `map_step`: sample the maps every
    `map_step` pixels by shift-and-stitch (`cipl.maps.dense_distance_maps`) instead of once per feature cell;
    the most activated prototype is the model's own choice either way."""
    if kind not in MAP_KINDS:
        raise ValueError(f"map kind must be one of {MAP_KINDS}, got {kind!r}")
    return class_maps_by_kind(model, x, size, grid, map_step, (kind,))[kind]


@torch.no_grad()
def class_maps_by_kind(model: torch.nn.Module, x: torch.Tensor, size: tuple[int, int] | None = None,
                       grid: FeatureGrid | None = None, map_step: int | None = None,
                       kinds: tuple[str, ...] = MAP_KINDS) -> dict[str, torch.Tensor]:
    """`class_maps` for several kinds from one pass of the model (and one set of shifted passes): {kind: maps}."""
    out = model(x)
    distance_maps, grid = sampled_distance_maps(model, x, out["distance_maps"], map_step, grid)
    act = model.similarity(distance_maps)  # (B, P, h, w)
    b, _, h, w = act.shape
    m = model.prototypes_per_class
    blocks = act.view(b, model.num_classes, m, h, w)
    size = size or tuple(x.shape[-2:])
    scaled = scaled_grid(grid, tuple(x.shape[-2:]), size)
    maps = {}
    for kind in kinds:
        if kind == "max":
            per_class = blocks.amax(dim=2)
        elif kind == "weighted":
            per_class = weighted_class_maps(model, act)
        else:
            top = out["similarities"].view(b, model.num_classes, m).argmax(dim=2)  # (B, K)
            per_class = blocks.gather(2, top.view(b, model.num_classes, 1, 1, 1).expand(-1, -1, 1, h, w))[:, :, 0]
        maps[kind] = upsample(per_class, size, scaled)
    return maps


def weighted_class_maps(model: torch.nn.Module, similarity_maps: torch.Tensor) -> torch.Tensor:
    """(B, P, h, w) prototype similarity maps -> (B, K, h, w): each class's maps summed with their own last-layer
    weights (the class logit's spatial distribution: its maximum over cells is not the logit, whose terms take
    each prototype's own maximum, but it shows where the class's prototypes agree)."""
    b, _, h, w = similarity_maps.shape
    k, m = model.num_classes, model.prototypes_per_class
    weights = (model.last_layer.weight * model.class_mask).view(k, k, m)
    own = weights[torch.arange(k), torch.arange(k)]  # (K, M)
    return (similarity_maps.view(b, k, m, h, w) * own.view(1, k, m, 1, 1)).sum(dim=2)


def scaled_grid(grid: FeatureGrid, input_hw: tuple[int, int], size: tuple[int, int]) -> FeatureGrid:
    """`grid` (in input pixels) expressed in the pixels of an image of `size`."""
    if tuple(size) == tuple(input_hw):
        return grid
    scale = (size[0] / input_hw[0], size[1] / input_hw[1])
    return FeatureGrid(((grid.origin[0] + 0.5) * scale[0] - 0.5, (grid.origin[1] + 0.5) * scale[1] - 0.5),
                       (grid.step[0] * scale[0], grid.step[1] * scale[1]), grid.shape)

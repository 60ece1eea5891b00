"""Weakly supervised localisation against ground-truth boxes and pixel masks: the ChestX-ray8 box protocol, the
pointing game, IoU against masks and the energy-based pointing game.

The protocol of Wang et al., "ChestX-ray8", CVPR 2017 (section 5.3), as we read it: a class's heat-map is
thresholded and a bounding box drawn around each connected region of the binary map ("B-Boxes are generated to
cover the isolated regions in the binary images"); a ground-truth box counts as localised at threshold T when a
generated box overlaps it with

- IoBB = area(generated ∩ ground truth) / area(generated) > T, at T(IoBB) in 0.1, 0.25, 0.5, 0.75, 0.9, or
- IoU  = area(generated ∩ ground truth) / area(generated ∪ ground truth) > T, at T(IoU) in 0.1 ... 0.7,

and the accuracy at T is the fraction of ground-truth boxes localised. Where a map has several regions, the
best-matching generated box counts (the paper does not say how several boxes are matched; this is the lenient
reading, under which one small region inside the box localises it). How the heat-map is thresholded is ours:
min-max normalised, then `>= map_threshold` of its range (0.5 by default; the paper thresholds 0-255 intensities
without naming one value).
Pointing game (Zhang et al., "Top-down Neural Attention by Excitation Backprop", ECCV 2016, without their
15-pixel tolerance): a hit when the map's maximum lies in the box or mask. Ties: where several pixels share the
maximum, the first in raster order (row by row, numpy's argmax) is the one pointed at, for boxes and masks alike;
`score_mask` reports how many pixels share it (`peak_pixels`), so a flat map, which points at its top-left
pixel, can be told apart.

Against a pixel mask (the synthetic generators' findings; `score_mask`):
- the pointing game as above;
- IoU = |thresholded map ∩ mask| / |thresholded map ∪ mask|, pixel by pixel, the map thresholded as for boxes
  (`threshold_map`: one function for both);
- the energy-based pointing game of Wang et al., "Score-CAM: Score-Weighted Visual Explanations for
  Convolutional Neural Networks", CVPR Workshops 2020, section 5.2 (`energy_pointing_game`): the share of the
  map's energy inside the mask, sum(L inside) / (sum(L inside) + sum(L outside)). Their maps are ReLU'd CAMs;
  ours may be signed, so the energy is that of the positive part max(L, 0), with the map not otherwise
  normalised (a min-max normalisation would change the share). Undefined (NaN) when the map has no positive
  value. For a box, `energy_pointing_game(heatmap, box_mask(box, heatmap.shape))` is their exact setting, and
  `score_box` reports it as "energy".

Boxes are (x0, y0, x1, y1) in pixels of the map, half-open: pixel (row r, column c) is inside when its centre
(c + 0.5, r + 0.5) is. Connected regions are scipy.ndimage's (8-connected), so no labelling is hand-written here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import ndimage

#: the thresholds of ChestX-ray8's localisation tables
IOBB_THRESHOLDS: tuple[float, ...] = (0.1, 0.25, 0.5, 0.75, 0.9)
IOU_THRESHOLDS: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)

Box = tuple[float, float, float, float]


def rescale_box(box_xywh: Sequence[float], frame_hw: tuple[int, int], size_hw: tuple[int, int],
                crop: tuple[float, float, float, float] | None = None) -> Box | None:
    """A box (x, y, w, h) given in the pixels of a `frame_hw` (H, W) image -> (x0, y0, x1, y1) in the pixels of
    the same image resized (squashed) to `size_hw`, after an optional `crop` (top, left, height, width, in frame
    pixels) that is resized to `size_hw` instead; the box is clipped to the crop. None when nothing of it is left."""
    x, y, w, h = (float(v) for v in box_xywh)
    if not all(np.isfinite([x, y, w, h])) or w <= 0 or h <= 0:
        raise ValueError(f"a box needs finite x, y and positive w, h; got {tuple(box_xywh)}")
    top, left, ch, cw = (0.0, 0.0, float(frame_hw[0]), float(frame_hw[1])) if crop is None else map(float, crop)
    x0, y0 = max(x, left) - left, max(y, top) - top
    x1, y1 = min(x + w, left + cw) - left, min(y + h, top + ch) - top
    if x1 <= x0 or y1 <= y0:
        return None
    sy, sx = size_hw[0] / ch, size_hw[1] / cw
    return x0 * sx, y0 * sy, x1 * sx, y1 * sy


def box_mask(box: Box, size_hw: tuple[int, int]) -> np.ndarray:
    """(H, W) bool: the pixels whose centres lie in the half-open box (x0, y0, x1, y1)."""
    rows = np.arange(size_hw[0]) + 0.5
    cols = np.arange(size_hw[1]) + 0.5
    return ((rows >= box[1]) & (rows < box[3]))[:, None] & ((cols >= box[0]) & (cols < box[2]))[None, :]


def region_boxes(region: np.ndarray) -> list[Box]:
    """The bounding box (x0, y0, x1, y1), in pixels, of each 8-connected region of a binary map (H, W)."""
    labels, _ = ndimage.label(region, structure=np.ones((3, 3), dtype=bool))
    return [(float(s[1].start), float(s[0].start), float(s[1].stop), float(s[0].stop))
            for s in ndimage.find_objects(labels) if s is not None]


def _check_heatmap(heatmap: Any) -> np.ndarray:
    heatmap = np.asarray(heatmap, dtype=np.float64)
    if heatmap.ndim != 2 or not np.isfinite(heatmap).all():
        raise ValueError(f"the heat-map must be a finite (H, W) array, got shape {heatmap.shape}")
    return heatmap


def threshold_map(heatmap: np.ndarray, map_threshold: float = 0.5) -> np.ndarray:
    """(H, W) bool: the pixels of the heat-map (H, W) at or above `map_threshold` of its range after min-max
    normalisation; a constant map is all True (one region, the whole image). The one thresholding of boxes and
    masks."""
    heatmap = _check_heatmap(heatmap)
    if not 0.0 <= map_threshold <= 1.0:
        raise ValueError(f"map_threshold is a fraction of the map's range in [0, 1], got {map_threshold}")
    lo, hi = float(heatmap.min()), float(heatmap.max())
    return (heatmap - lo) / (hi - lo) >= map_threshold if hi > lo else np.ones(heatmap.shape, dtype=bool)


def _peak(heatmap: np.ndarray) -> tuple[int, int]:
    """(row, column) of the map's maximum; ties: the first in raster order."""
    row, col = np.unravel_index(int(np.argmax(heatmap)), heatmap.shape)
    return int(row), int(col)


def energy_pointing_game(heatmap: np.ndarray, mask: np.ndarray) -> float:
    """Score-CAM's energy-based pointing game (Wang et al., CVPR-W 2020, 5.2): the share of the positive part of
    the heat-map (H, W) that lies in the binary `mask` (H, W); NaN when the map has no positive value."""
    heatmap = _check_heatmap(heatmap)
    truth = _check_mask(mask, heatmap.shape)
    energy = np.clip(heatmap, 0.0, None)
    total = float(energy.sum())
    return float(energy[truth].sum()) / total if total > 0 else float("nan")


def _check_mask(mask: Any, shape: tuple[int, ...]) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.shape != shape:
        raise ValueError(f"the mask must have the heat-map's shape {shape}, got {mask.shape}")
    if mask.dtype != bool:
        values = np.unique(mask)
        if not np.isin(values, (0, 1)).all():
            raise ValueError(f"the mask must be binary (bool or 0/1), got values {values[:5].tolist()}"
                             f"{' ...' if len(values) > 5 else ''}; a 0/255 PNG: divide by 255; a resized "
                             "soft mask: threshold it (e.g. mask >= 0.5)")
        mask = mask.astype(bool)
    return mask


def score_mask(heatmap: np.ndarray, mask: np.ndarray, map_threshold: float = 0.5) -> dict[str, Any]:
    """One ground-truth pixel `mask` (H, W), bool or 0/1, against a class heat-map (H, W) in the same pixels.

    Returns {"hit": the map's maximum inside the mask (pointing game; ties: the first maximum in raster order),
    "iou": IoU of the thresholded map (`threshold_map`) with the mask, "energy": the energy-based pointing game,
    "peak_pixels": how many pixels share the maximum}. An empty mask is an error."""
    heatmap = _check_heatmap(heatmap)
    truth = _check_mask(mask, heatmap.shape)
    if not truth.any():
        raise ValueError("the mask is empty: there is nothing to localise (leave the image out)")
    region = threshold_map(heatmap, map_threshold)
    iou = int((region & truth).sum()) / int((region | truth).sum())
    return {"hit": bool(truth[_peak(heatmap)]), "iou": iou, "energy": energy_pointing_game(heatmap, truth),
            "peak_pixels": int((heatmap == heatmap.max()).sum())}


def score_box(heatmap: np.ndarray, box: Box, map_threshold: float = 0.5) -> dict[str, Any]:
    """One ground-truth `box` (x0, y0, x1, y1) against a class heat-map (H, W) in the same pixels.

    Returns {"hit": the map's maximum inside the box (pointing game), "iobb": the best IoBB of the boxes around
    the regions of the thresholded map, "iou": the best IoU, "regions": their number, "energy": the energy-based
    pointing game in the box}. A constant map has one region, the whole image."""
    heatmap = _check_heatmap(heatmap)
    truth = box_mask(box, heatmap.shape)
    if not truth.any():
        raise ValueError(f"box {box} covers no pixel centre of a {heatmap.shape} map")
    region = threshold_map(heatmap, map_threshold)
    peak = _peak(heatmap)
    iobb = iou = 0.0
    boxes = region_boxes(region)
    area_truth = int(truth.sum())
    for generated in boxes:
        mask = box_mask(generated, heatmap.shape)
        inter = int((mask & truth).sum())
        iobb = max(iobb, inter / int(mask.sum()))
        iou = max(iou, inter / (int(mask.sum()) + area_truth - inter))
    return {"hit": bool(truth[peak]), "iobb": iobb, "iou": iou, "regions": len(boxes),
            "energy": energy_pointing_game(heatmap, truth)}


def box_accuracies(iobb: np.ndarray, iou: np.ndarray, iobb_thresholds: Sequence[float] = IOBB_THRESHOLDS,
                   iou_thresholds: Sequence[float] = IOU_THRESHOLDS) -> dict[str, np.ndarray]:
    """Per box, localised or not (0/1 float arrays (N,)) at each threshold: {"iobb_acc@T": ..., "iou_acc@T": ...}
    (strictly above T, as in ChestX-ray8)."""
    out = {f"iobb_acc@{t:g}": (np.asarray(iobb) > t).astype(np.float64) for t in iobb_thresholds}
    out.update({f"iou_acc@{t:g}": (np.asarray(iou) > t).astype(np.float64) for t in iou_thresholds})
    return out

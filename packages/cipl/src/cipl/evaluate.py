"""Evaluation of a trained CIPL: classification metrics with intervals and, where the data carry
per-finding masks (synth-cxr), CIPL's interpretability metrics; where they carry boxes (ChestX-ray14's
BBox_List_2017), the ChestX-ray8 box protocol (`box_localisation_metrics`).

Localisation (per image and finding that is present and detected, i.e. probability > 0.5):
- the class map (h, w) is the class's prototype similarity maps summed with their last-layer weights (the
  class logit's spatial distribution, the "class map" row of `cipl reason`; also reported: the map of the most
  activated prototype, the first prototype row of `cipl reason`, and the maximum over the class's prototypes),
  upsampled bicubically to the input size with each cell at its receptive-field centre (`cipl.maps`);
- pointing game: 1 when the map's maximum lies inside the finding's mask;
- IoU: the map, min-max normalised, thresholded at `iou_threshold` (default 0.5 of its range), against the mask.
For the misses, the median distance (pixels) from the map's maximum to the mask is reported per finding.
- cell pointing game (a diagnostic of the grid's resolution): 1 when the feature cell holding the map's
  maximum (the pixels whose nearest cell centre it is) overlaps the mask. A map peaks at a cell centre, so on
  a coarse grid a finding smaller than a cell, or a peak on the cell just beside a finding's edge, fails the
  pixel-level game while the cell is right.
Pointing game and IoU are also reported over every present finding (detected or not), per finding, with
95% bootstrap intervals over instances.
With `map_step` the maps are sampled every `map_step` pixels by shift-and-stitch (`cipl.maps.dense_distance_maps`)
before the bicubic upsampling; the cell pointing game still uses the backbone's own grid.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

# The class maps live in cipl.maps (a model-level operation that cipl.explain uses too); importing them from here
# keeps `from cipl.evaluate import class_maps, weighted_class_maps, MAP_KINDS` working.
from cipl.maps import (  # noqa: F401
    MAP_KINDS,
    FeatureGrid,
    class_maps,
    class_maps_by_kind,
    feature_grid,
    naive_grid,
    scaled_grid,
    weighted_class_maps,
)
from cipl.model import CIPL
from medimg_core.localisation import score_mask
from medimg_core.metrics import bootstrap_ci


@torch.no_grad()
def predict(model: CIPL, dataset: Dataset, device: str | torch.device = "cpu", batch_size: int = 64,
            progress: bool = False) -> dict[str, np.ndarray]:
    """scores (N, L_out), target (N, L_out) or (N,), ids of `dataset` (eval transforms expected)."""
    model = model.to(device).eval()
    scores, targets, ids = [], [], []
    for batch in tqdm(DataLoader(dataset, batch_size=batch_size, shuffle=False), desc="evaluate: predictions",
                      unit="batch", disable=not progress, leave=False):
        scores.append(model.predict_proba(batch["image"].to(device)).float().cpu().numpy())
        targets.append(batch["target"].numpy())
        ids += list(batch["id"])
    return {"scores": np.concatenate(scores), "target": model.labels.output_targets(np.concatenate(targets)),
            "ids": np.array(ids)}


def cell_of_pixels(grid: FeatureGrid, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """For every row and column of an image of `size` (H, W), the index of the feature cell whose centre is
    nearest (clamped to the grid): ((H,), (W,)) long tensors."""
    out = []
    for axis in range(2):
        p = torch.arange(size[axis], dtype=torch.float64)
        idx = torch.floor((p - grid.origin[axis]) / grid.step[axis] + 0.5).long()
        out.append(idx.clamp(0, grid.shape[axis] - 1))
    return out[0], out[1]


def _cell_box_overlaps(cell: tuple[int, int], rows: torch.Tensor, cols: torch.Tensor, mask: torch.Tensor) -> bool:
    box = (rows == cell[0]).unsqueeze(1) & (cols == cell[1]).unsqueeze(0)
    return bool((box & mask.bool()).any())


def cell_overlaps(cell: tuple[int, int], mask: torch.Tensor, grid: FeatureGrid) -> bool:
    """Whether feature cell `cell` (row, column), i.e. the pixels whose nearest cell centre it is, overlaps
    `mask` (H, W); `grid` in mask pixels."""
    rows, cols = cell_of_pixels(grid, tuple(mask.shape))
    return _cell_box_overlaps(cell, rows, cols, mask)


def cell_hit(peak: tuple[int, int], mask: torch.Tensor, grid: FeatureGrid) -> bool:
    """Whether the feature cell holding pixel `peak` (y, x) overlaps `mask` (H, W); `grid` in mask pixels."""
    rows, cols = cell_of_pixels(grid, tuple(mask.shape))
    return _cell_box_overlaps((int(rows[peak[0]]), int(cols[peak[1]])), rows, cols, mask)


def _bootstrap_mean(values: np.ndarray, n_boot: int, seed: int, groups: list[str] | None = None
                    ) -> list[float] | None:
    """The 95% percentile bootstrap interval of the mean of `values` (N,) (medimg_core.metrics.bootstrap_ci),
    resampling `groups` (N,) (patients) when given; None for fewer than two values (groups) or no resamples."""
    if len(values) < 2 or n_boot < 1 or (groups is not None and len(set(groups)) < 2):
        return None
    return list(bootstrap_ci(np.mean, values, n_boot=n_boot, seed=seed, groups=groups)[1:])


@torch.no_grad()
def localisation_metrics(model: CIPL, dataset: Dataset, device: str | torch.device = "cpu", batch_size: int = 64,
                         iou_threshold: float = 0.5, detect_threshold: float = 0.5, n_boot: int = 1000,
                         seed: int = 0, kind: str = "weighted", map_step: int | None = None,
                         progress: bool = False) -> dict[str, Any] | None:
    """Pointing game and IoU of the class maps against the dataset's masks (None when no mask matches a
    class of the model: masks are matched to outputs by concept name). The headline numbers use the map
    `kind`; the other MAP_KINDS are reported under "<kind>/..."."""
    card = getattr(dataset, "card", None)
    if card is None or not card.has_masks:
        return None
    names = list(model.labels.output_names)
    concept_of = {n: card.concept_names.index(n) for n in names if n in card.concept_names}
    if not concept_of:
        return None
    class_index = {n: model.labels.class_names.index(n) for n in concept_of}
    model = model.to(device).eval()
    grid = None
    # (finding, detected, hit, iou, distance in pixels from the map's maximum to the mask, cell hit)
    rows: dict[str, list[tuple[str, bool, bool, float, float, bool]]] = {k: [] for k in MAP_KINDS}
    for batch in tqdm(DataLoader(dataset, batch_size=batch_size, shuffle=False), desc="evaluate: localisation",
                      unit="batch", disable=not progress, leave=False):
        x = batch["image"].to(device)
        if grid is None:
            grid = feature_grid(model, tuple(x.shape[-2:]), x.shape[1])
        masks = batch["masks"].bool()
        mask_grid = scaled_grid(grid, tuple(x.shape[-2:]), tuple(masks.shape[-2:]))
        probs = model.predict_proba(x).float().cpu()
        target = torch.as_tensor(model.labels.output_targets(batch["target"].numpy()))
        maps_by_kind = class_maps_by_kind(model, x, tuple(masks.shape[-2:]), grid, map_step)
        for variant in MAP_KINDS:
            maps = maps_by_kind[variant].float().cpu()
            for i in range(len(x)):
                for name, k in concept_of.items():
                    out_idx = names.index(name)
                    present = bool(target[i, out_idx] > 0.5) if model.multilabel else int(target[i]) == out_idx
                    mask = masks[i, k]
                    if not present or not mask.any():
                        continue
                    detected = bool(probs[i, out_idx] > detect_threshold) if model.multilabel else \
                        int(probs[i].argmax()) == out_idx
                    m = maps[i, class_index[name]]
                    scored = score_mask(m.cpu().numpy(), mask.cpu().numpy(), iou_threshold)
                    hit, iou = scored["hit"], scored["iou"]
                    peak = int(torch.argmax(m))  # the first maximum, as score_mask's pointing game
                    ys, xs = torch.nonzero(mask, as_tuple=True)
                    py, px = divmod(peak, mask.shape[1])
                    miss = float(torch.sqrt(((ys - py) ** 2 + (xs - px) ** 2).float().min()))
                    rows[variant].append((name, detected, hit, iou, miss, cell_hit((py, px), mask, mask_grid)))
    if not rows[kind]:
        return {"n": 0, "all_present/n": 0}

    def summary(sel: list[tuple[str, bool, bool, float, float, bool]], prefix: str, per_finding: bool = True
                ) -> dict[str, Any]:
        out: dict[str, Any] = {f"{prefix}n": len(sel)}
        if not sel:
            return out
        hits = np.array([r[2] for r in sel], dtype=np.float64)
        ious = np.array([r[3] for r in sel], dtype=np.float64)
        out[f"{prefix}pointing_game"] = float(hits.mean())
        out[f"{prefix}pointing_game_ci"] = _bootstrap_mean(hits, n_boot, seed)
        cells = np.array([r[5] for r in sel], dtype=np.float64)
        out[f"{prefix}cell_pointing_game"] = float(cells.mean())
        out[f"{prefix}cell_pointing_game_ci"] = _bootstrap_mean(cells, n_boot, seed)
        out[f"{prefix}iou_mean"] = float(ious.mean())
        out[f"{prefix}iou_mean_ci"] = _bootstrap_mean(ious, n_boot, seed)
        if per_finding:
            for name in concept_of:
                part = [r for r in sel if r[0] == name]
                if part:
                    out[f"{prefix}pointing_game/{name}"] = float(np.mean([r[2] for r in part]))
                    out[f"{prefix}iou/{name}"] = float(np.mean([r[3] for r in part]))
                    out[f"{prefix}cell_pointing_game/{name}"] = float(np.mean([r[5] for r in part]))
                    out[f"{prefix}n/{name}"] = len(part)
                    misses = [r[4] for r in part if not r[2]]
                    if misses:
                        out[f"{prefix}miss_distance_px/{name}"] = float(np.median(misses))
        return out

    result = {**summary([r for r in rows[kind] if r[1]], ""), **summary(rows[kind], "all_present/")}
    for other in MAP_KINDS:
        if other != kind:
            result.update(summary([r for r in rows[other] if r[1]], f"{other}/"))
    result.update(map=kind, map_step=map_step, iou_threshold=iou_threshold, detect_threshold=detect_threshold,
                  grid_origin_px=list(grid.origin), grid_step_px=list(grid.step))
    return result


@torch.no_grad()
def box_localisation_metrics(model: CIPL, dataset: Dataset, device: str | torch.device = "cpu", batch_size: int = 64,
                             map_threshold: float = 0.5, n_boot: int = 1000, seed: int = 0, kind: str = "weighted",
                             map_step: int | None = None, progress: bool = False) -> dict[str, Any] | None:
    """The ChestX-ray8 box protocol (`medimg_core.localisation`) on the boxed images of `dataset`: for every
    ground-truth box of a finding the model has, the finding's class map (`kind`, upsampled to the input size on
    the feature grid) against the box rescaled from the released 1024-pixel frame to the model's input (the
    evaluation transform resizes the whole image: no crop). Every box counts, whether the finding was detected
    or not (the standard protocol; `detected` per finding is reported beside it).

    Returns None when the dataset has no boxes (`dataset.boxes`, e.g. ChestX-ray14 with BBox_List_2017), else
    {"n_boxes", "n_images", "n_patients", "pointing_game", "iobb_acc@T" (T in 0.1 ... 0.9), "iou_acc@T" (T in
    0.1 ... 0.7), "iobb_mean", "iou_mean", "detected_fraction" (of the boxes whose finding scored > 0.5), each
    with "_ci" (95% bootstrap over patients where the dataset has patient ids, else over images), per finding
    "<metric>/<finding>" and "n_boxes/<finding>", and what was used: "map", "map_threshold", "map_step",
    "box_frame_px", "input_px", "resampled", "skipped_findings"}."""
    from medimg_core.localisation import IOBB_THRESHOLDS, IOU_THRESHOLDS, box_accuracies, score_box

    if not callable(getattr(dataset, "boxes", None)):
        return None
    boxed = [i for i in range(len(dataset)) if dataset.boxes(i)]
    if not boxed:
        return None
    names = list(model.labels.class_names)
    model = model.to(device).eval()
    groups = getattr(dataset, "groups", None)
    rows: list[tuple[str, str, bool, float, float, bool]] = []  # (finding, group, hit, iobb, iou, detected)
    skipped: dict[str, int] = {}
    grid = None
    input_hw: tuple[int, int] | None = None
    loader = DataLoader(torch.utils.data.Subset(dataset, boxed), batch_size=batch_size, shuffle=False)
    position = 0
    for batch in tqdm(loader, desc="evaluate: boxes", unit="batch", disable=not progress, leave=False):
        x = batch["image"].to(device)
        input_hw = tuple(x.shape[-2:])
        if grid is None:
            grid = feature_grid(model, input_hw, x.shape[1])
        maps = class_maps(model, x, input_hw, kind, grid, map_step).float().cpu().numpy()
        probs = model.predict_proba(x).float().cpu().numpy()
        for i in range(len(x)):
            index = boxed[position]
            position += 1
            group = str(groups[index]) if groups is not None else str(dataset.ids[index])
            for finding, box in dataset.boxes(index, input_hw):
                if finding not in names or finding not in model.labels.output_names:
                    skipped[finding] = skipped.get(finding, 0) + 1
                    continue
                scored = score_box(maps[i, names.index(finding)], box, map_threshold)
                detected = bool(probs[i, list(model.labels.output_names).index(finding)] > 0.5)
                rows.append((finding, group, scored["hit"], scored["iobb"], scored["iou"], detected))
    out: dict[str, Any] = {"n_boxes": len(rows), "n_images": len(boxed),
                           "n_patients": len({r[1] for r in rows}) if groups is not None else None}
    if rows:
        def summarise(sel: list[tuple[str, str, bool, float, float, bool]], suffix: str, with_ci: bool) -> None:
            iobb = np.array([r[3] for r in sel])
            iou = np.array([r[4] for r in sel])
            values = {"pointing_game": np.array([r[2] for r in sel], dtype=np.float64), "iobb_mean": iobb,
                      "iou_mean": iou, **box_accuracies(iobb, iou, IOBB_THRESHOLDS, IOU_THRESHOLDS),
                      "detected_fraction": np.array([r[5] for r in sel], dtype=np.float64)}
            group_of = [r[1] for r in sel]
            for key, v in values.items():
                out[f"{key}{suffix}"] = float(v.mean())
                if with_ci:
                    out[f"{key}_ci"] = _bootstrap_mean(v, n_boot, seed, group_of)

        summarise(rows, "", True)
        for finding in dict.fromkeys(r[0] for r in rows):
            part = [r for r in rows if r[0] == finding]
            out[f"n_boxes/{finding}"] = len(part)
            summarise(part, f"/{finding}", False)
    out.update(map=kind, map_threshold=map_threshold, map_step=map_step, box_frame_px=1024,
               input_px=list(input_hw) if input_hw else None,
               resampled="patients" if groups is not None else "images", skipped_findings=skipped)
    return out


#: keys of a localisation result that describe it rather than measure one map kind
_LOCALISATION_META = ("map", "map_step", "iou_threshold", "detect_threshold", "grid_origin_px", "grid_step_px")


def localisation_as(result: dict[str, Any], kind: str) -> dict[str, Any]:
    """A `localisation_metrics` result re-keyed so that map `kind`'s numbers are the unprefixed headline ones
    and the former headline's sit under "<its kind>/" like the others (its "all_present/" numbers, measured
    for the headline kind only, are dropped). Lets runs made with different `localisation_map` be compared."""
    if kind not in MAP_KINDS:
        raise ValueError(f"map kind must be one of {MAP_KINDS}, got {kind!r}")
    current = result.get("map", "top")
    if current == kind:
        return dict(result)
    prefixes = (*[f"{k}/" for k in MAP_KINDS], "all_present/")
    out: dict[str, Any] = {f"{current}/{k}": v for k, v in result.items()
                           if not k.startswith(prefixes) and k not in _LOCALISATION_META}
    out.update({k: v for k, v in result.items() if k.startswith(prefixes) and not k.startswith(("all_present/",
                                                                                                f"{kind}/"))})
    out.update({k.removeprefix(f"{kind}/"): v for k, v in result.items() if k.startswith(f"{kind}/")})
    out.update({k: result[k] for k in _LOCALISATION_META if k in result}, map=kind)
    return out


def prototype_placement(push: dict[str, Any], dataset: Dataset) -> dict[str, Any] | None:
    """Where the push put each prototype relative to its class's finding, for data with per-finding masks.

    push: a push folder's records (`cipl.push.load_push` or `PushResult.to_dict()`); dataset: the push set
    (the training split), whose card names the masks. A prototype is *on its finding* when the feature cell it
    was projected onto (the source pixels whose nearest cell centre it is) overlaps the finding's mask in its
    source image. A class whose prototypes sit off its findings explains maps that peak beside them.
    Returns {"on_finding": fraction over the classes with masks, "on_finding/<class>": fraction, "n/<class>"},
    or None when no class has masks."""
    card = getattr(dataset, "card", None)
    if card is None or not card.has_masks:
        return None
    index_of = {str(i): n for n, i in enumerate(dataset.table.ids)}
    stats = push.get("stats", {})
    image_hw = tuple(push["image_size"])
    grid = FeatureGrid(tuple(stats["grid_origin_px"]), tuple(stats["grid_step_px"]), tuple(push["grid"])) \
        if "grid_origin_px" in stats else naive_grid(tuple(push["grid"]), image_hw)
    hits: dict[str, list[bool]] = {}
    for record in push["prototypes"]:
        name = record["class_name"]
        if name not in card.concept_names:
            continue
        if record["source_id"] not in index_of:
            raise ValueError(f"prototype {record['index']}: source image {record['source_id']!r} is not in the "
                             f"{getattr(dataset, 'split', '')} split given; pass the push set")
        n = index_of[record["source_id"]]
        masks = dataset.load_masks(n, tuple(dataset.load_image(n).shape[:2]))
        mask = torch.from_numpy(np.asarray(masks[card.concept_names.index(name)]).astype(bool))
        mask_grid = scaled_grid(grid, image_hw, tuple(mask.shape))
        hits.setdefault(name, []).append(cell_overlaps(tuple(record["cell"]), mask, mask_grid))
    if not hits:
        return None
    out: dict[str, Any] = {"on_finding": float(np.mean([v for h in hits.values() for v in h]))}
    for name, h in hits.items():
        out[f"on_finding/{name}"] = float(np.mean(h))
        out[f"n/{name}"] = len(h)
    return out

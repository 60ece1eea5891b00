"""Prototype push: project every prototype onto a real feature cell of a training image of its class,
with no training image hosting more than one prototype (over all classes).

    result = push_prototypes(model, loader, out_dir="run/prototypes/epoch-36")

Two passes over `loader` (which must be deterministic: eval transforms; its order may be shuffled, images
are matched by id):

1. For every prototype j of class c, the k nearest (image, cell) candidates among the images labelled c
   (streaming top-k, so memory is O(P k), never O(P x images)).
2. A greedy global assignment: all candidates sorted by distance; a candidate is taken when its prototype
   is still free and its image hosts no prototype yet. With k >= P every prototype finds a free image
   whenever its class has at least P images; otherwise its candidates are all of its class's images and a
   prototype left over means the class has too few images (a clear error).
3. Second pass: the chosen images' feature cells are copied into the prototypes, and each prototype's
   source image, self-activation overlay, contour and patch are written to `out_dir`.

What a push decided travels as a `PushIndex` (which training image and feature cell each prototype is): in the
push folder (prototypes.json) and in every checkpoint folder whose prototypes are that push's (push_index.json),
so a checkpoint alone names each prototype's source. `PrototypePictures` gives each prototype's pictures, from
the push folder when it is at hand, else drawn again from the training image the index names.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cipl.maps import FeatureGrid, feature_grid, naive_grid, upsample_numpy
from cipl.model import CIPL
from medimg_core.checkpoint import CheckpointError, read_tensors, write_json
from medimg_core.runs import RunFolderError, read_json_object

#: the push index in a checkpoint folder (see PushIndex)
PUSH_INDEX_FILE = "push_index.json"
#: normalised self-activation at or above which the source region is outlined (as published)
CONTOUR_LEVEL = 0.65
#: percentile of the self-activation that delimits the high-activation patch
PATCH_PERCENTILE = 95.0


class PushIndexError(CheckpointError, ValueError):
    """prototypes.json of a push folder is malformed; the message names the file and the entry. A CheckpointError
    (the commands print it without a traceback) and, as before, a ValueError."""


@dataclass
class PrototypeRecord:
    """Where prototype `index` (of class `class_name`) was projected."""

    index: int
    class_index: int
    class_name: str
    source_id: str
    source_path: str
    cell: tuple[int, int]
    distance: float  # squared distance of the prototype to this cell before the projection
    cell_box: tuple[int, int, int, int]  # (x0, y0, x1, y1) of the feature cell in input pixels
    patch_box: tuple[int, int, int, int]  # (x0, y0, x1, y1) of the high-activation region in input pixels


@dataclass
class PushResult:
    records: list[PrototypeRecord]
    grid: tuple[int, int]
    image_size: tuple[int, int]
    directory: Path | None = None
    stats: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"grid": list(self.grid), "image_size": list(self.image_size), "stats": self.stats,
                "prototypes": [asdict(r) for r in self.records]}


def _batch_labels(model: CIPL, batch: dict) -> torch.Tensor:
    if "labels" in batch:
        return batch["labels"].float()
    return model.labels.class_labels(batch["target"].cpu())


def _unwrap(model: torch.nn.Module) -> CIPL:
    model = getattr(model, "module", model)
    return getattr(model, "student", model)


@torch.no_grad()
def push_prototypes(model: torch.nn.Module, loader: Iterable[dict], out_dir: str | Path | None = None,
                    device: str | torch.device | None = None, top_k: int | None = None,
                    display: Callable[[torch.Tensor], np.ndarray] | None = None, progress: bool = False,
                    tolerance: float = 1e-3) -> PushResult:
    """Project the prototypes of `model` (a CIPL, in place) onto the images of `loader` (see the module doc).

    loader: yields dicts with "image" (B, C, H, W), "target" (dataset targets) and "id" (unique per image).
    out_dir: where to write the artefacts (None: nothing written). display: (C, H, W) model input ->
    (H, W, 3) float image in [0, 1] for the artefacts (default: per-image min-max).
    """
    from tqdm.auto import tqdm

    net = _unwrap(model)
    device = torch.device(device) if device is not None else net.prototypes.device
    was_training = net.training
    net.eval()
    n_proto = net.num_prototypes
    k = top_k or n_proto
    proto_class = net.prototype_class.to(device)
    best_d = torch.full((n_proto, 0), math.inf, device=device)
    best_img = torch.zeros((n_proto, 0), dtype=torch.long, device=device)
    best_cell = torch.zeros((n_proto, 0), dtype=torch.long, device=device)
    ids: list[str] = []
    paths: list[str] = []
    class_counts = torch.zeros(net.num_classes, dtype=torch.long)
    grid = image_hw = None
    for batch in tqdm(loader, desc="push: nearest patches", unit="batch", disable=not progress):
        x = batch["image"].to(device)
        labels = _batch_labels(net, batch).to(device)  # (B, K)
        class_counts += labels.sum(0).long().cpu()
        d = net.distances(net.features(x))  # (B, P, h, w)
        grid, image_hw = tuple(d.shape[-2:]), tuple(x.shape[-2:])
        d_min, cell = d.flatten(2).min(dim=2)  # (B, P)
        has_class = labels[:, proto_class].bool()  # (B, P)
        d_min = d_min.masked_fill(~has_class, math.inf)
        offset = len(ids)
        ids += [str(i) for i in batch["id"]]
        paths += [str(p) for p in batch.get("path", [""] * len(x))]
        image_idx = torch.arange(offset, offset + len(x), device=device).expand(n_proto, -1)
        cat_d = torch.cat([best_d, d_min.T], dim=1)
        cat_img = torch.cat([best_img, image_idx], dim=1)
        cat_cell = torch.cat([best_cell, cell.T], dim=1)
        keep = min(k, cat_d.shape[1])
        best_d, order = torch.topk(cat_d, keep, dim=1, largest=False, sorted=True)
        best_img, best_cell = cat_img.gather(1, order), cat_cell.gather(1, order)
    if grid is None:
        raise ValueError("push_prototypes: the loader gave no images")
    if len(set(ids)) != len(ids):
        raise ValueError("push_prototypes: image ids repeat in the loader; every image needs a unique id")

    assignment = _greedy_assignment(best_d.cpu(), best_img.cpu(), n_proto)
    missing = [j for j in range(n_proto) if assignment[j] is None]
    if missing:
        by_class: dict[str, int] = {}
        for j in missing:
            name = net.labels.class_names[int(proto_class[j])]
            by_class[name] = by_class.get(name, 0) + 1
        counts = {net.labels.class_names[c]: int(class_counts[c]) for c in range(net.num_classes)}
        raise ValueError(
            f"push_prototypes: {len(missing)} prototype(s) found no free image of their class {by_class}; each "
            f"training image hosts at most one prototype and the push set has images per class {counts} for "
            f"{net.prototypes_per_class} prototypes per class. Use fewer prototypes per class or more images."
        )
    chosen = {}  # image ordinal -> [(prototype, rank in its candidate list)]
    for j, rank in enumerate(assignment):
        chosen.setdefault(int(best_img[j, rank]), []).append((j, rank))
    wanted = {ids[i]: i for i in chosen}

    out_path = Path(out_dir) if out_dir is not None else None
    if out_path is not None:
        out_path.mkdir(parents=True, exist_ok=True)
    new_protos = net.prototypes.detach().clone()
    maps = torch.zeros(n_proto, *grid)
    records: list[PrototypeRecord | None] = [None] * n_proto
    found = 0
    map_grid = feature_grid(net, image_hw, int(x.shape[1]))  # where each cell's map value is drawn
    for batch in tqdm(loader, desc="push: projection", unit="batch", disable=not progress):
        rows = [r for r, i in enumerate(batch["id"]) if str(i) in wanted]
        if not rows:
            continue
        x = batch["image"][rows].to(device)
        z = net.features(x)  # (b, D, h, w)
        for r_local, r in enumerate(rows):
            ordinal = wanted[str(batch["id"][r])]
            for j, rank in chosen[ordinal]:
                cell = int(best_cell[j, rank])
                h, w = divmod(cell, grid[1])
                vec = z[r_local, :, h, w]
                recomputed = float(((vec - net.prototypes[j]) ** 2).sum())
                expected = float(best_d[j, rank])
                if abs(recomputed - expected) > tolerance * max(1.0, abs(expected)):
                    raise ValueError(
                        f"push_prototypes: image {ids[ordinal]!r} gave different features in the two passes "
                        f"(distance {recomputed:.5g} vs {expected:.5g}); the push loader must be deterministic "
                        "(eval transforms, no random augmentation)")
                new_protos[j] = vec
                self_d = ((z[r_local] - vec.view(-1, 1, 1)) ** 2).sum(0)
                maps[j] = net.similarity(self_d).cpu()
                c = int(proto_class[j])
                cell_box = _cell_box((h, w), grid, image_hw)
                up = upsample_numpy(maps[j], image_hw, map_grid)
                patch_box = high_activation_box(up)
                records[j] = PrototypeRecord(j, c, net.labels.class_names[c], ids[ordinal], paths[ordinal], (h, w),
                                             expected, cell_box, patch_box)
                if out_path is not None:
                    image = display(batch["image"][r]) if display is not None else _minmax_display(batch["image"][r])
                    write_prototype_images(out_path, j, image, up)
                found += 1
    if found != n_proto:
        raise ValueError(f"push_prototypes: {n_proto - found} chosen image(s) were not seen again in the second pass; "
                         "the loader must give the same images every time it is iterated")
    net.prototypes.data.copy_(new_protos.to(net.prototypes.device))
    net.train(was_training)
    final = [r for r in records if r is not None]
    distances = np.array([r.distance for r in final])
    result = PushResult(final, grid, image_hw, out_path,
                        {"mean_distance_moved": float(distances.mean()), "max_distance_moved": float(distances.max()),
                         "images_seen": len(ids), "images_hosting": len(chosen),
                         "grid_origin_px": list(map_grid.origin), "grid_step_px": list(map_grid.step)})
    if out_path is not None:
        from safetensors.torch import save_file

        save_file({"prototypes": new_protos.cpu().contiguous(), "activation_maps": maps.contiguous()},
                  str(out_path / "prototypes.safetensors"))
        write_json(out_path / "prototypes.json", result.to_dict())
    return result


def _greedy_assignment(dist: torch.Tensor, img: torch.Tensor, n_proto: int) -> list[int | None]:
    """For each prototype the rank (column) of its assigned candidate, or None. dist, img (P, k)."""
    k = dist.shape[1]
    flat_d = dist.flatten()
    order = torch.argsort(flat_d, stable=True)  # ties: lower prototype index first, then nearer rank
    assignment: list[int | None] = [None] * n_proto
    used: set[int] = set()
    left = n_proto
    for pos in order.tolist():
        if not math.isfinite(float(flat_d[pos])):
            break
        j, rank = divmod(pos, k)
        if assignment[j] is not None:
            continue
        image = int(img[j, rank])
        if image in used:
            continue
        assignment[j] = rank
        used.add(image)
        left -= 1
        if left == 0:
            break
    return assignment


def _cell_box(cell: tuple[int, int], grid: tuple[int, int], image_hw: tuple[int, int]) -> tuple[int, int, int, int]:
    sy, sx = image_hw[0] / grid[0], image_hw[1] / grid[1]
    h, w = cell
    return int(round(w * sx)), int(round(h * sy)), int(round((w + 1) * sx)), int(round((h + 1) * sy))


def normalise(arr: np.ndarray) -> np.ndarray:
    lo, hi = float(arr.min()), float(arr.max())
    return (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)


def high_activation_box(upsampled: np.ndarray, percentile: float = PATCH_PERCENTILE) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) of the connected region above the `percentile` that holds the maximum."""
    from scipy.ndimage import label

    mask = upsampled >= np.percentile(upsampled, percentile)
    regions, _ = label(mask, structure=np.ones((3, 3)))
    peak = np.unravel_index(int(np.argmax(upsampled)), upsampled.shape)
    ys, xs = np.nonzero(regions == regions[peak])
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def _minmax_display(image: torch.Tensor) -> np.ndarray:
    arr = image.detach().float().cpu().numpy()
    arr = normalise(arr)
    arr = np.transpose(arr, (1, 2, 0))
    return np.repeat(arr, 3, axis=2) if arr.shape[2] == 1 else arr


def overlay(image: np.ndarray, upsampled: np.ndarray, alpha: float = 0.3) -> np.ndarray:
    """0.7 image + 0.3 jet colour map of the min-max normalised activation -> (H, W, 3) in [0, 1]."""
    import matplotlib

    heat = matplotlib.colormaps["jet"](normalise(upsampled))[..., :3]
    return np.clip((1 - alpha) * image + alpha * heat, 0, 1)


def contour_image(image: np.ndarray, upsampled: np.ndarray, level: float = CONTOUR_LEVEL) -> np.ndarray:
    """The image with a yellow outline of the region where the normalised activation is >= `level`."""
    from scipy.ndimage import binary_dilation, binary_erosion

    region = normalise(upsampled) >= level
    edge = region & ~binary_erosion(region, structure=np.ones((3, 3)), border_value=0)
    width = max(1, round(image.shape[0] / 170))
    if width > 1:
        edge = binary_dilation(edge, structure=np.ones((width, width)))
    out = image.copy()
    out[edge] = (1.0, 1.0, 0.0)
    return out


def _save_png(path: Path, image: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray((np.clip(image, 0, 1) * 255).round().astype(np.uint8)).save(path)


def prototype_file(directory: Path, index: int, kind: str) -> Path:
    """The artefact `kind` (original, overlay, contour, patch) of prototype `index` in a push folder."""
    return Path(directory) / f"{index:04d}_{kind}.png"


def write_prototype_images(directory: Path, index: int, image: np.ndarray, upsampled: np.ndarray) -> None:
    """Source image, activation overlay, contour and high-activation patch of one prototype, as PNG."""
    _save_png(prototype_file(directory, index, "original"), image)
    _save_png(prototype_file(directory, index, "overlay"), overlay(image, upsampled))
    _save_png(prototype_file(directory, index, "contour"), contour_image(image, upsampled))
    x0, y0, x1, y1 = high_activation_box(upsampled)
    _save_png(prototype_file(directory, index, "patch"), image[y0:y1, x0:x1])


def load_push(directory: str | Path) -> dict[str, Any]:
    """A push folder's records (prototypes.json) plus its prototype vectors and self-activation maps."""
    directory = Path(directory)
    info = read_json_object(directory / "prototypes.json", "the push folder's prototype records")
    PushIndex.from_dict(info, directory, str(directory / "prototypes.json"))  # checked: grid, image_size, records
    tensors = read_tensors(directory / "prototypes.safetensors", "the pushed prototype vectors")
    missing = sorted({"prototypes", "activation_maps"} - set(tensors))
    if missing:
        raise PushIndexError(f"{directory / 'prototypes.safetensors'}: no {missing}; expected prototypes and "
                             "activation_maps")
    return {**info, "vectors": tensors["prototypes"], "activation_maps": tensors["activation_maps"],
            "directory": directory}


def find_push_dir(run_dir: str | Path, model: CIPL, atol: float = 1e-5) -> Path | None:
    """The push folder under `run_dir`/prototypes whose prototype vectors equal `model`'s (None if none)."""
    from safetensors.torch import load_file

    root = Path(run_dir) / "prototypes"
    if not root.is_dir():
        return None
    protos = model.prototypes.detach().cpu()
    for folder in sorted(root.iterdir(), reverse=True):
        file = folder / "prototypes.safetensors"
        if file.is_file():
            vectors = load_file(str(file))["prototypes"]
            if vectors.shape == protos.shape and torch.allclose(vectors, protos, atol=atol):
                return folder
    return None


# ---------------------------------------------------------------------------------------------- the push index
@dataclass
class PushIndex:
    """Where one push put every prototype: per prototype (`prototypes`, the `PrototypeRecord`s as dicts) its class,
    source image (id and file), feature cell, boxes and distance moved; the feature grid (`grid`, h x w) and input
    size (`image_size`) the push saw; its statistics (`stats`, with the measured grid origin and step); the push
    folder relative to the run (`directory`: "prototypes/epoch-036"; None when unknown) and the epoch it followed.

    `folder` is the push folder itself when it is at hand (its pictures are read from there); it is not saved.
    """

    grid: tuple[int, int]
    image_size: tuple[int, int]
    stats: dict[str, Any]
    prototypes: list[dict[str, Any]]
    directory: str | None = None
    epoch: int | None = None
    folder: Path | None = field(default=None, compare=False)

    @classmethod
    def of_result(cls, result: PushResult, directory: str | None = None, epoch: int | None = None) -> PushIndex:
        """The index of a push just made (`push_prototypes`'s result)."""
        data = result.to_dict()
        return cls(tuple(data["grid"]), tuple(data["image_size"]), data["stats"], data["prototypes"], directory,
                   epoch, result.directory)

    @classmethod
    def from_dict(cls, data: Any, folder: Path | None = None, where: str = "push index") -> PushIndex:
        """From `to_dict()` output or a push folder's prototypes.json; a missing or ill-typed entry is a PushIndexError
        naming `where` and the entry."""
        if not isinstance(data, dict):
            raise PushIndexError(f"{where}: expected a JSON object, found {type(data).__name__}")
        missing = [k for k in ("grid", "image_size", "prototypes") if k not in data]
        if missing:
            raise PushIndexError(f"{where}: missing {missing} (expected grid, image_size and prototypes)")
        records = data["prototypes"]
        if not isinstance(records, list) or not all(isinstance(r, dict) and "index" in r and "source_id" in r
                                                    for r in records):
            raise PushIndexError(f"{where}: prototypes must be a list of records with index and source_id")
        try:
            grid = tuple(int(v) for v in data["grid"])
            image_size = tuple(int(v) for v in data["image_size"])
        except (TypeError, ValueError):
            raise PushIndexError(f"{where}: grid and image_size must be pairs of integers, got {data['grid']!r} and "
                             f"{data['image_size']!r}") from None
        epoch = data.get("epoch")
        return cls(grid, image_size, dict(data.get("stats") or {}), records, data.get("directory"),
                   None if epoch is None else int(epoch), folder)

    @classmethod
    def from_folder(cls, directory: str | Path) -> PushIndex:
        """The index of a push folder (its prototypes.json), with the folder for the pictures."""
        directory = Path(directory)
        path = directory / "prototypes.json"
        return cls.from_dict(read_json_object(path, "the push folder's prototype records"), directory, str(path))

    @classmethod
    def read(cls, checkpoint: str | Path, run_dir: str | Path | None = None) -> PushIndex | None:
        """The push index stored in a checkpoint folder (None when it has none: a checkpoint written before push
        indexes were stored, or one whose prototypes had moved since the last push). With the run folder, the push
        folder it names is attached when it still exists."""
        path = Path(checkpoint) / PUSH_INDEX_FILE
        if not path.is_file():
            return None
        try:
            index = cls.from_dict(read_json_object(path, "the checkpoint's push index"), where=str(path))
        except ValueError as exc:
            raise RunFolderError(str(exc)) from None
        if run_dir is not None and index.directory:
            folder = Path(run_dir) / index.directory
            if (folder / "prototypes.json").is_file():
                index.folder = folder
        return index

    def to_dict(self) -> dict[str, Any]:
        """What push_index.json holds (also the `push` argument of `cipl.evaluate.prototype_placement`)."""
        return {"grid": list(self.grid), "image_size": list(self.image_size), "stats": self.stats,
                "prototypes": self.prototypes, "directory": self.directory, "epoch": self.epoch}

    def write(self, path: str | Path) -> Path:
        """Write `to_dict()` as JSON at `path`, atomically."""
        write_json(Path(path), self.to_dict())
        return Path(path)

    def record(self, index: int) -> dict[str, Any]:
        """The record of prototype `index` (empty when the push did not record it)."""
        return self._by_index.get(index, {})

    @property
    def _by_index(self) -> dict[int, dict[str, Any]]:
        return {int(r["index"]): r for r in self.prototypes}

    def source_id(self, index: int) -> str:
        """The id of the training image prototype `index` was pushed onto ("" when unknown)."""
        return str(self.record(index).get("source_id", ""))

    @property
    def map_grid(self) -> FeatureGrid:
        """Where the push drew each cell's activation (the measured grid, else the align_corners=False one)."""
        if "grid_origin_px" in self.stats:
            return FeatureGrid(tuple(self.stats["grid_origin_px"]), tuple(self.stats["grid_step_px"]), self.grid)
        return naive_grid(self.grid, self.image_size)


class PicturesUnavailable(RuntimeError):
    """A prototype's pictures can be neither read from its push folder nor drawn from its training image."""


class PrototypePictures:
    """Each pushed prototype's pictures: its source image with the contour of its self-activation ("contour") and
    the high-activation patch ("patch"), as (H, W, 3) / (h, w, 3) float arrays in [0, 1].

    Read from the push folder when it is at hand (`index.folder`); otherwise drawn again as the push drew them,
    from the training image the index names: `images(source_id)` gives its model input (C, H, W) (the push set's
    evaluation transform), `model` the checkpoint's CIPL (its prototype is that image's feature cell) and `display`
    the picture of a model input. Without those, or when the image cannot be read, a PicturesUnavailable says why.
    """

    def __init__(self, index: PushIndex, model: CIPL | None = None,
                 images: Callable[[str], torch.Tensor] | None = None,
                 display: Callable[[torch.Tensor], np.ndarray] | None = None):
        self.index = index
        self.model, self.images, self.display = model, images, display
        self._drawn: dict[int, dict[str, np.ndarray]] = {}

    @classmethod
    def of(cls, push: str | Path | PushIndex | PrototypePictures) -> PrototypePictures:
        """Pictures of a push folder, of a push index, or the pictures given."""
        if isinstance(push, PrototypePictures):
            return push
        return cls(push if isinstance(push, PushIndex) else PushIndex.from_folder(push))

    def get(self, index: int, kind: str) -> np.ndarray:
        """Picture `kind` ("contour" or "patch") of prototype `index`."""
        if kind not in ("contour", "patch"):
            raise ValueError(f"picture kind must be contour or patch, got {kind!r}")
        folder = self.index.folder
        if folder is not None:
            image = read_png(prototype_file(folder, index, kind))
            if image is not None:
                return image
        if index not in self._drawn:
            self._drawn[index] = self._draw(index)
        return self._drawn[index][kind]

    def maybe(self, index: int, kind: str) -> np.ndarray | None:
        """`get`, or None when the picture cannot be had (a figure then leaves its panel empty)."""
        try:
            return self.get(index, kind)
        except PicturesUnavailable:
            return None

    @torch.no_grad()
    def _draw(self, index: int) -> dict[str, np.ndarray]:
        record = self.index.record(index)
        where = f"the push folder {self.index.folder}" if self.index.folder else "no push folder"
        if not record:
            raise PicturesUnavailable(f"prototype {index} has no record in the push index")
        if self.model is None or self.images is None:
            raise PicturesUnavailable(f"prototype {index}: {where} holds its pictures, and no model and training "
                                      "images were given to draw them")
        try:
            x = self.images(str(record["source_id"]))
        except PicturesUnavailable:
            raise
        except Exception as exc:  # an unreadable image file, say
            raise PicturesUnavailable(f"prototype {index}: its training image {record['source_id']!r} cannot be "
                                      f"read ({exc})") from None
        net = self.model
        was_training = net.training
        net.eval()
        z = net.features(x[None].to(net.prototypes.device))[0]  # (D, h, w)
        net.train(was_training)
        self_d = ((z - net.prototypes[index].view(-1, 1, 1)) ** 2).sum(0)
        up = upsample_numpy(net.similarity(self_d).cpu(), tuple(self.index.image_size), self.index.map_grid)
        image = self.display(x) if self.display is not None else _minmax_display(x)
        x0, y0, x1, y1 = (int(v) for v in record["patch_box"])
        return {"contour": contour_image(image, up), "patch": image[y0:y1, x0:x1]}


def images_by_id(dataset: Any) -> Callable[[str], torch.Tensor]:
    """source id -> the model input (C, H, W) of that sample of `dataset` (a medimg dataset whose transform is the
    push set's evaluation transform)."""
    position = {str(i): n for n, i in enumerate(dataset.table.ids)}

    def image(source_id: str) -> torch.Tensor:
        if source_id not in position:
            raise PicturesUnavailable(f"training image {source_id!r} is not in the {getattr(dataset, 'split', '')} "
                                      "split; it hosts a prototype of this checkpoint")
        return dataset[position[source_id]]["image"]

    return image


def read_png(path: Path) -> np.ndarray | None:
    """An RGB PNG as (H, W, 3) float in [0, 1]; None when the file does not exist."""
    from PIL import Image

    if not path.is_file():
        return None
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255.0

"""Prototype concepts: visual elements of training images, their embeddings, and concept libraries.

Visual elements (as in the paper's extractors, after ACE):

* patches: a k x k grid of equal tiles per image, each resized back to the image size;
* segments: SLIC superpixels (scikit-image) at several segment counts (default 10, 20, 30; compactness
  10, sigma 1). Per count, labels are walked in order and a mask is kept when it covers more than
  `min_area` of the image and its Jaccard overlap with every mask kept at an earlier count is at most
  `max_overlap`, up to `segments_per_setting` masks. Pixels outside the mask are filled with the grey
  value `fill_value` (117), the result is cropped to the mask's bounding box and resized (bicubic)
  back to the image size.

Elements come from a seeded sample of `images_per_class` training images of every class and are
embedded with the backbone's pooled penultimate feature (what the linear probe sees), through the
backbone's eval transform and medimg-core's feature cache.

Libraries (M concepts, default 200): Prototype (a seeded sample of M unit-normalised elements),
Cluster (K-Means centroids of the unit elements, re-normalised), End2End (a learned hard assignment of
elements to M concepts: `iis.model.End2EndHead`), and Text (`iis.text`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch.nn import functional as F
from torch.utils.data import Dataset

from iis.config import ElementConfig, LibraryConfig, LibraryKind
from iis.model import ConceptHead, End2EndHead
from medimg_core.checkpoint import write_json

__all__ = [
    "ConceptLibrary",
    "Element",
    "ElementConfig",
    "ElementDataset",
    "LibraryConfig",
    "build_visual_library",
    "cluster_library",
    "concept_elements",
    "end2end_library",
    "end2end_members",
    "extract_elements",
    "patch_boxes",
    "prototype_library",
    "render_element",
    "sample_source_images",
    "segment_masks",
]


@dataclass(frozen=True)
class Element:
    """One visual element: a tile or a superpixel of a source image.

    box: (top, left, bottom, right), bottom/right exclusive. setting: the grid size for patches, the
    SLIC segment count for segments; label: the tile index or the SLIC label.
    """

    id: str
    source: int
    source_id: str
    kind: Literal["patch", "segment"]
    box: tuple[int, int, int, int]
    setting: int
    label: int
    area: float

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "box": list(self.box)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Element:
        return cls(**{**d, "box": tuple(int(v) for v in d["box"])})


# -- elements ---------------------------------------------------------------------------------------
def sample_source_images(targets: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    """Sorted indices of up to `per_class` images of every class, drawn with a seeded generator.

    targets: (N,) class indices, or (N, L) multi-hot (an image counts for its first positive label,
    images without any positive label form one more group).
    """
    targets = np.asarray(targets)
    groups = targets if targets.ndim == 1 else np.where(targets.any(axis=1), targets.argmax(axis=1), -1)
    rng = np.random.default_rng(seed)
    chosen = []
    for g in np.unique(groups):
        members = np.flatnonzero(groups == g)
        chosen.append(rng.choice(members, size=min(per_class, len(members)), replace=False))
    return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, dtype=np.int64)


def patch_boxes(height: int, width: int, grid: int) -> list[tuple[int, int, int, int]]:
    """The grid x grid tiles (top, left, bottom, right), row by row; edges split as evenly as possible."""
    ys = np.linspace(0, height, grid + 1).round().astype(int)
    xs = np.linspace(0, width, grid + 1).round().astype(int)
    return [(int(ys[i]), int(xs[j]), int(ys[i + 1]), int(xs[j + 1])) for i in range(grid) for j in range(grid)]


def slic_labels(image: np.ndarray, n_segments: int, compactness: float, sigma: float) -> np.ndarray:
    """SLIC superpixel labels (H, W) of a uint8 image (H, W) or (H, W, 3), numbered from 0."""
    from skimage.segmentation import slic

    channel_axis = -1 if image.ndim == 3 else None
    labels = slic(image, n_segments=n_segments, compactness=compactness, sigma=sigma, start_label=0,
                  channel_axis=channel_axis)
    return labels.astype(np.int32)


def _bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1


def segment_masks(image: np.ndarray, cfg: ElementConfig
                  ) -> tuple[list[tuple[int, int, np.ndarray]], dict[int, np.ndarray]]:
    """The kept superpixels of one image, in extraction order, and the SLIC label map of every count.

    Returns ([(n_segments, label, mask (H, W) bool), ...], {n_segments: labels (H, W)}).
    """
    kept: list[tuple[int, int, np.ndarray]] = []
    maps: dict[int, np.ndarray] = {}
    total = image.shape[0] * image.shape[1]
    for n in cfg.slic_segments:
        labels = maps[int(n)] = slic_labels(image, n, cfg.slic_compactness, cfg.slic_sigma)
        earlier = [m for _, _, m in kept]
        count = 0
        for label in np.unique(labels):
            if count >= cfg.segments_per_setting:
                break
            mask = labels == label
            if mask.sum() <= cfg.min_area * total:
                continue
            if any(np.logical_and(mask, m).sum() / np.logical_or(mask, m).sum() > cfg.max_overlap for m in earlier):
                continue
            kept.append((int(n), int(label), mask))
            count += 1
    return kept, maps


def _resize(arr: np.ndarray, height: int, width: int) -> np.ndarray:
    from PIL import Image

    return np.array(Image.fromarray(arr).resize((width, height), Image.BICUBIC))


def render_element(image: np.ndarray, element: Element, fill_value: int = 117,
                   mask: np.ndarray | None = None, size: tuple[int, int] | None = None) -> np.ndarray:
    """The element's picture, uint8 like `image` ((H, W) or (H, W, 3)), resized to `size` (default the image's).

    Segments need their `mask` (H, W): pixels outside it become `fill_value` before the crop.
    """
    height, width = size or image.shape[:2]
    top, left, bottom, right = element.box
    if element.kind == "segment":
        if mask is None:
            raise ValueError(f"element {element.id}: a segment needs its mask to be drawn")
        image = image.copy()
        image[~mask] = fill_value
    return _resize(np.ascontiguousarray(image[top:bottom, left:right]), height, width)


class ElementDataset(Dataset):
    """Visual elements as samples {"image", "target" (the source image's), "concepts" (0,), "id", "path"}.

    Elements are drawn lazily from the source images; `transform` is the backbone's eval transform.
    """

    def __init__(self, source: Any, elements: Sequence[Element], cfg: ElementConfig, transform: Any = None,
                 label_maps: dict[tuple[int, int], np.ndarray] | None = None):
        self.source = source
        self.elements = list(elements)
        self.cfg = cfg
        self.transform = transform
        self.card = source.card
        self.split = f"elements-{cfg.digest()}"
        self._label_maps = dict(label_maps or {})

    def __len__(self) -> int:
        return len(self.elements)

    @property
    def ids(self) -> list[str]:
        return [e.id for e in self.elements]

    @property
    def targets(self) -> np.ndarray:
        return np.asarray(self.source.targets)[[e.source for e in self.elements]]

    def mask(self, element: Element, image: np.ndarray | None = None) -> np.ndarray | None:
        """The segment's mask (H, W) bool (SLIC is recomputed for its source image when not cached)."""
        if element.kind != "segment":
            return None
        key = (element.source, element.setting)
        if key not in self._label_maps:
            image = self.source.load_image(element.source) if image is None else image
            self._label_maps[key] = slic_labels(image, element.setting, self.cfg.slic_compactness,
                                                self.cfg.slic_sigma)
        return self._label_maps[key] == element.label

    def picture(self, index: int, size: tuple[int, int] | None = None) -> np.ndarray:
        """Element `index` as a uint8 image (H, W[, 3])."""
        element = self.elements[index]
        image = self.source.load_image(element.source)
        return render_element(image, element, self.cfg.fill_value, self.mask(element, image), size)

    def __getitem__(self, index: int) -> dict[str, Any]:
        from torchvision import tv_tensors

        arr = self.picture(index)
        tensor = torch.from_numpy(np.ascontiguousarray(arr))
        tensor = tensor.unsqueeze(0) if tensor.ndim == 2 else tensor.permute(2, 0, 1)
        image = tv_tensors.Image(tensor)
        if self.transform is not None:
            image = self.transform(image)
        if image.dtype == torch.uint8:
            image = image.float() / 255.0
        element = self.elements[index]
        return {"image": image.as_subclass(torch.Tensor), "target": torch.as_tensor(self.targets[index]),
                "concepts": torch.zeros(0), "id": element.id, "path": ""}


def extract_elements(dataset: Any, cfg: ElementConfig, seed: int = 0, transform: Any = None,
                     progress: bool = True) -> ElementDataset:
    """Cut patches and SLIC segments from a seeded per-class sample of `dataset` (the training split)."""
    from tqdm.auto import tqdm

    sources = sample_source_images(np.asarray(dataset.targets), cfg.images_per_class, seed)
    elements: list[Element] = []
    label_maps: dict[tuple[int, int], np.ndarray] = {}
    for src in tqdm(sources, desc="visual elements", unit="img", disable=None if progress else True):
        src = int(src)
        image = dataset.load_image(src)
        height, width = image.shape[:2]
        sid = str(dataset.ids[src])
        if cfg.patch_grid:
            for t, box in enumerate(patch_boxes(height, width, cfg.patch_grid)):
                area = (box[2] - box[0]) * (box[3] - box[1]) / (height * width)
                elements.append(Element(f"{sid}/patch{cfg.patch_grid}-{t}", src, sid, "patch", box,
                                        cfg.patch_grid, t, float(area)))
        if cfg.slic_segments:
            kept, maps = segment_masks(image, cfg)
            for n, label, mask in kept:
                elements.append(Element(f"{sid}/slic{n}-{label}", src, sid, "segment", _bbox(mask), n, label,
                                        float(mask.mean())))
            label_maps.update({(src, n): labels for n, labels in maps.items()})  # not segmented twice
    if not elements:
        raise ValueError(f"{dataset.card.name}: no visual element could be extracted")
    return ElementDataset(dataset, elements, cfg, transform, label_maps)


# -- libraries --------------------------------------------------------------------------------------
@dataclass
class ConceptLibrary:
    """M concepts in a representation space of dimension D.

    vectors: prototype / cluster: the unit concept vectors (M, D); text: the projection rows W_c (M, D);
    end2end: the unit element embeddings (N, D) that each head assigns to its own M concepts.
    names: one per concept (the element id, "cluster k", or the phrase). members: per concept, indices
    of the elements shown as its pictures (nearest first; empty for text). mean / std (M,): text only.
    """

    kind: LibraryKind
    vectors: torch.Tensor
    num_concepts: int
    names: list[str]
    members: list[list[int]] = field(default_factory=list)
    mean: torch.Tensor | None = None
    std: torch.Tensor | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def make_head(self, num_outputs: int, ratio: float, tau: float = 0.1) -> ConceptHead:
        """A fresh interpretation head for sparsity `ratio` (`iis.model`)."""
        if self.kind == "end2end":
            return End2EndHead(self.vectors, self.num_concepts, num_outputs, ratio, tau=tau)
        if self.kind == "text":
            return ConceptHead(self.vectors, num_outputs, ratio, standardize=(self.mean, self.std))
        return ConceptHead(self.vectors, num_outputs, ratio)

    def subset(self, keep: Sequence[int]) -> ConceptLibrary:
        """The library of concepts `keep` (indices, in that order): the same vectors, names, pictures and (text)
        training statistics, as if only those had been built. End-to-end libraries share their vectors between
        concepts and cannot be cut."""
        if self.kind == "end2end":
            raise ValueError("an end2end library cannot be cut to a subset of its concepts")
        index = torch.as_tensor(list(keep), dtype=torch.long)
        if len(index) == 0 or int(index.min()) < 0 or int(index.max()) >= self.num_concepts:
            raise ValueError(f"concept indices {list(keep)[:10]} are empty or outside 0..{self.num_concepts - 1}")
        extra = dict(self.extra)
        if isinstance(extra.get("targets"), list) and len(extra["targets"]) == self.num_concepts:
            extra["targets"] = [extra["targets"][i] for i in keep]
        return ConceptLibrary(self.kind, self.vectors[index], len(index), [self.names[i] for i in keep],
                              [self.members[i] for i in keep] if self.members else [],
                              None if self.mean is None else self.mean[index],
                              None if self.std is None else self.std[index], extra)

    def files(self) -> dict[str, Any]:
        """The library as checkpoint extra files: library.safetensors (vectors, mean, std) and library.json."""
        tensors = {"vectors": self.vectors.detach().float().cpu().contiguous()}
        if self.mean is not None and self.std is not None:
            tensors.update(mean=self.mean.float().cpu().contiguous(), std=self.std.float().cpu().contiguous())
        return {"library.safetensors": tensors,
                "library.json": {"kind": self.kind, "num_concepts": self.num_concepts, "names": self.names,
                                 "members": self.members, "extra": self.extra}}

    def save(self, folder: str | Path) -> Path:
        """library.safetensors (tensors) + library.json (the rest), each written atomically."""
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        files = self.files()
        tmp = folder / f".library.safetensors.tmp-{os.getpid()}"
        save_file(files["library.safetensors"], str(tmp))
        os.replace(tmp, folder / "library.safetensors")
        write_json(folder / "library.json", files["library.json"])
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> ConceptLibrary:
        folder = Path(folder)
        for name in ("library.safetensors", "library.json"):
            if not (folder / name).is_file():
                raise FileNotFoundError(f"{folder / name}: not found; is {folder} a concept library folder?")
        from medimg_core.checkpoint import CheckpointError, read_tensors
        from medimg_core.runs import read_json_object

        tensors = read_tensors(folder / "library.safetensors", "the concept library's vectors")
        meta = read_json_object(folder / "library.json", "the concept library's settings")
        try:
            return cls(kind=meta["kind"], vectors=tensors["vectors"], num_concepts=int(meta["num_concepts"]),
                       names=list(meta["names"]), members=[list(m) for m in meta.get("members", [])],
                       mean=tensors.get("mean"), std=tensors.get("std"), extra=dict(meta.get("extra", {})))
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"{folder}: library.json and library.safetensors do not make a concept library "
                                  f"({type(exc).__name__}: {exc}); expected the files `iis` writes") from None


def _unit(features: torch.Tensor) -> torch.Tensor:
    return F.normalize(torch.as_tensor(features, dtype=torch.float32), dim=1)


def _check_count(n: int, m: int, kind: str) -> None:
    if n < m:
        raise ValueError(f"{kind} library: {n} visual elements for {m} concepts; extract more elements "
                         f"(--elements.images_per_class) or lower --library.num_concepts")


def prototype_library(features: torch.Tensor, element_ids: Sequence[str], num_concepts: int = 200,
                      seed: int = 0) -> ConceptLibrary:
    """Prototype: a seeded random sample of M elements (unit-normalised) as the concept vectors."""
    units = _unit(features)
    _check_count(units.shape[0], num_concepts, "prototype")
    pick = np.sort(np.random.default_rng(seed).choice(units.shape[0], size=num_concepts, replace=False))
    return ConceptLibrary("prototype", units[pick], num_concepts, [str(element_ids[i]) for i in pick],
                          [[int(i)] for i in pick], extra={"sampling": f"uniform without replacement, seed {seed}"})


def _nearest_members(units: torch.Tensor, centres: torch.Tensor, assign: np.ndarray, k: int) -> list[list[int]]:
    """Per concept, up to k of its assigned elements, most similar to its vector first."""
    sims = (units @ centres.T).numpy()
    out = []
    for c in range(centres.shape[0]):
        idx = np.flatnonzero(assign == c)
        out.append([int(i) for i in idx[np.argsort(-sims[idx, c], kind="stable")][:k]])
    return out


def cluster_library(features: torch.Tensor, num_concepts: int = 200, seed: int = 0, max_elements: int = 20000,
                    members_per_concept: int = 3) -> ConceptLibrary:
    """Cluster: K-Means (k = M, n_init "auto") on up to `max_elements` unit elements; unit centroids."""
    from sklearn.cluster import KMeans

    units = _unit(features)
    _check_count(units.shape[0], num_concepts, "cluster")
    rows = np.arange(units.shape[0])
    if len(rows) > max_elements:
        rows = np.sort(np.random.default_rng(seed).choice(rows, size=max_elements, replace=False))
    km = KMeans(n_clusters=num_concepts, random_state=seed, n_init="auto").fit(units[rows].numpy())
    centres = F.normalize(torch.as_tensor(km.cluster_centers_, dtype=torch.float32), dim=1)
    assign = np.full(units.shape[0], -1)
    assign[rows] = km.labels_
    members = _nearest_members(units, centres, assign, members_per_concept)
    sizes = np.bincount(km.labels_, minlength=num_concepts)
    return ConceptLibrary("cluster", centres, num_concepts, [f"cluster {c} ({sizes[c]} elements)"
                                                             for c in range(num_concepts)],
                          members, extra={"kmeans_elements": len(rows), "seed": seed})


def end2end_library(features: torch.Tensor, num_concepts: int = 200, seed: int = 0,
                    max_elements: int = 20000) -> ConceptLibrary:
    """End2End: the unit element embeddings (up to `max_elements`, seeded sample); each head learns the
    assignment of these elements to M concepts (`iis.model.End2EndHead`)."""
    units = _unit(features)
    _check_count(units.shape[0], num_concepts, "end2end")
    rows = np.arange(units.shape[0])
    if len(rows) > max_elements:
        rows = np.sort(np.random.default_rng(seed).choice(rows, size=max_elements, replace=False))
    return ConceptLibrary("end2end", units[rows], num_concepts, [f"learned concept {c}" for c in range(num_concepts)],
                          [], extra={"element_rows": [int(r) for r in rows]})


def build_visual_library(cfg: LibraryConfig, features: torch.Tensor, element_ids: Sequence[str],
                         seed: int = 0) -> ConceptLibrary:
    """The visual library `cfg.kind` over element embeddings (N, D)."""
    if cfg.kind == "prototype":
        return prototype_library(features, element_ids, cfg.num_concepts, seed)
    if cfg.kind == "cluster":
        return cluster_library(features, cfg.num_concepts, seed, cfg.max_cluster_elements, cfg.members_per_concept)
    if cfg.kind == "end2end":
        return end2end_library(features, cfg.num_concepts, seed, cfg.max_cluster_elements)
    raise ValueError(f"library kind {cfg.kind!r} is not visual; expected prototype, cluster or end2end")


def end2end_members(head: Any, k: int = 3) -> list[list[int]]:
    """Per learned concept of a trained End2EndHead, up to k assigned element rows, nearest first."""
    head = head.eval()
    with torch.no_grad():
        assign = head.assignment().argmax(dim=1).cpu().numpy()
        centres = head.concept_matrix().cpu()
    return _nearest_members(head.elements.cpu(), centres, assign, k)


def concept_elements(library: ConceptLibrary, head: Any = None) -> list[int | None]:
    """Per concept, the element (an index into the library's `ElementDataset`) that pictures it, or None.

    Prototype / Cluster: the concept's first member. End2End: the nearest element the trained `head` assigns
    to it (the assignment is learned per head, so `head` is needed). Text concepts have no picture.
    """
    if library.kind == "text":
        return [None] * library.num_concepts
    if library.kind == "end2end":
        if head is None:
            raise ValueError("end2end concepts are learned per head: pass the head to picture them")
        rows = library.extra.get("element_rows")
        members = end2end_members(head, 1)
        return [None if not m else int(m[0] if rows is None else rows[m[0]]) for m in members]
    return [int(m[0]) if m else None for m in library.members]
